"""Our numbers over seeds beside the reference's (issue 30): the t quantile and interval
against table values and hand computation, the Q1 report's mean ± std, per-seed values, best
setting by the mean and where each reference number lies against our 95 % interval, the same
in the final report and in `visionflows compare`, and the nightly trend's check of a new run
against the interval its champion recorded."""

from __future__ import annotations

import math
import statistics

import pytest

from flows.cli import main
from tasks.core.store import open_store
from tasks.reporting.compare import summary_lines
from tasks.reporting.stats import interval_text, locate, metric_delta, t_interval, t_quantile
from tests.test_report_verdicts import put_manifest

T975_DF2 = 4.302652729911275  # t(0.975, 2): three seeds, two-sided 95 %


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path / 'store'}")


# ---------------------------------------------------------------- the statistics

@pytest.mark.parametrize("q, df, table", [
    # Student's t critical values as printed in the usual tables (3 decimals)
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776),
    (0.975, 9, 2.262), (0.975, 10, 2.228), (0.975, 30, 2.042), (0.975, 120, 1.980),
    (0.95, 2, 2.920), (0.995, 2, 9.925), (0.90, 5, 1.476), (0.999, 10, 4.144)])
def test_t_quantile_matches_the_tables(q, df, table):
    assert t_quantile(q, df) == pytest.approx(table, abs=5e-4)
    assert t_quantile(1 - q, df) == pytest.approx(-table, abs=5e-4)


def test_t_quantile_limits_and_bad_input():
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)  # the normal's
    assert t_quantile(0.975, 2) == pytest.approx(T975_DF2, abs=1e-9)
    for q in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="0 < q < 1"):
            t_quantile(q, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.975, 0)


def test_t_interval_by_hand():
    ci = t_interval([0.90, 0.91, 0.92])
    # mean 0.91, s = 0.01, half = t(0.975, 2) * 0.01 / sqrt(3) = 0.0248414
    assert ci["mean"] == pytest.approx(0.91) and ci["std"] == pytest.approx(0.01)
    assert ci["n"] == 3 and ci["values"] == [0.90, 0.91, 0.92]
    assert ci["half"] == pytest.approx(0.0248414, abs=1e-7)
    assert (ci["lo"], ci["hi"]) == pytest.approx((0.8851586, 0.9348414), abs=1e-7)
    # n = 5: t(0.975, 4) = 2.776; s of 1..5 = sqrt(2.5)
    ci = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci["half"] == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), abs=1e-5)
    assert t_interval([0.9]) is None and t_interval([]) is None
    same = t_interval([0.5, 0.5])
    assert same["lo"] == same["hi"] == 0.5


def test_where_a_number_lies_in_words():
    ci = t_interval([0.89, 0.90, 0.91])  # [0.875159, 0.924841]
    assert locate(0.9093, ci) == {"position": "inside", "gap": 0.0,
                                  "from_mean": pytest.approx(0.0093)}
    assert interval_text(0.9093, ci, percent=True) == (
        "the reference lies inside our 95 % interval [87.52, 92.48] (n=3); the reference "
        "minus our mean: +0.93 points")
    assert interval_text(0.95, ci, percent=True) == (
        "the reference lies above our 95 % interval [87.52, 92.48] (n=3) by 2.52 points; "
        "the reference minus our mean: +5.00 points")
    assert locate(0.85, ci)["position"] == "below"
    assert interval_text(0.85, ci, percent=True).startswith(
        "the reference lies below our 95 % interval [87.52, 92.48] (n=3) by 2.52 points")
    assert interval_text(0.9093, None, percent=True) == "one run: no interval"


def test_compare_gives_each_sides_interval_and_seeds():
    d = metric_delta([0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
    assert d["a_values"] == [0.90, 0.91, 0.92] and d["b_values"] == [0.80, 0.81, 0.82]
    assert d["a_ci"] == pytest.approx([0.8851586, 0.9348414], abs=1e-7)
    assert d["b_ci"] == pytest.approx([0.7851586, 0.8348414], abs=1e-7)
    assert d["b_in_a"] == "below" and d["exceeds_spread"] is True
    assert metric_delta([0.90, 0.91, 0.92], [0.905, 0.915])["b_in_a"] == "inside"
    one = metric_delta([0.9], [0.8])
    assert one["a_ci"] is None and one["b_in_a"] is None
    lines = summary_lines({"cells": {"b64": {"test/accuracy": d}}}, "test/accuracy")
    assert any("A 95 % [0.8852, 0.9348] (n=3): B below" in line for line in lines)


# ---------------------------------------------------------------- the Q1 report

def _seed(store, cell: str, k: int, dropout: float, dev: float, test: float):
    name = cell if k == 0 else f"{cell}-seed{k}"
    cm = [[10 if i == j else 1 for j in range(10)] for i in range(10)]
    put_manifest(store, "classifier.train", f"r/train-{name}",
                 {"out": f"r/train-{name}", "data": "d", "model": "cnn_pool_bn",
                  "dropout": dropout, "seed": k},
                 {"dev/accuracy": dev, "best/dev/accuracy": dev, "test/accuracy": test,
                  "train/time_s": 10.0 + k, "epochs": 2},
                 history=[{"epoch": e, "train/loss": 1.0 / e, "train/accuracy": dev - 0.05,
                           "dev/loss": 1.1 / e, "dev/accuracy": dev, "test/loss": 1.1 / e,
                           "test/accuracy": test} for e in (1, 2)])
    put_manifest(store, "classifier.evaluate", f"r/eval-{name}", {"out": f"r/eval-{name}"},
                 {"test/accuracy": test, "test/precision_macro": test,
                  "test/recall_macro": test, "test/f1_macro": test, "test/loss": 1 - test,
                  "test/per_class": {"precision": [test] * 10, "recall": [test] * 10},
                  "test/confusion_matrix": cm})
    return {"train": f"r/train-{name}", "eval": f"r/eval-{name}"}


# dropout -> (dev per seed, test per seed): 0.4 holds the best single seed (0.925), 0.3 the
# best mean; 0.5 ran once
SWEEP = {0.3: ([0.912, 0.914, 0.916], [0.900, 0.902, 0.904]),
         0.4: ([0.905, 0.925, 0.890], [0.899, 0.910, 0.880]),
         0.5: ([0.901], [0.893])}


@pytest.fixture
def q1_report(store):
    from tasks.q1.report import ReportConfig, render

    runs = []
    for d, (devs, tests) in SWEEP.items():
        refs = [_seed(store, f"cnn_pool_bn-d{d:g}", k, d, dev, test)
                for k, (dev, test) in enumerate(zip(devs, tests, strict=True))]
        runs.append({"name": f"dropout {d:g}", "value": d, **refs[0], "repeats": refs[1:]})
    cfg = ReportConfig(out="rep", question="q1-cnn", title="Q1-CNN", profile="full",
                       run_id="r", groups=[{"key": "dropout", "title": "(e) Dropout sweep",
                                            "select_by": "dev/accuracy", "numeric": True,
                                            "runs": runs}])
    return render(cfg, store)


def _expected(values: list[float]) -> tuple[float, float, float, float]:
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = T975_DF2 * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def test_q1_report_marks_the_best_setting_by_the_mean(q1_report, store):
    m = q1_report
    group = m.metrics["groups"][0]
    assert group["best"] == 0.3 and group["best_n"] == 3  # not 0.4, the best single seed
    assert group["best_score"] == pytest.approx(0.914)
    assert group["best_std"] == pytest.approx(0.002)
    assert group["best_ci"] == pytest.approx(list(_expected(SWEEP[0.3][0])[2:]), abs=1e-9)
    md = store.get_text(m.outputs["report.md"])
    assert "| dropout 0.3 | ◀ best | ok |" in md
    assert "| dropout 0.4 |  | ok |" in md
    assert ("Ours: best dropout = 0.3 by the mean dev/accuracy (91.40 % ± 0.20 pts (n=3))."
            in md)
    # every seed, the mean's interval, and a single run said to have none
    assert ("| dropout 0.4 | dev/accuracy | 90.67 % ± 1.76 pts (n=3) | [86.30 %, 95.03 %] | "
            "90.50 %, 92.50 %, 89.00 % |") in md
    assert "| dropout 0.5 | dev/accuracy | 90.10 % | one run: no interval | 90.10 % |" in md
    summary = {r["variant"]: r for r in m.metrics["summary"]}
    row = summary["dropout=dropout 0.4"]
    assert row["values"] == SWEEP[0.4][1] and row["seeds"] == 3 and row["best"] is False
    assert row["value"] == pytest.approx(statistics.fmean(SWEEP[0.4][1]))
    assert row["ci"] == pytest.approx(list(_expected(SWEEP[0.4][1])[2:]), abs=1e-9)
    assert summary["dropout=dropout 0.3"]["best"] is True
    assert summary["dropout=dropout 0.5"]["ci"] is None


def test_q1_report_places_each_reference_number_against_our_interval(q1_report, store):
    rows = {r["item"]: r for r in q1_report.metrics["comparison"]}
    choice = rows["best dropout (by mean dev/accuracy)"]
    assert (choice["ours"], choice["reference"], choice["kind"]) == (0.3, 0.4, "choice")
    # our best against ours at the reference's choice: Welch over the seeds
    assert choice["position"].startswith("ours at dropout 0.4: 90.67 % ± 1.76 pts (n=3); "
                                         "our best minus it: +0.73 points (Welch's t-test p=")
    assert "within the seed-to-seed spread" in choice["position"]
    # at our best (0.3): dev 0.9138 inside [90.90, 91.90]; test 0.9093 above [89.70, 90.70]
    dev = rows["dev/accuracy at our best dropout"]
    assert dev["ours"] == pytest.approx(0.914) and dev["n"] == 3
    assert dev["values"] == SWEEP[0.3][0]
    assert dev["interval"] == pytest.approx(list(_expected(SWEEP[0.3][0])[2:]), abs=1e-9)
    assert dev["position"] == ("the reference lies inside our 95 % interval [90.90, 91.90] "
                               "(n=3); the reference minus our mean: -0.02 points")
    test = rows["test/accuracy at our best dropout"]
    _, _, _, hi = _expected(SWEEP[0.3][1])
    assert 0.9093 - hi == pytest.approx(0.0023317, abs=1e-7)
    assert test["position"] == ("the reference lies above our 95 % interval [89.70, 90.70] "
                                "(n=3) by 0.23 points; the reference minus our mean: +0.73 "
                                "points")
    # and at the reference's own setting, 0.4
    at_ref = rows["test/accuracy at the reference's dropout"]
    assert at_ref["values"] == SWEEP[0.4][1]
    assert at_ref["position"].startswith("the reference lies inside our 95 % interval")
    md = store.get_text(q1_report.outputs["report.md"])
    assert ("| test/accuracy | dropout 0.3 | 90.93 % | 90.20 % ± 0.20 pts (n=3) | "
            "[89.70 %, 90.70 %] | 90.00 %, 90.20 %, 90.40 % | the reference lies above") in md


def test_a_single_run_says_it_has_no_interval(store):
    from tasks.q1.report import ReportConfig, render

    ref = _seed(store, "cnn_pool_bn-d0.4", 0, 0.4, 0.905, 0.899)
    cfg = ReportConfig(out="rep1", question="q1-cnn", title="Q1-CNN", profile="full",
                       run_id="r", groups=[{"key": "dropout", "title": "(e) Dropout sweep",
                                            "select_by": "dev/accuracy",
                                            "runs": [{"name": "dropout 0.4", "value": 0.4,
                                                      **ref}]}])
    m = render(cfg, store)
    rows = {r["item"]: r for r in m.metrics["comparison"]}
    assert rows["test/accuracy at our best dropout"]["position"] == "one run: no interval"
    assert rows["test/accuracy at our best dropout"]["interval"] is None
    md = store.get_text(m.outputs["report.md"])
    assert "Ours: best dropout = 0.4 by dev/accuracy (90.50 %)." in md
    assert "| 90.93 % | 89.90 % | one run: no interval | 89.90 % | one run: no interval |" in md


def test_final_report_shows_intervals_and_seeds(q1_report, store):
    from tasks.reporting.final import FinalReportConfig, render

    rep = "rep"
    store.put_json("runs/q1-cnn/r/manifest.json", {
        "flow": "q1-cnn", "run_id": "r", "profile": "full", "config": {}, "duration_s": 60.0,
        "report": {"report.html": f"{rep}/report.html", "report.md": f"{rep}/report.md"}})
    store.put_json("runs/q1-cnn/latest.json", {"run_id": "r"})
    m = render(FinalReportConfig(out="final", questions=["q1-cnn"]), store)
    md = store.get_text(m.outputs["report.md"])
    assert ("| q1-cnn | test/accuracy at our best dropout | 90.20 % ± 0.20 pts (n=3) | "
            "90.93 % | -0.73 pts | the reference lies above our 95 % interval [89.70, 90.70] "
            "(n=3) by 0.23 points; the reference minus our mean: +0.73 points |") in md
    assert ("| q1-cnn | dropout=dropout 0.3 | ok | test/accuracy | 90.20 % ± 0.20 pts (n=3) "
            "(best) |") in md
    assert "| 90.00 %, 90.20 %, 90.40 % |" in md
    assert "| q1-cnn | dropout=dropout 0.5 | ok | test/accuracy | 89.30 % |" in md


# ---------------------------------------------------------------- the nightly trend

CELL = "cnn_pool_bn-d0.4"


def _run(store, run_id: str, devs: list[float], status: str, when: str,
         champion: tuple[str, float] | None, tolerance: float = 0.05):
    train, evals = {}, {}
    for k, dev in enumerate(devs):
        cid = CELL if k == 0 else f"{CELL}-seed{k}"
        train[cid], evals[cid] = f"runs/q1-cnn/{run_id}/train-{cid}", \
            f"runs/q1-cnn/{run_id}/eval-{cid}"
        put_manifest(store, "classifier.train", train[cid], {}, {"dev/accuracy": dev})
        put_manifest(store, "classifier.evaluate", evals[cid], {},
                     {"test/accuracy": dev - 0.01})
    store.put_json(f"models/q1-cnn-smoke/candidates/{run_id}.json", {
        "question": "q1-cnn-smoke", "run_id": run_id, "metric": "dev/accuracy",
        "value": max(devs), "mode": "max", "status": status, "recorded_at": when})
    store.put_json(f"runs/q1-cnn/{run_id}/manifest.json", {
        "flow": "q1-cnn", "run_id": run_id, "profile": "smoke", "finished_at": when,
        "config": {"regression_tolerance": tolerance}, "train": train, "eval": evals,
        "champion": {"metric": "dev/accuracy", "value": max(devs), "decision": status,
                     "champion_run_id": champion and champion[0],
                     "champion_value": champion and champion[1]}})
    store.put_json("runs/q1-cnn/latest.json", {"run_id": run_id})


@pytest.fixture
def nightly(store):
    # r1 records [90.70, 91.70] (mean 91.20, s 0.20 pts); r2 sits inside it; r3's mean
    # (90.20) is a point under it, yet its best seed is within the 5-point tolerance
    _run(store, "r1", [0.910, 0.912, 0.914], "promoted", "2026-01-01T01:00:00+00:00", None)
    _run(store, "r2", [0.909, 0.911, 0.913], "kept as candidate", "2026-01-02T01:00:00+00:00",
         ("r1", 0.914))
    _run(store, "r3", [0.900, 0.902, 0.904], "kept as candidate", "2026-01-03T01:00:00+00:00",
         ("r1", 0.914))
    return store


def test_trend_flags_a_drop_outside_the_champions_interval(nightly):
    from tasks.comparers import cells_of
    from tasks.reporting.trend import trend_rows, trend_section

    rows = trend_rows(nightly, "q1-cnn", "smoke", cells_of=cells_of("q1-cnn"))
    assert [r["regression"] for r in rows] == [False, False, False]  # tolerance: no alarm
    assert [r["drop"] for r in rows] == [False, False, True]
    assert rows[0]["interval"] is None  # no champion before the first run
    ok, drop = rows[1]["interval"], rows[2]["interval"]
    assert ok["reference_run"] == drop["reference_run"] == "r1"
    assert ok["cell"] == CELL and ok["position"] == "inside" and ok["n"] == 3
    assert ok["value"] == pytest.approx(0.911)
    assert drop["position"] == "below" and drop["value"] == pytest.approx(0.902)
    lo = 0.912 - T975_DF2 * 0.002 / math.sqrt(3)
    assert drop["interval"]["lo"] == pytest.approx(lo, abs=1e-9)
    assert drop["gap"] == pytest.approx(lo - 0.902, abs=1e-9)
    assert drop["short"] == "DROP: below [90.70, 91.70] by 0.50 points"
    sec = trend_section(nightly, "q1-cnn", "smoke", cells_of=cells_of("q1-cnn"))
    assert "1 drop(s) outside it" in sec.paragraphs[1]
    assert "r3: cnn_pool_bn-d0.4: mean dev/accuracy 90.20 % over 3 seed(s) lies below" in \
        sec.paragraphs[1]
    assert [row[7] for row in sec.tables[0].rows] == [
        "—", "inside [90.70, 91.70]", "DROP: below [90.70, 91.70] by 0.50 points"]
    # without the question's cells (an older caller) the table is as before
    assert len(trend_section(nightly, "q1-cnn", "smoke").tables[0].columns) == 8


def test_trend_cli_prints_the_drop(nightly, capsys):
    rc = main(["compare", "--trend", "q1-cnn", "--profile", "smoke", "--store", nightly.uri])
    out = capsys.readouterr().out
    assert rc == 0
    line = next(x for x in out.splitlines() if x.strip().startswith("r3"))
    assert "DROP: below [90.70, 91.70] by 0.50 points (champion r1, cnn_pool_bn-d0.4, mean " \
           "of 3)" in line and "REGRESSION" not in line
    assert "inside [90.70, 91.70]" in next(x for x in out.splitlines()
                                           if x.strip().startswith("r2"))
    m = nightly.get_json("reports/compare/q1-cnn/trend-smoke/manifest.json")
    assert m["metrics"]["drops"] == 1 and m["metrics"]["regressions"] == 0


def test_interval_check_edges():
    from tasks.reporting.compare import Cell
    from tasks.reporting.trend import interval_check

    one = {"c": Cell("c", [{"m": 0.9}])}
    three = {"c": Cell("c", [{"m": 0.90}, {"m": 0.91}, {"m": 0.92}])}
    assert interval_check(one, three, "m", "max", "r0")["short"] == "one run: no interval"
    assert interval_check(three, {}, "m", "max", "r0")["short"] == "c not in this run"
    # a loss (mode min): higher is worse
    low = {"c": Cell("c", [{"m": 0.80}])}
    check = interval_check(three, low, "m", "min", "r0")
    assert check["position"] == "below" and check["drop"] is False
    high = {"c": Cell("c", [{"m": 0.99}])}
    assert interval_check(three, high, "m", "min", "r0")["drop"] is True
    assert interval_check(three, high, "m", "max", "r0")["drop"] is False


# ---------------------------------------------------------------- the docs table

def test_fidelity_table_from_step_manifests_with_pending_cells(store, capsys):
    from tasks.q1.fidelity import main as fidelity

    base = "runs/q1-cnn/20260101T000000Z-abc123"
    for k, (dev, test) in enumerate(zip([0.912, 0.914, 0.916], [0.900, 0.902, 0.904],
                                        strict=True)):
        cid = "cnn_pool_bn-d0.4" + (f"-seed{k}" if k else "")
        put_manifest(store, "classifier.train", f"{base}/train-{cid}", {"seed": k},
                     {"dev/accuracy": dev, "test/accuracy": test, "train/time_s": 50.0})
        put_manifest(store, "classifier.evaluate", f"{base}/eval-{cid}", {},
                     {"test/accuracy": test})
    put_manifest(store, "classifier.train", f"{base}/train-cnn-d0", {"seed": 0},
                 {"dev/accuracy": 0.90, "test/accuracy": 0.89, "train/time_s": 50.0})
    put_manifest(store, "classifier.evaluate", f"{base}/eval-cnn-d0", {},
                 {"test/accuracy": 0.89})
    put_manifest(store, "classifier.train", f"{base}/train-cnn_pool_bn-d0.2", {"seed": 0},
                 {"dev/accuracy": 0.91, "test/accuracy": 0.905, "train/time_s": 50.0})
    assert fidelity(["--store", store.uri, "--flow", "q1-cnn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Run `20260101T000000Z-abc123` (q1-cnn, profile full)")
    # manifests written by put_manifest last 1 s each: train + eval per seed
    assert ("| dropout 0.4 (`cnn_pool_bn-d0.4`) | 3 of 3 | 91.40 ± 0.20 (91.20, 91.40, "
            "91.60) | 90.20 ± 0.20 (90.00, 90.20, 90.40) | [89.70, 90.70] | 91.38 / 90.93 | "
            "dev: the reference lies inside our 95 % interval [90.90, 91.90] (n=3); the "
            "reference minus our mean: -0.02 points; test: the reference lies above our 95 % "
            "interval [89.70, 90.70] (n=3) by 0.23 points; the reference minus our mean: +0.73 "
            "points | 0.1 min |") in out
    assert ("| (c) no pooling (`cnn-d0`) | 1 of 3 | 90.00 (one run: 90.00) | 89.00 (one run: "
            "89.00) | one run: no interval | — | — | 0.0 min |") in out
    assert ("| dropout 0.1 (`cnn_pool_bn-d0.1`) | 0 of 3 | pending | pending | — | — | "
            "pending |") in out
    assert ("| dropout 0.2 (`cnn_pool_bn-d0.2`) | 1 of 3 (1 not evaluated yet: test from its "
            "training's last epoch) | 91.00 (one run: 91.00) | 90.50 (one run: 90.50) |") in out
    assert "Pending (not all seeds stored yet): cnn-d0, cnn_pool_bn-d0, " in out
    assert "(d) max-pool + BN = dropout 0 (`cnn_pool_bn-d0`)" in out
    assert fidelity(["--store", f"file://{store.root}-empty", "--flow", "q1-mlp"]) == 2
    assert "no q1-mlp run in" in capsys.readouterr().err
    # a finished run is tabulated by its own config (here one rate, the report's blocks)
    other = "runs/q1-cnn/20260102T000000Z-def456"
    for cid in ("cnn-d0.4", "cnn_pool_first-d0.4"):
        put_manifest(store, "classifier.train", f"{other}/train-{cid}", {"seed": 0},
                     {"dev/accuracy": 0.905, "test/accuracy": 0.9, "train/time_s": 50.0})
    store.put_json(f"{other}/manifest.json", {"config": {
        "dropouts": [0.4], "dropout": 0.4, "block_order": "pool_bn_relu", "repeats": 1}})
    assert fidelity(["--store", store.uri, "--flow", "q1-cnn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Run `20260102T000000Z-def456` (q1-cnn")
    rows = [line for line in out.splitlines() if line.startswith("| (") or "`cnn" in line]
    assert len(rows) == 2 and "`cnn-d0.4`) | 1 of 1 (" in rows[0], rows
    assert "`cnn_pool_first-d0.4`) | 1 of 1 (" in rows[1] and "91.38 / 90.93" in rows[1]


def test_split_spread_resamples_the_test_images_of_a_trained_cell(store):
    """A real (tiny) Q1-CNN training on generated data: the last model's accuracy on every
    test image is the dev and test accuracies weighted by their sizes, our test number is
    the training's, and random splits of the same size spread around the whole's."""
    from tasks.q1.fidelity import split_spread
    from tasks.registry import run_task

    data = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 300,
                                            "n_test": 250}, store)
    prefix = "runs/q1-cnn/r/train-cnn_pool_bn-d0.4"
    tr = run_task("classifier.train", {
        "out": prefix, "data": data.prefix, "model": "cnn_pool_bn", "dropout": 0.4,
        "epochs": 1, "batch_size": 50, "normalize": True, "hflip": True,
        "dev_fraction": 0.6, "device": "cpu"}, store)
    r = split_spread(store, prefix, draws=500)
    assert r["n_test"] == 100 and r["draws"] == 500 and r["epoch"] == 1
    assert r["test"] == pytest.approx(tr.metrics["test/accuracy"], abs=1e-12)
    assert r["dev"] == pytest.approx(tr.metrics["dev/accuracy"], abs=1e-12)
    assert r["all"] == pytest.approx(0.6 * r["dev"] + 0.4 * r["test"], abs=1e-12)
    assert r["random_mean"] == pytest.approx(r["all"], abs=0.02)
    # sampling 100 of 250 without replacement: sd = sqrt(p(1-p)/100 * 150/249)
    p = r["all"]
    assert r["random_std"] == pytest.approx(math.sqrt(p * (1 - p) / 100 * 150 / 249), rel=0.15)
    from tasks.core.errors import ConfigError

    mlp = run_task("classifier.train", {"out": "runs/q1-mlp/r/train-b64", "data": data.prefix,
                                        "epochs": 1, "device": "cpu"}, store)
    with pytest.raises(ConfigError, match="no dev split"):
        split_spread(store, mlp.prefix)


def test_compare_table_shows_intervals_and_seeds_of_repeated_runs():
    from tasks.reporting.compare import Cell, Comparer, _cell_table

    class Two(Comparer):
        primary, secondary = "test/accuracy", ()

    a = {"b64": Cell("b64", [{"test/accuracy": v} for v in (0.90, 0.91, 0.92)])}
    b = {"b64": Cell("b64", [{"test/accuracy": v} for v in (0.80, 0.81, 0.82)])}
    table, data = _cell_table(Two(), a, b)
    assert table.columns[5:10] == ["A 95 % interval", "B 95 % interval", "A per seed",
                                   "B per seed", "B's mean"]
    row = table.rows[0]
    assert row[:5] == ["b64", "test/accuracy (primary)", "0.9100 ± 0.0100 (3)",
                       "0.8100 ± 0.0100 (3)", "-0.1000"]
    assert row[5:10] == ["[0.8852, 0.9348]", "[0.7852, 0.8348]", "0.9000, 0.9100, 0.9200",
                         "0.8000, 0.8100, 0.8200", "below A's interval"]
    assert data["b64"]["test/accuracy"]["b_in_a"] == "below"
    one = {"b64": Cell("b64", [{"test/accuracy": 0.9}])}
    table, _ = _cell_table(Two(), one, {"b64": Cell("b64", [{"test/accuracy": 0.8}])})
    assert table.columns == ["cell", "metric", "A", "B", "B - A"]
    table, _ = _cell_table(Two(), one, b)  # one side repeated: A has no interval
    assert table.rows[0][5] == "one run: no interval" and table.rows[0][9] == "—"
