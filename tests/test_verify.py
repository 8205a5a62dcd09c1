"""No stale result after a code change, proven end to end with ``visionflows verify``.

Each test edits a *copy* of the project (the suite's own code is never touched) and runs
the real CLI on it in a child process (``PYTHONPATH`` = the copy), against the session's
Prefect server (``shared_prefect``) and a ``file://`` store:

- q1-mlp: a run is verified identical; the optimizer's learning rate is changed; verify
  now says DIFFERENT and names the file; resuming the same run id recomputes (not the old
  results); a fresh run id hits the cache of the new results only;
- under the subprocess launcher too (the task runs in a child of the child);
- q4-yolo: an edit to the ultralytics worker (started as ``python -m tasks.q4.worker``)
  makes the training and evaluation steps recompute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tasks

# One q1-mlp cell (the three sweeps collapse onto it), tiny data, two epochs.
ONE_CELL = ["--set", "batch_sizes=[64]", "--set", 'activations=["relu"]',
            "--set", 'losses=["cross_entropy"]', "--set", "data.n_train=400",
            "--set", "data.n_test=200", "--set", "epochs=2"]


@pytest.fixture()
def project(tmp_path):
    """A copy of the code (tasks, flows, reports) to edit."""
    root = tmp_path / "proj"
    src = Path(tasks.__file__).resolve().parent.parent
    for pkg in ("tasks", "flows", "reports"):
        shutil.copytree(src / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def cli(project: Path, *args: str, check: bool = True, timeout: float = 600
        ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project), "VF_RETRY_DELAY_S": "0"}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"visionflows {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_accuracies(store: Path, flow: str, run_id: str) -> dict[str, float]:
    m = json.loads((store / "runs" / flow / run_id / "manifest.json").read_text())
    return {row["experiment"]: row["test/accuracy"] for row in m["metrics"]}


test_accuracies.__test__ = False  # a helper, not a test


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("launcher", ["local", "subprocess"])
def test_a_code_change_is_never_answered_with_old_results(launcher, project, tmp_path,
                                                          shared_prefect):
    store = tmp_path / "store"
    uri = f"file://{store}"
    common = ["--store", uri, "--launcher", launcher, "--no-progress"]
    cli(project, "run", "q1-mlp", "--run-id", "A", *common, *ONE_CELL)
    before = test_accuracies(store, "q1-mlp", "A")

    same = cli(project, "verify", "q1-mlp", "A", "--store", uri, "--launcher", launcher)
    assert re.search(r"train-b64-relu-cross_entropy\s+classifier.train\s+identical",
                     same.stdout), same.stdout
    assert "DIFFERENT" not in same.stdout and same.returncode == 0
    assert not (store / "verify").exists() or not any((store / "verify").rglob("*.json"))

    edit(project / "tasks" / "q1" / "train.py", "lr=cfg.learning_rate,",
         "lr=cfg.learning_rate * 30,")
    changed = cli(project, "verify", "q1-mlp", "A", "--store", uri, "--launcher", launcher,
                  check=False)
    assert changed.returncode == 1, changed.stdout + changed.stderr
    line = next(x for x in changed.stdout.splitlines() if x.startswith("train-b64"))
    assert "DIFFERENT" in line and "test/accuracy" in line
    assert "tasks/q1/train.py changed" in line
    assert not any((store / "verify").rglob("*.json"))  # the scratch prefix is gone

    resumed = cli(project, "run", "q1-mlp", "--run-id", "A", *common, *ONE_CELL)
    out = resumed.stdout + resumed.stderr
    assert "cache hit" not in out
    assert "tasks/q1/train.py changed" in out
    after = test_accuracies(store, "q1-mlp", "A")
    assert after != before  # the new code's answers, not the old ones
    fresh = cli(project, "run", "q1-mlp", "--run-id", "B", *common, *ONE_CELL)
    assert (fresh.stdout + fresh.stderr).count("cache hit for") == 2  # train + evaluate
    assert test_accuracies(store, "q1-mlp", "B") == after
    ok = cli(project, "verify", "q1-mlp", "B", "--store", uri, "--launcher", launcher)
    assert ok.returncode == 0 and "DIFFERENT" not in ok.stdout


def test_verify_names_bad_input(project, tmp_path, shared_prefect):
    store = tmp_path / "store"
    uri = f"file://{store}"
    none = cli(project, "verify", "q1-mlp", "--store", uri, check=False)
    assert none.returncode == 2 and "nothing to verify" in none.stderr
    cli(project, "run", "q1-mlp", "--run-id", "A", "--store", uri, "--no-progress", *ONE_CELL)
    typo = cli(project, "verify", "q1-mlp", "a", "--store", uri, check=False)
    assert typo.returncode == 2 and "no finished q1-mlp run 'a'" in typo.stderr
    steps = cli(project, "verify", "q1-mlp", "A", "--store", uri, "--steps", "nope*",
                check=False)
    assert steps.returncode == 2 and "matches none" in steps.stderr
    assert "train-b64-relu-cross_entropy" in steps.stderr
    flow = cli(project, "verify", "q1-mpl", "--store", uri, check=False)
    assert flow.returncode == 2 and "q1-mlp" in flow.stderr
    only = cli(project, "verify", "q1-mlp", "latest", "--store", uri, "--steps", "eval-*")
    assert "1 of 1 steps agree" in only.stdout


@pytest.mark.slow
def test_an_edit_to_the_yolo_worker_recomputes_training(project, tmp_path, shared_prefect):
    store = tmp_path / "store"
    uri = f"file://{store}"
    tiny = ["--set", "data.n_train=16", "--set", "data.n_valid=8", "--set",
            "data.image_size=64", "--set", "epochs=1", "--set", "imgsz=64", "--set",
            "samples=1", "--set", 'models=["yolov5n.yaml"]']
    common = ["--store", uri, "--no-progress", *tiny]
    cli(project, "run", "q4-yolo", "--run-id", "A", *common)
    again = cli(project, "run", "q4-yolo", "--run-id", "B", *common)
    assert (again.stdout + again.stderr).count("cache hit") == 2  # train + evaluate
    edit(project / "tasks" / "q4" / "worker.py",
         "p, r, map50, map5095 = (float(x) for x in m.box.mean_results())",
         "r, p, map50, map5095 = (float(x) for x in m.box.mean_results())")
    edited = cli(project, "run", "q4-yolo", "--run-id", "C", *common)
    out = edited.stdout + edited.stderr
    assert "cache hit" not in out
    assert "tasks/q4/worker.py changed" in out


# ---------------------------------------------------------------- the comparison itself

def _manifest(metrics: dict, history: list | None = None, digests: dict | None = None,
              outputs: dict | None = None):
    from tasks.core.runtime import Manifest

    return Manifest(task="classifier.train", prefix="p", store="file:///x", config={},
                    config_hash="c", metrics=metrics, started_at="s", finished_at="f",
                    duration_s=1.0, digests=digests or {}, outputs=outputs or {},
                    **({"history": history} if history is not None else {}))


def test_the_comparison_sets_measurements_aside_and_names_each_difference(tmp_path):
    from flows.verify import StepCheck, compare_manifests
    from tasks.core.store import open_store

    a = _manifest({"test/accuracy": 0.5, "train/time_s": 3.0, "threads": 2},
                  [{"epoch": 1, "train/loss": 1.0, "train/time_s": 1.0}])
    same = _manifest({"test/accuracy": 0.5, "train/time_s": 9.0, "threads": 1},
                     [{"epoch": 1, "train/loss": 1.0, "train/time_s": 2.0}])
    check = compare_manifests(a, same, 0.0, StepCheck("s", "t"))
    assert check.verdict == "identical" and check.differences == []
    assert "metric:train/time_s" in check.not_compared and "metric:threads" in check.not_compared
    near = _manifest({"test/accuracy": 0.50001}, [{"epoch": 1, "train/loss": 1.0}])
    check = compare_manifests(a, near, 1e-4, StepCheck("s", "t"))
    assert check.verdict == "within tolerance" and check.max_diff == pytest.approx(1e-5)
    check = compare_manifests(a, near, 0.0, StepCheck("s", "t"))
    assert check.verdict == "DIFFERENT"
    assert check.differences == ["metric test/accuracy: 0.5 -> 0.50001 (+1e-05)"]
    short = _manifest({"test/accuracy": 0.5}, [])
    check = compare_manifests(a, short, 0.0, StepCheck("s", "t"))
    assert check.differences == ["history: 1 rows -> 0"]

    # outputs: JSON compared by content (timings aside), binaries by sha256
    st = open_store(f"file://{tmp_path}/s")
    st.put_json("a/pred.json", {"pred": [1, 2], "history": [{"time_s": 1.0}]})
    st.put_json("b/pred.json", {"pred": [1, 2], "history": [{"time_s": 5.0}]})
    st.put_json("c/pred.json", {"pred": [1, 3], "history": [{"time_s": 5.0}]})
    dig = {"pred": {"sha256": "1", "size": 1}, "model": {"sha256": "m", "size": 1}}
    old = _manifest({}, digests=dig, outputs={"pred": "a/pred.json", "model": "a/m.bin"})
    timing_only = _manifest({}, digests={**dig, "pred": {"sha256": "2", "size": 1}},
                            outputs={"pred": "b/pred.json", "model": "b/m.bin"})
    check = compare_manifests(old, timing_only, 0.0, StepCheck("s", "t"), stores=(st, st))
    assert check.verdict == "identical" and check.outputs_differ == ["pred"]
    assert "in timings only: pred" in check.line()
    changed = _manifest({}, digests={"pred": {"sha256": "3", "size": 1},
                                     "model": {"sha256": "x", "size": 1}},
                        outputs={"pred": "c/pred.json", "model": "c/m.bin"})
    check = compare_manifests(old, changed, 0.0, StepCheck("s", "t"), stores=(st, st))
    assert check.verdict == "DIFFERENT"
    assert "output pred v/pred[1]: 2 -> 3 (+1)" in check.differences
    assert any(d.startswith("output model: sha256 m") for d in check.differences)


def test_a_file_key_used_as_a_prefix_is_simply_missing(tmp_path):
    from tasks.core.errors import MissingKeyError
    from tasks.core.runtime import find_manifest
    from tasks.core.store import open_store

    st = open_store(f"file://{tmp_path}/s")
    st.put_bytes("runs/x/labels.npy", b"1")
    assert find_manifest(st, "runs/x/labels.npy") is None
    with pytest.raises(MissingKeyError):
        st.get_bytes("runs/x/labels.npy/manifest.json")


def test_the_recomputations_own_prefix_reads_as_the_stored_one(tmp_path):
    from flows.verify import StepCheck, compare_manifests
    from tasks.core.store import open_store

    st = open_store(f"file://{tmp_path}/s")
    st.put_json("runs/r/t/state.json", {"config": {"out": "runs/r/t"}, "started": 1.0})
    st.put_json("verify/x/t/state.json", {"config": {"out": "verify/x/t"}, "started": 9.0})
    dig = {"state": {"sha256": "1", "size": 1}}
    old = _manifest({"speed_ms/inference": 8.3}, digests=dig,
                    outputs={"state": "runs/r/t/state.json"})
    new = _manifest({"speed_ms/inference": 21.0}, digests={"state": {"sha256": "2", "size": 1}},
                    outputs={"state": "verify/x/t/state.json"})
    check = compare_manifests(old, new, 0.0, StepCheck("s", "t"), stores=(st, st),
                              rename=("verify/x/t", "runs/r/t"))
    assert check.verdict == "identical", check.differences
    unrenamed = compare_manifests(old, new, 0.0, StepCheck("s", "t"), stores=(st, st))
    assert unrenamed.verdict == "DIFFERENT"
