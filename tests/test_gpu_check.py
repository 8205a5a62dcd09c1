"""bench/gpu_check.sh: every step's command is valid (dry run, both modes), it refuses to run
without a GPU, the budget guard skips, and a --cpu rehearsal of a few steps prints images/s
and GPU utilisation (from a stand-in nvidia-smi)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.config import parse_sets
from tasks.plans import resolve_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["smoke-q1-mlp", "smoke-q1-cnn", "smoke-q2", "smoke-q3", "smoke-q4", "full-q1-mlp",
         "full-q1-cnn", "yolo416", "q1-epoch", "q1-options", "q1-packing", "q1-ray-packing"]

FAKE_SMI = """#!/bin/sh
case "$*" in
  *-lms*) while true; do echo "40, 1000"; echo "60, 2000"; sleep 0.2; done ;;
  *) echo "0, Stand-in GPU, 81559 MiB, 550.00" ;;
esac
"""


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60):
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    if "GPU_CHECK_ONLY" not in (env or {}):
        full_env.pop("GPU_CHECK_ONLY", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


def dry_steps(mode_args: list[str]) -> dict[str, list[str]]:
    out = run([*mode_args, "--dry-run"])
    assert out.returncode == 0, out.stderr
    steps = {}
    for line in out.stdout.splitlines():
        m = re.match(r"STEP (\S+) \(time-out (\d+)s\): (.*)", line)
        if m:
            steps[m.group(1)] = shlex.split(m.group(3))
    return steps


def flow_config(argv: list[str]):
    """The flow config a step's command line resolves to (None for other commands)."""
    if "--_flow" in argv:
        i = argv.index("--_flow")
        flow, rest = argv[i + 2], argv[argv.index("--", i) + 1:]
    elif "flows.cli" in argv:
        i = argv.index("run")
        flow, rest = argv[i + 1], argv[i + 2:]
    elif "bench.q1_packing" in argv or "bench.fanout" in argv:
        flow, rest = argv[argv.index("--flow") + 1], argv
    else:
        return None
    profile = rest[rest.index("--profile") + 1]
    sets = [rest[j + 1] for j, a in enumerate(rest) if a == "--set"]
    return resolve_config(flow, profile, parse_sets(sets))


@pytest.mark.parametrize("mode", [[], ["--cpu"]], ids=["gpu", "cpu"])
def test_dry_run_lists_every_step_with_valid_configs(mode):
    steps = dry_steps(mode)
    assert list(steps) == STEPS
    device = "cpu" if mode else "cuda"
    for name, argv in steps.items():
        cfg = flow_config(argv)
        if cfg is None:
            assert {"bench.q1_options", "bench.q1_epoch"} & set(argv), name
            assert argv[argv.index("--device") + 1] == device
            continue
        expected = ("cpu" if mode else "0") if name in ("smoke-q4", "yolo416") else device
        assert cfg.device == expected, name
        if name.startswith("full-") or name in ("q1-packing", "q1-ray-packing"):
            assert cfg.data.source == "generate" and cfg.epochs == 1 and cfg.repeats == 1
            assert cfg.data.n_train == (300 if mode else 60000)
    ray = steps["q1-ray-packing"]  # four cells per GPU on Ray vs one at a time
    assert ray[ray.index("--gpu-share") + 1] == ("0" if mode else "0.25")
    assert ray[ray.index("--runners") + 1] == "seq,ray"
    epoch = steps["q1-epoch"]  # the gpu run measures every case of the seed (the default)
    assert ("--cases" in epoch) == bool(mode) and "--model" not in epoch
    yolo = flow_config(steps["yolo416"])
    assert yolo.models == ["yolov5s.yaml"] and yolo.epochs == 1
    assert (yolo.imgsz, yolo.data.image_size) == ((64, 64) if mode else (416, 416))


def test_only_selects_steps_by_prefix():
    out = run(["--dry-run"], env={"GPU_CHECK_ONLY": "smoke,yolo"})
    names = re.findall(r"^STEP (\S+)", out.stdout, re.M)
    assert names == ["smoke-q1-mlp", "smoke-q1-cnn", "smoke-q2", "smoke-q3", "smoke-q4",
                     "yolo416"]


def test_refuses_to_run_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = run([], env={"GPU_CHECK_DIR": str(tmp_path), "GPU_CHECK_ONLY": "smoke-q1-mlp"})
    assert out.returncode == 2
    assert "no CUDA device visible" in out.stderr and "--cpu" in out.stderr


def test_budget_guard_skips_steps(tmp_path):
    # an API URL given: no server is started; the step is skipped before it would be used
    out = run(["--cpu"], env={"GPU_CHECK_DIR": str(tmp_path), "GPU_CHECK_BUDGET_S": "5",
                              "GPU_CHECK_ONLY": "smoke-q1-mlp",
                              "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert out.returncode == 0, out.stdout + out.stderr
    # (negative when the torch check alone outlasts the 5 s, on a loaded machine)
    assert re.search(r"STEP smoke-q1-mlp SKIPPED: -?\d+s of the 5s budget left", out.stdout)
    assert "TOTAL" in out.stdout and "0 ok, 0 failed, 1 skipped" in out.stdout


@pytest.mark.slow
def test_cpu_rehearsal_prints_images_per_second_and_gpu_use(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    env = {"GPU_CHECK_DIR": str(tmp_path / "work"), "PATH": f"{bindir}:{os.environ['PATH']}",
           "GPU_CHECK_ONLY": "smoke-q1-mlp,yolo416,q1-epoch,q1-options"}
    out = run(["--cpu"], env=env, timeout=600)
    text = out.stdout
    assert out.returncode == 0, text + out.stderr
    assert "GPU 0, Stand-in GPU" in text and "Prefect server for every step" in text
    for name in ("smoke-q1-mlp", "yolo416", "q1-epoch", "q1-options"):
        assert re.search(rf"STEP {name} ok in [\d.]+s \| GPU util mean 50% max 60% "
                         r"\(\d+ samples\), memory max 2000 MiB", text), text
    assert re.search(r"IMAGES q1-mlp b64-relu-cross_entropy: 300 images \(1 epochs\) in "
                     r"[\d.]+ s = [\d,]+ images/s \(device cpu\)", text)
    assert re.search(r"THROUGHPUT q4-yolo: 1 trainings, 16 images in [\d.]+ s", text)
    assert re.search(r"RESULT mlp bf16=[\d.]+", text)
    for case in ("mlp b32", "cnn_pool_bn b32"):
        assert re.search(rf"RESULT {case} ours/pure = [\d.]+ \(target <= 1.05\) "
                         r"ours/plain = [\d.]+", text), text
    assert re.search(r"TOTAL \d+s \(budget 1200s\): 4 ok, 0 failed, 0 skipped", text)
