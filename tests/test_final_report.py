"""The final comparison report, built from real smoke runs of this test session."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tasks.core.store import open_store
from tasks.q1.reference import REFERENCE
from tasks.registry import run_task


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


def test_every_run_and_reference_number_is_in_the_report(final):
    st, m, mlp, cnn = final
    html = st.get_text(m.outputs["report.html"])
    md = st.get_text(m.outputs["report.md"])
    for result in (mlp, cnn):
        for run in result["runs"]:
            assert f"{run['group']}={run['name']}" in md
        assert result["run_id"] in html
    ref = REFERENCE["q1-cnn"]["dropout"]
    for number in (f"{ref['dev/accuracy']:.4f}", f"{ref['test/accuracy']:.4f}"):
        assert number in md
    assert "| q1-mlp | best batch_size (by test/accuracy) |" in md
    assert "| 256 |" in md  # the report's best batch size beside ours
    assert "smoke profile runs: not comparable" in md


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
    assert not re.search(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', html)
    assert "<link" not in html and "@import" not in html
    assert html.count('src="data:image/png;base64,') >= 10


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_renders_every_image_and_one_row_per_run(final, tmp_path):
    st, m, mlp, cnn = final
    page = tmp_path / "report.html"
    html = st.get_text(m.outputs["report.html"])
    probe = ("<script>window.addEventListener('load', () => {const imgs = [...document.images];"
             "document.body.dataset.images = imgs.length;"
             "document.body.dataset.broken = imgs.filter(i => !i.naturalWidth).length;"
             "const t = document.querySelector('#summary-every-experiment-run table');"
             "document.body.dataset.rows = t.tBodies[0].rows.length;});</script>")
    page.write_text(html.replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run",
             f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=10000"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body))
    assert int(attrs["images"]) >= 10 and attrs["broken"] == "0"
    runs = len(mlp["runs"]) + len(cnn["runs"]) + 3  # + q2 not run, q3 failed, q4 failed
    assert int(attrs["rows"]) == runs
    pdf, png = tmp_path / "report.pdf", tmp_path / "report.png"
    subprocess.run(["chromium", *flags, f"--print-to-pdf={pdf}", "--no-pdf-header-footer",
                    page.as_uri()], capture_output=True, timeout=120)
    subprocess.run(["chromium", *flags, f"--screenshot={png}", "--window-size=1200,1600",
                    page.as_uri()], capture_output=True, timeout=120)
    assert pdf.read_bytes()[:5] == b"%PDF-" and png.stat().st_size > 10_000
