"""``python -m tasks``: the entrypoint containers and subprocess launches use."""

from __future__ import annotations

import json
import subprocess
import sys

from tasks.core.store import open_store


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tasks", *args], capture_output=True,
                          text=True, input=stdin, timeout=300)


def test_cli_runs_a_task_and_prints_manifest(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"source": "generate", "n_train": 30, "n_test": 10}))
    res = run_cli("fashion-mnist.fetch", "--config", str(cfg), "--store", f"file://{tmp_path}/s")
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert manifest["task"] == "fashion-mnist.fetch"
    assert open_store(f"file://{tmp_path}/s").exists(manifest["prefix"] + "/manifest.json")


def test_cli_bad_config_exits_nonzero_naming_field(tmp_path):
    res = run_cli("classifier.train", "--config-json",
                  json.dumps({"out": "r", "data": "d", "activation": "swish"}),
                  "--store", f"file://{tmp_path}/s")
    assert res.returncode == 2
    assert "activation" in res.stderr and "'relu', 'tanh' or 'sigmoid'" in res.stderr
    assert not (tmp_path / "s").exists()


def test_cli_unknown_task_and_bad_json(tmp_path):
    res = run_cli("nope.task", "--config-json", "{}")
    assert res.returncode == 2 and "unknown task 'nope.task'" in res.stderr
    res = run_cli("fashion-mnist.fetch", "--config-json", "{not json")
    assert res.returncode == 2 and "not valid JSON" in res.stderr
    res = run_cli("fashion-mnist.fetch", "--config", str(tmp_path / "missing.json"))
    assert res.returncode == 2 and "cannot read config file" in res.stderr
