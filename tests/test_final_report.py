"""The final comparison report, built from real smoke runs: the Q1 runs of this test session
on S3 (moto), and (``slow``) a whole ``visionflows run all`` smoke run, opened in headless
Chromium: no horizontal overflow at 1280 px, every image loads, every link resolves, under
the size budget, prints to PDF."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from html import unescape
from pathlib import Path

import pytest

from tasks.core.store import open_store
from tasks.q1.reference import REFERENCE
from tasks.registry import run_task
from tasks.reporting.render import duration
from tests.browser_support import chromium, print_pdf, probe

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 5_000_000  # bytes: the smoke profile's final report, every image embedded
NEEDS_CHROMIUM = pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not "
                                    "installed (.ci/run installs it: apt-get install chromium)")


@pytest.fixture(scope="module")
def final(q1_mlp_run, q1_cnn_run):
    uri, mlp = q1_mlp_run
    _, cnn = q1_cnn_run
    st = open_store(uri)
    # q3: its latest run crashed before writing a flow manifest; q2: never ran here
    st.put_json("runs/q3-segmentation/latest.json", {"run_id": "20260101T000000Z-dead00"})
    m = run_task("report.final", {
        "out": "reports/final/test", "questions": ["q1-mlp", "q1-cnn", "q2-transfer",
                                                   "q3-segmentation", "q4-yolo"],
        "failures": {"q4-yolo": "RuntimeError: simulated crash in training"}}, uri)
    return st, m, mlp, cnn


def _summary(st, result) -> list[dict]:
    report_dir = result["report"]["report.html"].rsplit("/", 1)[0]
    return st.get_json(report_dir + "/manifest.json")["metrics"]["summary"]


def test_every_run_and_reference_number_is_in_the_report(final):
    st, m, mlp, cnn = final
    html = st.get_text(m.outputs["report.html"])
    md = st.get_text(m.outputs["report.md"])
    for result in (mlp, cnn):
        for run in result["runs"]:
            assert f"{run['group']}={run['name']}" in md
        assert result["run_id"] in html
    ref = REFERENCE["q1-cnn"]["dropout"]
    for number in (f"{100 * ref['dev/accuracy']:.2f} %", f"{100 * ref['test/accuracy']:.2f} %"):
        assert number in md
    assert "| q1-mlp | best batch_size (by test/accuracy) |" in md
    assert "| 256 |" in md  # the report's best batch size beside ours
    assert "smoke profile runs: not comparable" in md


def test_numbers_are_formatted_by_kind_and_compared_only_where_comparable(final):
    st, m, mlp, cnn = final
    md = st.get_text(m.outputs["report.md"])
    for q, result in (("q1-mlp", mlp), ("q1-cnn", cnn)):
        for row in _summary(st, result):
            best = " (best)" if row["best"] else ""
            assert (f"| {q} | {row['variant']} | ok | test/accuracy | "
                    f"{100 * row['value']:.2f} %{best} | {duration(row['time_s'])} | "
                    f"{result['run_id']} | — |") in md, row
    best = next(g for g in mlp["groups"] if g["key"] == "batch_size")["best"]
    assert (f"| q1-mlp | best batch_size (by test/accuracy) | {best} | 256 | "
            f"{'agrees' if best == 256 else 'differs'} |") in md
    # a smoke run's accuracy on generated data is not set against the reference's
    assert re.search(r"\| q1-cnn \| test/accuracy at our best dropout \| \d+\.\d\d % \| "
                     r"90\.93 % \| not comparable \(generated data\) \| "
                     r"not comparable \(generated data\) \|", md)
    tables = md.split("## Summary: every experiment run")[1].split("\n## Q1-MLP")[0]
    assert not re.search(r"\d\.\d{4}", tables)  # no raw 4-decimal floats left


def test_missing_and_failed_questions_are_shown(final):
    st, m, _, _ = final
    md = st.get_text(m.outputs["report.md"])
    assert "| q2-transfer | — | not run |" in md
    assert "| q3-segmentation | — | failed (no flow manifest) |" in md
    assert "failed: RuntimeError: simulated crash in training" in md
    assert m.metrics["questions"] == {"q1-mlp": "ok", "q1-cnn": "ok", "q2-transfer": "not run",
                                      "q3-segmentation": "failed (no flow manifest)",
                                      "q4-yolo": "failed"}


def test_html_is_self_contained(final):
    st, m, _, _ = final
    html = st.get_text(m.outputs["report.html"])
    assert not re.search(r'src\s*=\s*["\']?(?:https?:|file:)?//', html)  # nothing fetched
    assert "<link" not in html and "@import" not in html
    assert len(re.findall(r'src="data:image/(?:png|jpeg);base64,', html)) >= 6


def test_each_question_links_its_own_report(final):
    """A presigned link per question (SigV4, 7 days), which opens that report's bytes."""
    st, m, mlp, cnn = final
    html = st.get_text(m.outputs["report.html"])
    for q, result in (("q1-mlp", mlp), ("q1-cnn", cnn)):
        key = result["report"]["report.html"]
        links = re.findall(r'<a href="(http://127\.0\.0\.1:\d+/[^"]+)">HTML</a>', html)
        mine = [u for u in links if urllib.parse.unquote(urllib.parse.urlparse(
            u.replace("&amp;", "&")).path).endswith(key)]
        assert len(mine) == 1, (q, links)
        url = mine[0].replace("&amp;", "&")
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(url).query))
        assert query["X-Amz-Expires"] == str(7 * 86400)
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.read() == st.get_bytes(key)
    assert re.search(r"presigned, valid 7 days \(until \d{4}-\d\d-\d\d \d\d:\d\d UTC\)",
                     html)


@NEEDS_CHROMIUM
def test_browser_renders_every_image_and_one_row_per_run(final, tmp_path):
    st, m, mlp, cnn = final
    html = st.get_text(m.outputs["report.html"])
    page = probe(html, tmp_path)
    assert page["images"] >= 6 and page["broken"] == []
    assert page["scroll_width"] <= page["viewport"] == 1280 and page["wide"] == [], page
    assert page["missing_anchors"] == [] and page["toc"] >= 5
    rows = len(mlp["runs"]) + len(cnn["runs"]) + 3  # + q2 not run, q3 failed, q4 failed
    table = html.split('id="summary-every-experiment-run"')[1].split("</table>")[0]
    assert table.count("<tr>") - 1 == rows
    (tmp_path / "report.html").write_text(html)
    pdf = print_pdf(tmp_path / "report.html", tmp_path)
    assert pdf[:5] == b"%PDF-" and len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 2


# ---------------------------------------------------------------- a whole smoke run

@pytest.fixture(scope="module")
def smoke_all(tmp_path_factory):
    """``visionflows run all`` (smoke profile) in a fresh folder and store: the report a
    new user gets."""
    work = tmp_path_factory.mktemp("run-all")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
               PREFECT_HOME=str(work / "prefect"), VF_CACHE_DIR=str(work / "cache"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300", VF_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "all", "--store",
                          f"file://{work / 'store'}"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=3000)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    local = work / "reports" / "out" / "report.html"
    assert last == f"final report: {local.as_uri()}"
    return {"work": work, "store": open_store(f"file://{work / 'store'}"), "html": local,
            "stdout": res.stdout}


@pytest.mark.slow
def test_smoke_final_report_fits_the_budget(smoke_all):
    st = smoke_all["store"]
    (final,) = [k for k in st.list("reports/final") if k.endswith("report.html")]
    for path in (smoke_all["html"], st.local_path(final)):
        size = path.stat().st_size
        print(f"{path}: {size:,} bytes")
        assert size <= BUDGET, f"{path} is {size:,} bytes, over the {BUDGET:,} budget"
    html = smoke_all["html"].read_text()
    assert len(re.findall(r'src="data:image/jpeg;base64,', html)) >= 5  # photos as JPEG
    text = unescape(html)
    for q in ("q1-mlp", "q1-cnn", "q2-transfer", "q3-segmentation", "q4-yolo"):
        run_id = st.get_json(f"runs/{q}/latest.json")["run_id"]
        index = st.get_json(f"reports/{q}/{run_id}/report.json")
        assert index["why"] and index["why"] in text, q
        for fig in index["figures"]:  # captions say what a figure shows, not its file name
            assert fig["caption"] and not fig["caption"].endswith(".png"), fig
    q3 = html.split('id="q3-semantic-segmentation-with-deeplabv3"')[1].split("<section")[0]
    assert "Nothing is trained" in q3 and "optimizer" not in q3


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_smoke_final_report_in_a_browser(smoke_all, tmp_path):
    """At 1280 px: no horizontal overflow, every image loads, every in-page anchor and every
    link to a question report resolves; it prints to PDF."""
    html = smoke_all["html"].read_text()
    page = probe(html, tmp_path)
    print(f"height at 1280 px: {page['height']} px; images: {page['images']}")
    assert page["viewport"] == 1280 and page["scroll_width"] <= 1280, page
    assert page["wide"] == [] and page["scrolling_boxes"] == [], page
    assert page["images"] >= 30 and page["broken"] == []
    assert page["missing_anchors"] == [] and page["toc"] >= 7
    files = [h for h in page["hrefs"] if h.startswith("file://")]
    assert len(files) == 3 * 5  # each question's report: at a glance; HTML and Markdown
    for href in files:
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(href).path))
        assert path.is_file() and path.name in ("report.html", "report.md"), href
    assert not [h for h in page["hrefs"] if not h.startswith(("#", "file://"))]
    assert page["height"] < 21_000  # the dump it replaced was about 37,700 px
    pdf = print_pdf(smoke_all["html"], tmp_path)
    assert pdf[:5] == b"%PDF-" and len(re.findall(rb"/Type\s*/Page\b", pdf)) >= 5
