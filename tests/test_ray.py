"""Steps on a real Ray cluster (a head with two logical GPUs and a second node, on 127.0.0.1):
``visionflows run q1-mlp --task-runner ray --ray-address ray://...`` against the moto S3
server, with a Ray worker killed mid-training; GPU shares packing cells on one GPU; the
workers running this checkout's code; a cluster address that does not answer.

Marked ``ray``; they run only inside a network namespace with nothing but loopback (see
``tests/ray_support.py``; ``.ci/run`` runs them so) and skip elsewhere with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from tests.conftest import make_bucket
from tests.ray_support import (
    RayCluster,
    new_cluster_root,
    process_title,
    ray_marks,
)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = ray_marks()

# 2 batch sizes x 2 seeds = 4 cells of 3 epochs; one CPU and half a logical GPU each
CELLS = {"data": {"n_train": 2000, "n_test": 300}, "epochs": 3, "batch_sizes": [32, 64],
         "activations": ["relu"], "losses": ["cross_entropy"], "repeats": 2}
ONE_CPU = {"resources": {"train": {"cpus": 1, "memory": "1g"},
                         "evaluate": {"cpus": 1, "memory": "1g"},
                         "fetch": {"cpus": 1, "memory": "1g"},
                         "report": {"cpus": 1, "memory": "1g"}}}
RUN_ID = "ray-run-1"
KILLED_CELL = "b64-relu-cross_entropy"


def sets(overrides: dict, prefix: str = "") -> list[str]:
    """``--set`` arguments for a nested override dict (dotted keys, JSON values)."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += sets(value, f"{prefix}{key}.")
        else:
            out += ["--set", f"{prefix}{key}={json.dumps(value)}"]
    return out


def merged(*parts: dict) -> dict:
    from tasks.core.config import deep_merge

    out: dict = {}
    for p in parts:
        out = deep_merge(out, p)
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayCluster(new_cluster_root())
    saved = {k: os.environ.get(k) for k in cluster.auth_env}
    os.environ.update(cluster.auth_env)  # this process and the CLI runs are its clients
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _kill_when_training(s3, bucket: str, cell: str, deadline_s: float, out: dict) -> None:
    """Once the cell has stored a checkpoint (mid-training), SIGKILL the Ray worker running
    it (its process title is ``ray::train-<cell>``)."""
    key = f"vf/runs/q1-mlp/{RUN_ID}/train-{cell}/last.pt"
    title = f"ray::train-{cell}"
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and "pid" not in out:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0)
        if listed:
            for entry in os.scandir("/proc"):
                if entry.name.isdigit() and process_title(int(entry.name)) == title:
                    os.kill(int(entry.name), signal.SIGKILL)
                    out.update(pid=int(entry.name), at=time.time())
                    return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_run(ray_cluster, s3_endpoint, tmp_path_factory):
    """The CLI on the cluster (Ray Client address, its own temporary Prefect server), one
    cell's Ray worker killed mid-training; the same sweep locally, one thread, for reference."""
    overrides = merged(CELLS, ONE_CPU, {"resources": {"train": {"gpus": 0.5}}})
    bucket = make_bucket(s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    home = tmp_path_factory.mktemp("prefect-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT), VF_RETRY_DELAY_S="0")
    killed: dict = {}
    watcher = threading.Thread(target=_kill_when_training, daemon=True,
                               args=(s3, bucket, KILLED_CELL, 600, killed))
    watcher.start()
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "q1-mlp", "--task-runner", "ray",
         "--ray-address", ray_cluster.client_address, "--store", f"s3://{bucket}/vf",
         "--run-id", RUN_ID, *sets(overrides)],
        capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    seconds = time.monotonic() - start
    watcher.join(timeout=1)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    return {"bucket": bucket, "s3": s3, "out": res.stdout + res.stderr, "killed": killed,
            "overrides": overrides, "seconds": seconds}


def _manifest(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=f"vf/{key}")["Body"].read())


def _cells(run: dict) -> dict[str, dict]:
    flow = _manifest(run["s3"], run["bucket"], f"runs/q1-mlp/{RUN_ID}/manifest.json")
    return {cid: {"train": _manifest(run["s3"], run["bucket"], f"{p}/manifest.json"),
                  "eval": _manifest(run["s3"], run["bucket"],
                                    f"{flow['eval'][cid]}/manifest.json")}
            for cid, p in flow["train"].items()}


def test_cells_ran_in_ray_workers_on_the_cluster(ray_run, ray_cluster):
    cells = _cells(ray_run)
    assert len(cells) == 4
    for cid, m in cells.items():
        for step in ("train", "eval"):
            prov = m[step]["provenance"]
            assert prov["ray"] is not None, (cid, step)
            assert prov["ray"]["worker_pid"] == prov["pid"] != os.getpid()
            assert len(prov["ray"]["node_id"]) == 56  # Ray's hex node id
            assert prov["threads"] == 1  # the CPUs the step asked for
        assert m["train"]["provenance"]["ray"]["gpu_ids"] in (["0"], ["1"])  # half a GPU
    flow = _manifest(ray_run["s3"], ray_run["bucket"], f"runs/q1-mlp/{RUN_ID}/manifest.json")
    assert flow["task_runner"] == {"kind": "ray", "address": ray_cluster.client_address,
                                   "nodes": 2}
    # the workers reached the run's temporary Prefect server (PrefectHQ/prefect#18485)
    assert "Error logging to API" not in ray_run["out"]
    assert "Finished in state Completed()" in ray_run["out"]


def test_metrics_equal_a_local_run(ray_run, prefect_harness, s3_endpoint):
    import torch

    from flows.q1_mlp import q1_mlp

    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray step had (its one CPU)
    try:
        local = q1_mlp(profile="smoke", store=uri, overrides=CELLS)
    finally:
        torch.set_num_threads(threads)
    st_local = {cid: json.loads(boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1").get_object(
        Bucket=uri[5:].split("/")[0], Key=f"vf/{p}/manifest.json")["Body"].read())
        for cid, p in local["train"].items()}
    cells = _cells(ray_run)
    assert set(cells) == set(st_local)
    for cid, m in cells.items():
        ours, ref = m["train"]["metrics"], st_local[cid]["metrics"]
        for key in ("train/loss", "train/accuracy", "test/loss", "test/accuracy", "threads"):
            assert ours[key] == ref[key], (cid, key)  # bit for bit, the killed cell too
        assert [h["train/loss"] for h in m["train"]["history"]] == \
            [h["train/loss"] for h in st_local[cid]["history"]]


def test_a_killed_worker_is_retried_and_leaves_one_result(ray_run):
    killed = ray_run["killed"]
    assert "pid" in killed, "the watcher never found the training's Ray worker"
    s3, bucket = ray_run["s3"], ray_run["bucket"]
    prefix = f"vf/runs/q1-mlp/{RUN_ID}/train-{KILLED_CELL}/"
    keys = sorted(o["Key"][len(prefix):] for o in
                  s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    assert keys.count("manifest.json") == 1
    assert {"last.pt", "history.json"} <= set(keys)
    m = _cells(ray_run)[KILLED_CELL]["train"]
    assert m["provenance"]["ray"]["worker_pid"] != killed["pid"]  # the retry ran elsewhere
    assert m["metrics"]["epochs"] == 3 and len(m["history"]) == 3
    # the retry resumed it from the stored checkpoint
    assert f"resuming runs/q1-mlp/{RUN_ID}/train-{KILLED_CELL} from epoch" in ray_run["out"]


def test_half_gpu_cells_share_a_gpu_at_once(ray_run):
    by_gpu: dict[str, list[tuple[float, float]]] = {}
    for cid, m in _cells(ray_run).items():
        if cid == KILLED_CELL:
            continue  # its second attempt started late
        gpu = m["train"]["provenance"]["ray"]["gpu_ids"][0]
        by_gpu.setdefault(gpu, []).append(_interval(m["train"]))
    assert max(_most_at_once(v) for v in by_gpu.values()) == 2


def test_secrets_stay_out_of_output_and_store(ray_run):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert secret not in ray_run["out"]
    s3, bucket = ray_run["s3"], ray_run["bucket"]
    for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]:
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        assert secret.encode() not in body, obj["Key"]


def _interval(manifest: dict) -> tuple[float, float]:
    from datetime import datetime

    return (datetime.fromisoformat(manifest["started_at"]).timestamp(),
            datetime.fromisoformat(manifest["finished_at"]).timestamp())


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_whole_gpu_cells_never_share_one_and_workers_run_this_code(
        ray_cluster, prefect_harness, s3_endpoint, tmp_path, monkeypatch):
    import ray

    from flows.q1_mlp import q1_mlp
    from flows.runners import ray_session, task_runner

    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    # 3 cells asking a whole GPU each on 2 GPUs: one GPU must take two, one after the other
    small = merged(CELLS, ONE_CPU, {"data": {"n_train": 600}, "epochs": 1, "repeats": 1,
                                    "batch_sizes": [32, 64, 128],
                                    "resources": {"train": {"gpus": 1}}})
    # a driver elsewhere than the checkout (Ray adds a driver's folder to its workers' path)
    monkeypatch.chdir(tmp_path)
    with ray_session(ray_cluster.gcs_address) as session:  # the GCS address form
        @ray.remote(num_cpus=0)
        def code_here() -> tuple[str, str]:
            import flows.fanout

            path = Path(flows.fanout.__file__)
            return str(path), hashlib.sha256(path.read_bytes()).hexdigest()

        path, digest = ray.get(code_here.remote())
        result = q1_mlp.with_options(task_runner=task_runner("ray", 1, session))(
            profile="smoke", store=uri, overrides=small)
    # the workers import the code this checkout shipped (runtime_env py_modules)
    assert digest == hashlib.sha256((ROOT / "flows/fanout.py").read_bytes()).hexdigest()
    assert "runtime_resources" in path and not path.startswith(str(ROOT))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = uri[5:].split("/")[0]
    by_gpu: dict[str, list[tuple[float, float]]] = {}
    for p in result["train"].values():
        m = json.loads(s3.get_object(Bucket=bucket, Key=f"vf/{p}/manifest.json")["Body"].read())
        assert len(m["provenance"]["ray"]["gpu_ids"]) == 1
        by_gpu.setdefault(m["provenance"]["ray"]["gpu_ids"][0], []).append(_interval(m))
    assert sorted(len(v) for v in by_gpu.values()) == [1, 2]
    assert all(_most_at_once(v) == 1 for v in by_gpu.values()), by_gpu


def test_an_address_that_does_not_answer_fails_fast_and_writes_nothing(
        s3_endpoint, monkeypatch, capsys):
    from flows.cli import main

    bucket = make_bucket(s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    monkeypatch.setenv("VF_RAY_CONNECT_TIMEOUT_S", "8")
    with socket.socket() as silent, socket.socket() as closed:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts connections (the kernel does), never speaks
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        for case, sock in (("refused", closed), ("silent", silent)):
            address = f"ray://127.0.0.1:{sock.getsockname()[1]}"
            start = time.monotonic()
            code = main(["run", "q1-mlp", "--ray-address", address,
                         "--store", f"s3://{bucket}/vf"])
            took = time.monotonic() - start
            err = capsys.readouterr().err
            assert code == 2, (case, err[-3000:])
            assert f"the Ray cluster at {address} does not answer" in err, err[-2000:]
            assert "nothing ran" in err and took < 30, (case, took)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_shipped_code_leaves_out_bytecode_and_written_reports(tmp_path):
    """What Ray's own packager makes of a package under :func:`flows.runners.shipped_code`'s
    excludes (the workers' and a submitted job's code): its sources, without ``__pycache__``
    or the reports a run wrote into ``reports/out``."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    from flows.runners import shipped_code

    pkg = tmp_path / "reports"
    for rel in ("__init__.py", "templates/page.html", "__pycache__/x.cpython-311.pyc",
                "out/report.html", "out/q1/curves.png"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text("x")
    zipped = tmp_path / "pkg.zip"
    create_package(str(pkg), zipped, include_gitignore=True, include_parent_dir=True,
                   excludes=shipped_code()["excludes"])
    files = {n for n in zipfile.ZipFile(zipped).namelist() if not n.endswith("/")}
    assert files == {"reports/__init__.py", "reports/templates/page.html"}
