"""Q4 training: configs, weight resolution, and resume/extend from the stored checkpoint."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tasks.core.errors import ConfigError, DataError
from tasks.core.files import cache_dir
from tasks.core.runtime import find_manifest
from tasks.core.store import open_store
from tasks.plans import resolve_config
from tasks.q4.data import YoloDataConfig, fetch
from tasks.q4.yolo import YoloTrainConfig, model_label, reference_key, resolve_weights, weights_name
from tasks.registry import run_task
from tests.q4_support import attempts, install_child_guard

ROOT = Path(__file__).resolve().parent.parent
TINY = {"model": "yolov5n.yaml", "imgsz": 64, "batch": 8, "nbs": 8, "optimizer": "AdamW",
        "lr0": 0.003, "warmup_epochs": 0.0, "mosaic": 0.0, "close_mosaic": 0, "device": "cpu",
        "workers": 0, "plots": False, "checkpoint_every": 1}




@pytest.fixture
def child_net_guard(tmp_path, monkeypatch) -> Path:
    return install_child_guard(tmp_path, monkeypatch)


# ---------------------------------------------------------------- configs

def test_profiles_compose():
    smoke = resolve_config("q4-yolo", "smoke")
    assert smoke.data.source == "generate" and smoke.device == "cpu"
    assert all(m.endswith(".yaml") for m in smoke.models)  # smoke trains from yaml
    full = resolve_config("q4-yolo", "full")
    assert full.models == ["yolov5s.pt", "yolov5x.pt"]
    assert (full.epochs, full.imgsz) == (100, 416)
    assert full.data.location == "store:uploads/q4-yolo/roboflow-export.zip"
    assert resolve_config("q4-yolo", "full", {"data": {"location": "/x.zip"}}).data.location \
        == "/x.zip"
    with pytest.raises(ConfigError, match="data.location is required"):
        resolve_config("q4-yolo", "full", {"data": {"location": ""}})
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        resolve_config("q4-yolo", "smoke", {"epoch": 3})
    with pytest.raises(ConfigError, match="models.*at most once"):
        resolve_config("q4-yolo", "smoke", {"models": ["yolov5n.yaml", "yolov5n.yaml"]})


def test_train_config_rejects_managed_ultralytics_args():
    with pytest.raises(Exception, match="train_args may not set data, resume"):
        YoloTrainConfig(out="x", data="d", train_args={"data": "y", "resume": True})
    assert YoloTrainConfig(out="x", data="d", train_args={"hsv_h": 0.0}).train_args == {
        "hsv_h": 0.0}


def test_model_names():
    assert weights_name("yolov5s") == "yolov5su.pt"
    assert weights_name("yolov5x.pt") == "yolov5xu.pt"
    assert weights_name("yolov5su.pt") == "yolov5su.pt"
    assert weights_name("yolov8n.pt") == "yolov8n.pt"
    assert model_label("yolov5s.pt") == "yolov5s"
    assert model_label("yolov5n.yaml") == "yolov5n (scratch)"
    assert reference_key("yolov5xu.pt") == "yolov5x" and reference_key("yolov8n.pt") is None


def test_cli_full_without_export_exits_2_before_anything(tmp_path):
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "q4-yolo", "--profile",
                          "full", "--set", "data.location=", "--store", f"file://{tmp_path}/s"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2, res.stderr
    assert "data.location is required" in res.stderr
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- weights

def _fake_weights(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:  # torch.save's container is a zip
        zf.writestr("archive/data.pkl", os.urandom(150_000))
    return path


def test_weights_resolution_order(tmp_path, monkeypatch):
    """Q4 uses the one resolver (tasks.inputs.weights): its mirror, a store prefix, the
    cache; an explicit mirror that lacks the file is an error, never a fallback."""
    monkeypatch.setattr("tasks.inputs.download.time.sleep", lambda s: None)
    st = open_store(f"file://{tmp_path / 'store'}")
    log = __import__("logging").getLogger("test")
    mirror = tmp_path / "mirror"
    _fake_weights(mirror / "yolov5su.pt")
    path, where = resolve_weights("yolov5s.pt", str(mirror), st, log)
    assert path == mirror / "yolov5su.pt" and where == f"mirror-folder:{mirror / 'yolov5su.pt'}"
    st.put_file("weights/yolov5su.pt", mirror / "yolov5su.pt")
    path, where = resolve_weights("yolov5s.pt", "store:weights", st, log)
    assert where == f"mirror-store:{st.uri}/weights/yolov5su.pt" and path.read_bytes()[:2] == b"PK"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not at the location given by weights_mirror="):
        resolve_weights("yolov5x.pt", str(tmp_path / "empty"), st, log)
    _fake_weights(cache_dir("weights/ultralytics") / "yolov5xu.pt")
    path, where = resolve_weights("yolov5x.pt", None, st, log)
    assert where.startswith("cache:")
    # nothing in the mirror index or the cache: the download is tried, refused by the test
    # network guard, and the error says what was tried and how to fix it
    with pytest.raises(DataError) as err:
        resolve_weights("yolov5m.pt", None, st, log)
    msg = str(err.value)
    assert "yolov5mu.pt" in msg and "mirror index" in msg and "cache" in msg
    assert "download from https://github.com/ultralytics/assets" in msg
    assert "never falls back to random weights" in msg
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(DataError, match="VF_OFFLINE"):
        resolve_weights("yolov5l.pt", None, st, log)


# ---------------------------------------------------------------- training

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple[str, str]:
    uri = f"file://{tmp_path_factory.mktemp('q4train') / 'store'}"
    m = fetch(YoloDataConfig(source="generate", n_train=24, n_valid=8, image_size=64,
                             max_objects=3, seed=2), open_store(uri))
    return uri, m.prefix


def test_pretrained_model_without_weights_fails_clearly(tiny_data, monkeypatch):
    uri, data = tiny_data
    monkeypatch.setenv("VF_OFFLINE", "1")
    cfg = {**TINY, "model": "yolov5s.pt", "out": "runs/t/pre", "data": data, "epochs": 1}
    with pytest.raises(DataError, match="pretrained weights ultralytics yolov5su.pt .* not "
                                         "available"):
        run_task("yolo.train", cfg, uri)
    assert find_manifest(open_store(uri), "runs/t/pre") is None


def test_child_guard_refuses_network(child_net_guard):
    res = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection("
                          "('10.9.9.9', 80), timeout=1)"], capture_output=True, text=True)
    assert res.returncode != 0 and "test network guard (child)" in res.stderr
    assert attempts(child_net_guard) == ["connect 10.9.9.9"]


def _wait_for_checkpoint(st, prefix: str, proc, errfile: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if st.exists(f"{prefix}/last.pt") and st.exists(f"{prefix}/train_state.json"):
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before its first checkpoint:\n"
                        f"{errfile.read_text()[-3000:]}")
        time.sleep(0.05)
    pytest.fail("no checkpoint within the timeout")


def test_killed_training_resumes_and_more_epochs_extend(tiny_data, tmp_path, child_net_guard):
    """Kill the training process after its first checkpoint; the rerun continues the epoch
    count from the stored last.pt; a rerun with more epochs extends the finished run."""
    uri, data = tiny_data
    st = open_store(uri)
    out = "runs/t/train"
    cfg = {**TINY, "out": out, "data": data, "epochs": 5}
    errfile = tmp_path / "task.log"
    with open(errfile, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks", "yolo.train", "--config-json", json.dumps(cfg),
             "--store", uri], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT,
            env={**os.environ, "VF_OFFLINE": "1"}, start_new_session=True)
        try:
            _wait_for_checkpoint(st, out, proc, errfile)
            os.killpg(proc.pid, signal.SIGKILL)  # the task and its worker: a crash
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert find_manifest(st, out) is None  # a killed run has no manifest
    stored_epoch = st.get_json(f"{out}/train_state.json")["epoch"]
    assert 1 <= stored_epoch < 5

    m = run_task("yolo.train", cfg, uri)
    start = m.metrics["session/start_epoch"]
    assert start >= 1 and start in (stored_epoch, stored_epoch - 1)  # never from 0
    assert m.metrics["resumed"] is True
    assert m.metrics["session/trained_epochs"] == 5 - start
    assert m.metrics["epochs"] == 5
    assert [h["epoch"] for h in m.model_extra["history"]] == [1, 2, 3, 4, 5]
    sessions = m.model_extra["sessions"]
    assert len(sessions) == 2 and sessions[1]["start_epoch"] == start
    assert sessions[0]["end_epoch"] == start
    hist = m.model_extra["history"]
    assert all(math.isfinite(h["train/box_loss"]) for h in hist)
    # it learns: validation classification loss falls (a detector's training losses first
    # rise from ~0 as the assigner starts matching anchors to objects, so they prove little)
    assert hist[-1]["val/cls_loss"] < hist[0]["val/cls_loss"]
    assert m.metrics["train/time_s"] > 0
    assert m.model_extra["resumed_from"] == st.url(f"{out}/last.pt")
    assert m.model_extra["weights_from"].startswith("none (from yaml")
    for name in ("last", "best", "results", "state"):
        assert st.exists(m.output_key(name))

    # Against an uninterrupted run of the same config (which reruns bit for bit): the
    # epochs before the crash are identical, the rest are close but not equal, because
    # ultralytics' last.pt holds the EMA weights in fp16 and no training weights or RNG
    # states, so a resume continues from slightly different weights (docs/reliability.md).
    ref = run_task("yolo.train", {**cfg, "out": "runs/t/reference"}, uri)
    ref_hist = ref.model_extra["history"]
    assert len(ref_hist) == len(hist) == 5
    assert hist[:start] == ref_hist[:start]
    for key in ("val/box_loss", "val/cls_loss", "val/dfl_loss"):
        assert m.metrics[key] == pytest.approx(ref.metrics[key], rel=0.15), key
    assert m.metrics["val/mAP50-95"] == pytest.approx(ref.metrics["val/mAP50-95"], abs=0.05)

    # the same config again: the finished run is reused, nothing trains
    assert run_task("yolo.train", cfg, uri).finished_at == m.finished_at
    # more epochs: extended from the stored checkpoint (ultralytics' resume cannot do this)
    m2 = run_task("yolo.train", {**cfg, "epochs": 6}, uri)
    assert m2.metrics["session/start_epoch"] == 5
    assert m2.metrics["session/trained_epochs"] == 1 and m2.metrics["epochs"] == 6
    assert [h["epoch"] for h in m2.model_extra["history"]] == [1, 2, 3, 4, 5, 6]
    assert len(m2.model_extra["sessions"]) == 3
    with pytest.raises(ConfigError, match="cannot shrink"):
        run_task("yolo.train", {**cfg, "epochs": 4}, uri)
    with pytest.raises(ConfigError, match="lr0 differ"):
        run_task("yolo.train", {**cfg, "epochs": 6, "lr0": 0.01}, uri)
    assert attempts(child_net_guard) == []
