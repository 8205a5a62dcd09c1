"""The store's key layout (tasks.core.layout): what a flow run writes is where every reader
looks for it."""

from __future__ import annotations

from tasks.core import layout


def test_keys_of_a_run_and_its_reports():
    assert layout.run_prefix("q1-mlp", "R1") == "runs/q1-mlp/R1"
    assert layout.step_prefix("q1-mlp", "R1", "train-b64") == "runs/q1-mlp/R1/train-b64"
    assert layout.flow_manifest_key("q1-mlp", "R1") == "runs/q1-mlp/R1/manifest.json"
    assert layout.latest_key("q1-mlp") == "runs/q1-mlp/latest.json"
    assert layout.report_prefix("q2-transfer", "R1") == "reports/q2-transfer/R1"
    assert layout.final_report_prefix("R1") == "reports/final/R1"
    assert layout.compare_prefix("q1-cnn", "A", "B") == "reports/compare/q1-cnn/A..B"
    assert layout.trend_prefix("q1-cnn", "full") == "reports/compare/q1-cnn/trend-full"


def test_flow_manifests_and_run_ids_from_a_listing():
    keys = ["runs/q1-mlp/latest.json", "runs/q1-mlp/R1/manifest.json",
            "runs/q1-mlp/R1/train-x/manifest.json", "runs/q1-mlp/R2/train-x/last.pt",
            "runs/q1-mlpx/R3/manifest.json"]
    assert [k for k in keys if layout.is_flow_manifest(k, "q1-mlp")] == [
        "runs/q1-mlp/R1/manifest.json"]
    assert [k for k in keys if layout.is_flow_manifest(k)] == [
        "runs/q1-mlp/R1/manifest.json", "runs/q1-mlpx/R3/manifest.json"]
    # a run with step outputs only (unfinished) still has an id; latest.json is not a run
    assert layout.run_ids(keys, "q1-mlp") == ["R1", "R2"]


def test_every_reader_and_writer_goes_through_the_layout():
    """No key of runs or reports spelled out by hand outside tasks/core/layout.py."""
    import re
    from pathlib import Path

    root = Path(layout.__file__).resolve().parents[2]
    spelled = re.compile(r"""join\(\s*["'](runs|reports)["']|["']latest\.json["']|"""
                         r"""f["'](runs|reports)/\{""")
    found = [f"{p.relative_to(root)}:{n}: {line.strip()}"
             for pkg in ("tasks", "flows") for p in sorted((root / pkg).rglob("*.py"))
             if p.name != "layout.py"
             for n, line in enumerate(p.read_text().splitlines(), 1) if spelled.search(line)]
    assert not found, "build these keys with tasks.core.layout:\n" + "\n".join(found)
