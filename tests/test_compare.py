"""Comparing runs (issue 20): `visionflows compare A B`, the comparison every flow makes with
its champion after promotion, the regression switch, the trend, and their statistics.

Real q1-mlp smoke runs on a moto S3 store (two cells, 600 generated images) and real Q3
runs on a file store; Q2 and Q4 comparers on manifests written the way their tasks write
them.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tasks.core.store import open_store

ROOT = Path(__file__).resolve().parents[1]
TWO_CELLS = {"data": {"n_train": 600, "n_test": 200}, "batch_sizes": [64],
             "activations": ["relu", "tanh"], "losses": ["cross_entropy"]}
ONE_CELL = {**TWO_CELLS, "activations": ["relu"]}


def manifest(st, prefix: str) -> dict:
    return st.get_json(prefix.rstrip("/") + "/manifest.json")


@pytest.fixture(scope="module")
def q1_runs(prefect_harness, s3_endpoint):
    """Three q1-mlp runs on one store: epochs 2, epochs 3, and epochs 2 again (retrained,
    not taken from the cache, so its numbers are computed anew)."""
    from flows.q1_mlp import q1_mlp
    from tests.conftest import make_bucket

    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    r1 = q1_mlp(profile="smoke", store=uri, overrides={**TWO_CELLS, "epochs": 2})
    r2 = q1_mlp(profile="smoke", store=uri, overrides={**TWO_CELLS, "epochs": 3})
    r3 = q1_mlp(profile="smoke", store=uri, overrides={**TWO_CELLS, "epochs": 2},
                refresh=True)
    return uri, r1, r2, r3


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def compare_manifest(st, flow: str, a: str, b: str) -> dict:
    return manifest(st, f"reports/compare/{flow}/{a}..{b}")


# ---------------------------------------------------------------- two runs, epochs 2 vs 3

def test_compare_shows_epochs_as_the_only_config_difference(q1_runs, capsys):
    uri, r1, r2, _ = q1_runs
    rc, out, err = run_cli(capsys, "compare", r1["run_id"], r2["run_id"], "--store", uri)
    assert rc == 0, err
    assert f"q1-mlp: A {r1['run_id']} .. B {r2['run_id']}" in out
    assert "config: epochs 2 -> 3\n" in out
    st = open_store(uri)
    m = compare_manifest(st, "q1-mlp", r1["run_id"], r2["run_id"])["metrics"]
    assert m["config_diff"] == [{"key": "epochs", "a": 2, "b": 3}]
    # same code, data, libraries, image and machine: nothing else differs
    assert m["differs"] == []
    assert set(m["same"]) == {"code", "input data", "library versions", "image tag", "device",
                              "where it ran"}


def test_metric_deltas_equal_the_manifests(q1_runs):
    uri, r1, r2, _ = q1_runs
    st = open_store(uri)
    m = compare_manifest(st, "q1-mlp", r1["run_id"], r2["run_id"])["metrics"]
    assert set(m["cells"]) == {"b64-relu-cross_entropy", "b64-tanh-cross_entropy"}
    for cell, by_metric in m["cells"].items():
        ea = manifest(st, r1["eval"][cell])["metrics"]
        eb = manifest(st, r2["eval"][cell])["metrics"]
        ta = manifest(st, r1["train"][cell])["metrics"]
        tb = manifest(st, r2["train"][cell])["metrics"]
        for key in ("test/accuracy", "test/f1_macro", "test/loss"):
            d = by_metric[key]
            assert d["a"] == ea[key] and d["b"] == eb[key]
            assert d["delta"] == pytest.approx(eb[key] - ea[key], abs=1e-12)
            assert d["a_n"] == d["b_n"] == 1 and d["exceeds_spread"] is None
            assert d["test"] == "one seed each: no spread to compare with"
        assert by_metric["train/loss"]["delta"] == pytest.approx(
            tb["train/loss"] - ta["train/loss"], abs=1e-12)
        assert by_metric["epochs"]["delta"] == 1.0
        pc = m["per_class"][cell]
        for k, name in enumerate(manifest(st, r1["eval"][cell])["classes"]):
            want = (eb["test/per_class"]["precision"][k] - ea["test/per_class"]["precision"][k])
            assert pc["precision"][name] == pytest.approx(want, abs=1e-12)
        delta = [[y - x for x, y in zip(ra, rb, strict=True)] for ra, rb in
                 zip(ea["test/confusion_matrix"], eb["test/confusion_matrix"], strict=True)]
        assert pc["confusion_delta"] == delta
    verdict = m["verdict"]
    assert verdict["metric"] == "test/accuracy"
    assert verdict["a"] == r1["champion"]["value"] and verdict["b"] == r2["champion"]["value"]
    assert verdict["delta"] == pytest.approx(r2["champion"]["value"] - r1["champion"]["value"])


def test_curves_overlay_both_runs_epochs(q1_runs):
    uri, r1, r2, _ = q1_runs
    st = open_store(uri)
    cmp = compare_manifest(st, "q1-mlp", r1["run_id"], r2["run_id"])
    assert cmp["metrics"]["curves"] == {
        c: {"a_epochs": 2, "b_epochs": 3}
        for c in ("b64-relu-cross_entropy", "b64-tanh-cross_entropy")}
    html = st.get_text(cmp["outputs"]["report.html"])
    assert "b64-relu-cross_entropy: A 2 epochs, B 3 epochs" in html
    pngs = re.findall(r'src="data:image/png;base64,', html)
    assert len(pngs) == 4  # two curve overlays, two confusion differences
    assert st.exists(cmp["outputs"]["curves-b64-relu-cross-entropy.png"])
    md = st.get_text(cmp["outputs"]["report.md"])
    assert "| epochs | 2 | 3 |" in md and "## Per-epoch curves" in md


# ---------------------------------------------------------------- the flow's own comparison

def test_every_run_compares_itself_with_its_champion(q1_runs):
    uri, r1, r2, r3 = q1_runs
    st = open_store(uri)
    assert "comparison" not in manifest(st, f"runs/q1-mlp/{r1['run_id']}")  # first: none
    flow_m = manifest(st, f"runs/q1-mlp/{r2['run_id']}")
    comparison = flow_m["comparison"]
    assert comparison["a"] == r1["run_id"] == r2["champion"]["champion_run_id"]
    assert comparison["against"] == "the champion"
    assert comparison["config_diff"] == [{"key": "epochs", "a": 2, "b": 3}]
    key = f"reports/compare/q1-mlp/{r1['run_id']}..{r2['run_id']}/report.html"
    assert comparison["report"]["report.html"] == key and st.exists(key)
    # the question report links it, and the run records its code's per-file hashes
    assert st.url(key) in st.get_text(r2["report"]["report.html"])
    assert "tasks/q1/train.py" in flow_m["code"]["source"]
    # the Prefect UI shows the verdict and the location
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["q1-mlp-comparison"])))
    texts = [a.data for a in arts if isinstance(a.data, str)]
    assert any(st.url(key) in t and f"vs the champion {r1['run_id']}" in t for t in texts)
    # r3 was measured against the champion of its time
    champ = manifest(st, f"runs/q1-mlp/{r3['run_id']}/promote")["metrics"]["champion_run_id"]
    assert manifest(st, f"runs/q1-mlp/{r3['run_id']}")["comparison"]["a"] == champ


def test_identical_config_and_seed_show_no_metric_difference(q1_runs, capsys):
    uri, r1, _, r3 = q1_runs
    st = open_store(uri)
    assert r3["train"]["b64-relu-cross_entropy"] != r1["train"]["b64-relu-cross_entropy"]
    rc, out, err = run_cli(capsys, "compare", r1["run_id"], r3["run_id"], "--store", uri)
    assert rc == 0, err
    assert "config: identical" in out
    m = compare_manifest(st, "q1-mlp", r1["run_id"], r3["run_id"])["metrics"]
    assert m["config_diff"] == []
    for by_metric in m["cells"].values():
        for key, d in by_metric.items():
            if key != "train/time_s":  # wall-clock time is not a result
                assert d["delta"] == 0.0, key
    assert all(v == 0 for pc in m["per_class"].values() for row in pc["confusion_delta"]
               for v in row)
    assert m["verdict"]["delta"] == 0.0 and m["verdict"]["outcome"] == "equal"


def test_latest_n_and_champion_resolve(q1_runs, capsys):
    from tasks.comparers import resolve
    from tasks.reporting.runs import RunRefError

    uri, r1, r2, r3 = q1_runs
    st = open_store(uri)
    a, b = resolve(st, "latest~1", "latest", question="q1-mlp")
    assert (a.run_id, b.run_id) == (r2["run_id"], r3["run_id"])
    with pytest.raises(RunRefError, match="need a question"):
        resolve(st, "latest~2", "latest")
    champ = st.get_json("models/q1-mlp-smoke/champion.json")["run_id"]
    a, b = resolve(st, "champion", r1["run_id"])  # the question from the run id
    assert a.run_id == champ and b.run_id == r1["run_id"] and a.flow == "q1-mlp"
    rc, out, err = run_cli(capsys, "compare", "latest~1", "latest", "--question", "q1-mlp",
                           "--store", uri)
    assert rc == 0, err
    assert f"A {r2['run_id']} (latest~1) .. B {r3['run_id']} (latest)" in out


@pytest.mark.parametrize("args, message", [
    (["no-such-run", "latest", "--question", "q1-mlp"],
     "A: no run 'no-such-run' in s3://"),
    (["latest~7", "latest", "--question", "q1-mlp"],
     "latest~7: only 3 finished q1-mlp run(s)"),
    (["latest", "latest~1"], "need a question: add --question Q"),
    (["latest", "latest", "--question", "q5"], "unknown question 'q5'"),
    (["../../etc", "latest", "--question", "q1-mlp"], "is not a run reference"),
    (["champion", "latest", "--question", "q1-cnn"],
     "there is no finished q1-cnn run"),
    (["latest"], "compare needs two runs, A and B (got 1)"),
])
def test_bad_references_exit_2(q1_runs, capsys, args, message):
    uri = q1_runs[0]
    rc, out, err = run_cli(capsys, "compare", *args, "--store", uri)
    assert rc == 2 and message in err, err


def test_a_run_of_another_question_or_in_progress_is_refused(q1_runs, capsys):
    uri, r1, _, _ = q1_runs
    st = open_store(uri)
    rc, _, err = run_cli(capsys, "compare", r1["run_id"], "latest", "--question", "q1-cnn",
                         "--store", uri)
    assert rc == 2 and f"run {r1['run_id']} is a q1-mlp run, not a q1-cnn run" in err
    # a run with finished steps but no flow manifest is still running (or was interrupted)
    st.put_json("runs/q1-mlp/20990101T000000Z-unfini/train-x/manifest.json", {"task": "x"})
    rc, _, err = run_cli(capsys, "compare", r1["run_id"], "20990101T000000Z-unfini",
                         "--store", uri)
    assert rc == 2
    assert "run 20990101T000000Z-unfini of q1-mlp has not finished" in err
    assert "no flow manifest" in err


def test_the_real_command_exits_2_on_a_bad_reference(q1_runs):
    uri = q1_runs[0]
    res = subprocess.run([sys.executable, "-m", "flows.cli", "compare", "nope", "latest",
                          "--question", "q1-mlp", "--store", uri], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "error: A: no run 'nope'" in res.stderr and "recent q1-mlp runs" in res.stderr


def test_trend_marks_champion_changes(q1_runs, capsys):
    uri, r1, r2, r3 = q1_runs
    st = open_store(uri)
    rc, out, err = run_cli(capsys, "compare", "--trend", "q1-mlp", "--store", uri)
    assert rc == 0, err
    m = manifest(st, "reports/compare/q1-mlp/trend-smoke")["metrics"]
    assert [r["run_id"] for r in m["runs"]] == [r1["run_id"], r2["run_id"], r3["run_id"]]
    assert [r["value"] for r in m["runs"]] == [r["champion"]["value"] for r in (r1, r2, r3)]
    assert [r["promoted"] for r in m["runs"]] == [
        r["champion"]["decision"] == "promoted" for r in (r1, r2, r3)]
    assert m["runs"][0]["champion_before"] is None
    assert m["runs"][1]["champion_before"] == r1["champion"]["value"]
    assert r2["run_id"] in out and "test/accuracy=" in out


def test_repeats_give_mean_std_and_the_spread_test(prefect_harness, tmp_path):
    from flows.q1_mlp import q1_mlp

    uri = f"file://{tmp_path}/store"
    seeds = {**ONE_CELL, "repeats": 2}
    r1 = q1_mlp(profile="smoke", store=uri, overrides={**seeds, "epochs": 1})
    r2 = q1_mlp(profile="smoke", store=uri, overrides={**seeds, "epochs": 2})
    st = open_store(uri)
    m = compare_manifest(st, "q1-mlp", r1["run_id"], r2["run_id"])["metrics"]
    assert list(m["cells"]) == ["b64-relu-cross_entropy"]  # the seeds are one cell
    d = m["cells"]["b64-relu-cross_entropy"]["test/accuracy"]
    a_vals = [manifest(st, r1["eval"][c])["metrics"]["test/accuracy"]
              for c in ("b64-relu-cross_entropy", "b64-relu-cross_entropy-seed1")]
    b_vals = [manifest(st, r2["eval"][c])["metrics"]["test/accuracy"]
              for c in ("b64-relu-cross_entropy", "b64-relu-cross_entropy-seed1")]
    assert d["a_n"] == d["b_n"] == 2
    assert d["a"] == pytest.approx(sum(a_vals) / 2) and d["b"] == pytest.approx(sum(b_vals) / 2)
    assert d["a_std"] == pytest.approx(abs(a_vals[0] - a_vals[1]) / math.sqrt(2))
    assert d["p"] is not None and d["exceeds_spread"] == (d["p"] < 0.05)
    assert d["test"].startswith("Welch's t-test p=")


# ---------------------------------------------------------------- the regression switch

@pytest.fixture(scope="module")
def regression_store(prefect_harness, s3_endpoint):
    from flows.q1_mlp import q1_mlp
    from tests.conftest import make_bucket

    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    champion = q1_mlp(profile="smoke", store=uri, overrides={**ONE_CELL, "epochs": 2})
    return uri, champion


def test_regression_switch_fails_a_worse_run_after_writing_everything(regression_store):
    from flows.q1_mlp import q1_mlp

    uri, champion = regression_store
    st = open_store(uri)
    worse = {**ONE_CELL, "epochs": 2, "learning_rate": 1e-6, "fail_on_regression": True}
    state = q1_mlp(profile="smoke", store=uri, overrides=worse, return_state=True)
    assert state.is_failed()
    latest = st.get_json("runs/q1-mlp/latest.json")["run_id"]
    assert latest != champion["run_id"]
    key = f"reports/compare/q1-mlp/{champion['run_id']}..{latest}/report.html"
    assert st.url(key) in state.message and "regressed against the champion" in state.message
    flow_m = manifest(st, f"runs/q1-mlp/{latest}")
    assert flow_m["comparison"]["regression"] is True
    assert flow_m["comparison"]["verdict"]["b"] < champion["champion"]["value"]
    assert st.exists(key) and st.exists(flow_m["report"]["report.html"])
    assert st.get_json("models/q1-mlp-smoke/champion.json")["run_id"] == champion["run_id"]


def test_regression_switch_exits_4_from_the_cli_and_spares_tolerated_runs(regression_store,
                                                                          capsys):
    uri, champion = regression_store
    base = ["run", "q1-mlp", "--store", uri, "--set", "data.n_train=600", "--set",
            "data.n_test=200", "--set", "batch_sizes=[64]", "--set", 'activations=["relu"]',
            "--set", 'losses=["cross_entropy"]', "--set", "epochs=2", "--set",
            "learning_rate=1e-6", "--set", "fail_on_regression=true"]
    rc, _, err = run_cli(capsys, *base)
    assert rc == 4, err
    assert "regressed against the champion" in err
    # the same worse run within a tolerance wider than the gap passes
    rc, _, err = run_cli(capsys, *base, "--set", "regression_tolerance=1.0")
    assert rc == 0, err
    st = open_store(uri)
    latest = st.get_json("runs/q1-mlp/latest.json")["run_id"]
    verdict = manifest(st, f"runs/q1-mlp/{latest}")["comparison"]["verdict"]
    assert verdict["outcome"] == "worse, within tolerance" and verdict["delta"] < 0


def test_regression_switch_passes_a_better_run(regression_store):
    from flows.q1_mlp import q1_mlp

    uri, champion = regression_store
    st = open_store(uri)
    better = q1_mlp(profile="smoke", store=uri,
                    overrides={**ONE_CELL, "epochs": 4, "fail_on_regression": True})
    assert better["champion"]["value"] > champion["champion"]["value"]  # the premise
    assert better["comparison"]["regression"] is False
    assert better["comparison"]["verdict"]["outcome"] == "better"
    assert better["champion"]["decision"] == "promoted"
    assert st.get_json("models/q1-mlp-smoke/champion.json")["run_id"] == better["run_id"]


# ---------------------------------------------------------------- Q3: the same photo

@pytest.fixture(scope="module")
def q3_runs(prefect_harness, tmp_path_factory):
    from flows.q3_segmentation import q3_segmentation

    uri = f"file://{tmp_path_factory.mktemp('q3-compare')}/store"
    fast = {"arch": "deeplabv3_mobilenet_v3_large", "resize_size": 32,
            "images": ["package:matplotlib/mpl-data/sample_data/grace_hopper.jpg"]}
    r1 = q3_segmentation(profile="smoke", store=uri, overrides={**fast, "seed": 0})
    r2 = q3_segmentation(profile="smoke", store=uri, overrides={**fast, "seed": 1})
    return uri, r1, r2


def test_q3_compare_shows_the_same_photo_from_both_runs(q3_runs, capsys):
    uri, r1, r2 = q3_runs
    st = open_store(uri)
    # the flow already compared the second run with the previous one
    assert r2["comparison"]["a"] == r1["run_id"]
    assert r2["comparison"]["against"] == "the previous run"
    rc, out, err = run_cli(capsys, "compare", "latest~1", "latest", "--question",
                           "q3-segmentation", "--store", uri)
    assert rc == 0, err
    assert "config: seed 0 -> 1" in out
    cmp = compare_manifest(st, "q3-segmentation", r1["run_id"], r2["run_id"])
    m = cmp["metrics"]
    assert "input data" in m["same"]  # the same photo, byte for byte
    [pair] = m["images"]
    assert pair["a"] == r1["images"][0]["outputs"]["overlay"]
    assert pair["b"] == r2["images"][0]["outputs"]["overlay"]
    ingest = manifest(st, r1["ingest"])["images"][0]["sha256"]
    assert pair["caption"] == f"The same photo (sha256 {ingest[:12]}) segmented by each run."
    name = r1["images"][0]["name"]
    agree = m["pixel_agreement"][name]["pixel_agreement"]
    assert 0.0 <= agree <= 1.0
    shares_a = {r["name"]: r["share"] for r in r1["images"][0]["legend"]}
    shares_b = {r["name"]: r["share"] for r in r2["images"][0]["legend"]}
    for cls, d in m["per_class"][name]["pixel share"].items():
        assert d == pytest.approx(shares_b.get(cls, 0.0) - shares_a.get(cls, 0.0), abs=1e-12)
    assert m["verdict"]["metric"] is None  # no champion, no verdict
    html = st.get_text(cmp["outputs"]["report.html"])
    assert f"{name}: overlay" in html and "Label agreement per photo" in html


# ---------------------------------------------------------------- statistics and trend units

def test_welch_p_values_match_the_t_distribution():
    from tasks.reporting.stats import betainc, metric_delta, t_two_sided_p, welch

    # two-sided critical values of Student's t at alpha 0.05 (tables)
    for t, df in ((12.706, 1), (2.228, 10), (2.042, 30)):
        assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=5e-4)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)
    # Welch on equal variances and sizes: t = (mb - ma) / sqrt(2 s^2 / n), df = 2n - 2
    res = welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert res["t"] == pytest.approx(1 / math.sqrt(2 / 3)) and res["df"] == pytest.approx(4)
    assert res["p"] == pytest.approx(0.2879, abs=1e-3)
    d = metric_delta([0.80, 0.81, 0.79], [0.90, 0.91, 0.89])
    assert d["delta"] == pytest.approx(0.10) and d["exceeds_spread"] is True
    assert "Welch's t-test" in d["test"] and d["a_std"] == pytest.approx(0.01)
    d = metric_delta([0.80, 0.85, 0.75], [0.81, 0.86, 0.76])
    assert d["exceeds_spread"] is False and "within" in d["test"]
    assert welch([0.5], [0.6, 0.7]) is None


def test_config_diff_flattens_nested_keys():
    from tasks.reporting.compare import config_diff

    a = {"epochs": 2, "data": {"n_train": 600, "seed": 0}, "hidden": [256, 128]}
    b = {"epochs": 2, "data": {"n_train": 800, "seed": 0}, "hidden": [256, 64], "new": 1}
    assert config_diff(a, b) == [
        {"key": "data.n_train", "a": 600, "b": 800},
        {"key": "hidden", "a": [256, 128], "b": [256, 64]},
        {"key": "new", "a": "(absent)", "b": 1}]


def _candidate(st, q: str, run_id: str, value: float, status: str, when: str,
               champion: tuple[str, float] | None, tolerance: float = 0.0) -> None:
    st.put_json(f"models/{q}-smoke/candidates/{run_id}.json", {
        "question": f"{q}-smoke", "run_id": run_id, "metric": "test/accuracy",
        "value": value, "mode": "max", "status": status, "recorded_at": when})
    st.put_json(f"runs/{q}/{run_id}/manifest.json", {
        "flow": q, "run_id": run_id, "profile": "smoke", "finished_at": when,
        "config": {"regression_tolerance": tolerance},
        "champion": {"metric": "test/accuracy", "value": value,
                     "decision": status,
                     "champion_run_id": champion and champion[0],
                     "champion_value": champion and champion[1]}})


def test_trend_flags_regressions_beyond_each_runs_tolerance(tmp_path):
    from tasks.reporting.trend import trend_rows, trend_section

    st = open_store(f"file://{tmp_path}/s")
    _candidate(st, "q1-mlp", "r1", 0.80, "promoted", "2026-01-01T01:00:00+00:00", None)
    _candidate(st, "q1-mlp", "r2", 0.85, "promoted", "2026-01-02T01:00:00+00:00", ("r1", 0.80))
    _candidate(st, "q1-mlp", "r3", 0.84, "kept as candidate", "2026-01-03T01:00:00+00:00",
               ("r2", 0.85), tolerance=0.02)
    _candidate(st, "q1-mlp", "r4", 0.70, "kept as candidate", "2026-01-04T01:00:00+00:00",
               ("r2", 0.85), tolerance=0.02)
    rows = trend_rows(st, "q1-mlp", "smoke")
    assert [r["run_id"] for r in rows] == ["r1", "r2", "r3", "r4"]
    assert [r["promoted"] for r in rows] == [True, True, False, False]
    assert [r["regression"] for r in rows] == [False, False, False, True]
    assert [r["champion_before"] for r in rows] == [None, 0.80, 0.85, 0.85]
    assert rows[3]["delta"] == pytest.approx(-0.15)
    assert [r["run_id"] for r in trend_rows(st, "q1-mlp", "smoke", last=2)] == ["r3", "r4"]
    sec = trend_section(st, "q1-mlp", "smoke")
    assert "2 champion change(s) and 1 regression(s)" in sec.paragraphs[0]
    assert [row[6] for row in sec.tables[0].rows] == ["no", "no", "no", "REGRESSION"]
    assert sec.images and sec.images[0].png[:4] == b"\x89PNG"


def test_final_report_has_a_trend_per_question(q1_runs):
    from tasks.registry import run_task

    uri, r1, r2, r3 = q1_runs
    m = run_task("report.final", {"out": "reports/final/cmp-test", "questions": ["q1-mlp"]},
                 uri)
    md = open_store(uri).get_text(m.outputs["report.md"])
    assert "Trend: the last 3 q1-mlp runs (smoke profile)" in md
    for r in (r1, r2, r3):
        assert r["run_id"] in md


# ---------------------------------------------------------------- Q2 and Q4 comparers

def _put(st, prefix: str, task: str, metrics: dict, outputs: dict | None = None, **extra):
    st.put_json(f"{prefix}/manifest.json", {
        "task": task, "prefix": prefix, "store": st.uri, "config": {}, "config_hash": "x",
        "metrics": metrics, "outputs": outputs or {}, "started_at": "t", "finished_at": "t",
        "duration_s": 1.0, "provenance": {"git_commit": "abc"}, **extra})


def png_bytes(st, key: str, colour) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    st.put_bytes(key, buf.getvalue())
    return key


def test_q4_comparer_gives_per_class_map_deltas_and_boxes_side_by_side(tmp_path):
    from tasks.comparers import comparer, resolve
    from tasks.reporting.compare import CompareConfig, render

    st = open_store(f"file://{tmp_path}/s")
    names = ["blue", "red"]
    _put(st, "data/shapes/abc", "yolo-export.fetch", {}, sha256={"dataset.zip": "f00"})
    for run_id, m5095, blue, cm in (("ra", 0.40, 0.30, [[5, 1, 0], [0, 4, 1], [1, 0, 0]]),
                                    ("rb", 0.50, 0.45, [[6, 0, 0], [0, 4, 1], [0, 0, 0]])):
        base = f"runs/q4-yolo/{run_id}"
        _put(st, f"{base}/train-yolov5n", "yolo.train", {"train/time_s": 10.0, "epochs": 3},
             history=[{"epoch": e, "train/box_loss": 1.0 / e, "val/box_loss": 1.2 / e,
                       "metrics/mAP50-95(B)": m5095 * e / 3} for e in (1, 2, 3)])
        _put(st, f"{base}/eval-yolov5n", "yolo.evaluate", {
            "val/mAP50-95": m5095, "val/mAP50": m5095 + 0.2, "val/precision": 0.6,
            "val/recall": 0.5, "val/confusion_matrix": cm, "val/per_class": {
                "blue": {"instances": 6, "mAP50-95": blue, "mAP50": 0.6},
                "red": {"instances": 5, "mAP50-95": 0.5, "mAP50": 0.7}}},
             {"predictions": png_bytes(st, f"{base}/eval-yolov5n/predictions.png", "white")},
             label="yolov5n", classes=names, samples=["a.jpg", "b.jpg"])
        st.put_json(f"{base}/manifest.json", {
            "flow": "q4-yolo", "run_id": run_id, "profile": "smoke", "finished_at": run_id,
            "config": {"epochs": 3, "eval_split": "val"}, "data": "data/shapes/abc",
            "train": {"yolov5n.yaml": f"{base}/train-yolov5n"},
            "eval": {"yolov5n.yaml": f"{base}/eval-yolov5n"},
            "champion": {"metric": "val/mAP50-95", "value": m5095, "best_cell": "yolov5n"}})
    a, b = resolve(st, "ra", "rb")
    assert a.flow == "q4-yolo"
    m = render(CompareConfig(question="q4-yolo", a="ra", b="rb", out="cmp"), st,
               comparer("q4-yolo"), flows=["q4-yolo"]).metrics
    assert m["cells"]["yolov5n"]["val/mAP50-95"]["delta"] == pytest.approx(0.10)
    assert m["per_class"]["yolov5n"]["mAP50-95"] == {"blue": pytest.approx(0.15),
                                                     "red": 0.0}
    assert m["per_class"]["yolov5n"]["confusion_delta"] == [[1, -1, 0], [0, 0, 0],
                                                            [-1, 0, 0]]
    assert m["curves"]["yolov5n"] == {"a_epochs": 3, "b_epochs": 3}
    [pair] = m["images"]
    assert pair["a"].startswith("runs/q4-yolo/ra/") and pair["b"].startswith("runs/q4-yolo/rb/")
    assert "the same validation images in both runs" in pair["caption"]
    assert m["verdict"]["outcome"] == "better"


def test_q2_comparer_lists_grid_predictions_that_changed(tmp_path):
    from tasks.comparers import comparer
    from tasks.reporting.compare import CompareConfig, render

    st = open_store(f"file://{tmp_path}/s")
    _put(st, "data/stl10/x", "stl10.fetch", {"sha256": {"test_x": "aa", "test_y": "bb"}})
    y = [0, 1, 2, 3]
    for run_id, acc, pred in (("ra", 0.5, [0, 1, 5, 5]), ("rb", 0.6, [0, 4, 2, 5])):
        base = f"runs/q2-transfer/{run_id}"
        _put(st, f"{base}/train-resnet18", "transfer.train",
             {"test/accuracy": acc, "test/loss": 1.0, "epochs": 2},
             history=[{"epoch": 1, "test/accuracy": acc - 0.1}, {"epoch": 2,
                                                                  "test/accuracy": acc}])
        _put(st, f"{base}/finetune-resnet18", "transfer.finetune",
             {"grid/indices": [3, 7, 9, 11], "grid/true": y, "grid/pred": pred,
              "misclassified": sum(p != t for p, t in zip(pred, y, strict=True))},
             {"grid": png_bytes(st, f"{base}/finetune-resnet18/grid.png", "grey")})
        st.put_json(f"{base}/manifest.json", {
            "flow": "q2-transfer", "run_id": run_id, "profile": "smoke", "finished_at": run_id,
            "config": {"epochs": 2}, "data": "data/stl10/x",
            "weights": {"resnet18": {"pretrained": False, "source": "random"}},
            "train": {"resnet18": f"{base}/train-resnet18"},
            "finetune": {"resnet18": f"{base}/finetune-resnet18"},
            "champion": {"metric": "test/accuracy", "value": acc, "best_cell": "resnet18"}})
    m = render(CompareConfig(question="q2-transfer", a="ra", b="rb", out="cmp"), st,
               comparer("q2-transfer"), flows=["q2-transfer"]).metrics
    assert m["grid"]["resnet18"] == {"changed": 2, "right_in_b_only": 1, "right_in_a_only": 1,
                                     "images": 4}
    assert m["cells"]["resnet18"]["misclassified"]["delta"] == 0.0
    assert m["cells"]["resnet18"]["test/accuracy"]["delta"] == pytest.approx(0.1)
    assert "the same test images in both runs" in m["images"][0]["caption"]
    assert json.dumps(m)  # the manifest is plain JSON
