"""``visionflows submit`` (the Ray Jobs API) on real two-node Ray clusters with their
dashboard on 127.0.0.1, against the moto S3 server and a real local Prefect server:

- a q1-mlp smoke submission with the worker node SIGKILLed mid-sweep finishes with the same
  metrics as the local run, its manifests naming the job and the nodes, and no node removed
  the job's code to unpack it again (the two nodes share one folder, as on one machine);
- the head SIGKILLed: ``submit`` exits non-zero with one line; resubmitting the run id on a
  new cluster reuses every finished step;
- a cluster with Ray's token authentication: refused without the token, and with it a
  submission that ``--stop`` ends within 10 s, its flow run Cancelled; the token is never
  printed;
- a step no node holds is refused before anything runs.

Marked ``ray``; they run only in a loopback-only network namespace (tests/ray_support.py).
"""

from __future__ import annotations

import json
import os
import re
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
from tests.test_ray import CELLS, merged, sets

ROOT = Path(__file__).resolve().parent.parent
pytestmark = ray_marks()
# trainings take 2 CPUs: the head (4) holds two at once, the worker node (2) one
TWO_CPU = {"resources": {"train": {"cpus": 2, "memory": "1g", "gpus": 0},
                         "evaluate": {"cpus": 1, "memory": "1g", "gpus": 0},
                         "fetch": {"cpus": 1, "memory": "1g"},
                         "report": {"cpus": 1, "memory": "1g"}}}
SWEEP = merged(CELLS, TWO_CPU)
TOKEN = "vf-test-token-3b0c9e51d7a24f6e"


def _cluster(**kw) -> RayCluster:
    return RayCluster(new_cluster_root(), dashboard=True, **kw).start()


@pytest.fixture(scope="module")
def cluster():
    c = _cluster()
    try:
        yield c
    finally:
        c.stop()


def cli_env(prefect_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_API", "RAY_AUTH"))}
    env.update(PREFECT_API_URL=prefect_url, PYTHONPATH=str(ROOT), VF_RETRY_DELAY_S="0",
               PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def submit(url: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "submit", "--ray-address", url,
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT)


class Output:
    """A command's output, read by a thread as it comes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.text):
                return m
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared:\n{self.text[-5000:]}")

    def finish(self, timeout: float = 900) -> int:
        code = self.proc.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return code


def _manifest(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=f"vf/{key}")["Body"].read())


def _trains(s3, bucket: str, run_id: str) -> dict[str, dict]:
    flow = _manifest(s3, bucket, f"runs/q1-mlp/{run_id}/manifest.json")
    return {cid: _manifest(s3, bucket, f"{p}/manifest.json") for cid, p in flow["train"].items()}


def _train_on_node(cluster: RayCluster, which: int) -> str | None:
    """The cell of a training running on node ``which`` (its Ray worker's title), or None."""
    for pid in cluster.node_pids(which):
        title = process_title(pid)
        if title.startswith("ray::train-"):
            return title[len("ray::train-"):]
    return None


@pytest.fixture(scope="module")
def killed_node_run(cluster, prefect_harness, s3_endpoint):
    """q1-mlp submitted; once a training on the worker node has stored a checkpoint, that
    node (its raylet and every worker) is SIGKILLed."""
    bucket = make_bucket(s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    run_id = "submit-kill-node"
    out = Output(submit(cluster.dashboard_url, [
        "q1-mlp", "--store", f"s3://{bucket}/vf", "--run-id", run_id, *sets(SWEEP)],
        cli_env(prefect_harness)))
    job = out.wait_for(r"as Ray job (\S+)").group(1)
    start = time.time()
    killed: dict = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and out.proc.poll() is None:
        cell = _train_on_node(cluster, 1)
        if cell and s3.list_objects_v2(
                Bucket=bucket, Prefix=f"vf/runs/q1-mlp/{run_id}/train-{cell}/last.pt"
        ).get("KeyCount"):
            killed = {"cell": cell, "at": cluster.kill(1)}
            break
        time.sleep(0.1)
    code = out.finish()
    assert code == 0, out.text[-6000:]
    return {"bucket": bucket, "s3": s3, "out": out.text, "job": job, "run_id": run_id,
            "killed": killed, "submitted_at": start}


def test_submitted_run_names_the_job_and_nodes_and_survives_a_killed_node(killed_node_run,
                                                                          cluster):
    run = killed_node_run
    assert run["killed"], "no training ever ran on the worker node:\n" + run["out"][-3000:]
    s3, bucket = run["s3"], run["bucket"]
    flow = _manifest(s3, bucket, f"runs/q1-mlp/{run['run_id']}/manifest.json")
    trains = _trains(s3, bucket, run["run_id"])
    assert flow["task_runner"] == {"kind": "ray", "address": "auto", "nodes": 2,
                                   "job_id": run["job"]}, (
        [m["provenance"]["ray"] for m in trains.values()], run["out"][-4000:])
    assert len(trains) == 4
    head = {n["node_id"] for n in cluster.alive_nodes() if n["is_head_node"]}
    for m in trains.values():
        assert m["provenance"]["ray"]["job_id"] == run["job"]
        assert len(m["provenance"]["ray"]["node_id"]) == 56
    retried = trains[run["killed"]["cell"]]
    assert retried["provenance"]["ray"]["node_id"] in head  # the node left was the head
    assert len(retried["history"]) == 3
    assert f"resuming runs/q1-mlp/{run['run_id']}/train-{run['killed']['cell']}" in run["out"]
    assert f"Ray job {run['job']} succeeded" in run["out"]
    # the job's code reached both nodes and neither removed it to unpack it again (a
    # ``working_dir`` is: the driver lost modules it had yet to import, an ImportError)
    assert cluster.removed_packages() == []
    # Ray's task retries (max_retries from the step's retries) ran it again: Prefect's own
    # retry (inside the worker that died) never got the chance
    assert "Retry 1/1 will start" not in run["out"]
    from datetime import datetime

    restarted = datetime.fromisoformat(retried["started_at"]).timestamp()
    recovered = datetime.fromisoformat(retried["finished_at"]).timestamp()
    print(f"\nworker node killed at +{run['killed']['at'] - run['submitted_at']:.1f}s; its "
          f"training started again on the head {restarted - run['killed']['at']:.1f}s later "
          f"and finished {recovered - run['killed']['at']:.1f}s after the kill")


def test_submitted_metrics_equal_a_local_run(killed_node_run, prefect_harness, s3_endpoint):
    import torch

    from flows.q1_mlp import q1_mlp

    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # what each training had on Ray (its two CPUs)
    try:
        local = q1_mlp(profile="smoke", store=uri, overrides=CELLS)
    finally:
        torch.set_num_threads(threads)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    ref = {cid: json.loads(s3.get_object(Bucket=uri[5:].split("/")[0],
                                         Key=f"vf/{p}/manifest.json")["Body"].read())
           for cid, p in local["train"].items()}
    ours = _trains(killed_node_run["s3"], killed_node_run["bucket"], killed_node_run["run_id"])
    assert set(ours) == set(ref)
    for cid, m in ours.items():
        for key in ("train/loss", "test/loss", "test/accuracy", "threads"):
            assert m["metrics"][key] == ref[cid]["metrics"][key], (cid, key)


def test_head_killed_then_resubmitted_reuses_finished_steps(cluster, prefect_harness,
                                                            s3_endpoint):
    """The first cluster's head is killed mid-run; the same command, resubmitted to another
    cluster (the module's, as an operator's restarted one), reuses the stored steps."""
    bucket = make_bucket(s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    run_id = "submit-kill-head"
    args = ["q1-mlp", "--store", f"s3://{bucket}/vf", "--run-id", run_id,
            *sets(merged(SWEEP, {"repeats": 1}))]  # 2 cells
    first = _cluster()
    try:
        out = Output(submit(first.dashboard_url, args, cli_env(prefect_harness)))
        out.wait_for(r"as Ray job (\S+)")
        deadline = time.monotonic() + 600
        done: dict[str, bytes] = {}
        while time.monotonic() < deadline and not done and out.proc.poll() is None:
            for obj in s3.list_objects_v2(Bucket=bucket, Prefix=f"vf/runs/q1-mlp/{run_id}/train-"
                                          ).get("Contents", []):
                if obj["Key"].endswith("/manifest.json"):
                    done[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            time.sleep(0.2)
        assert done, out.text[-3000:]
        first.kill(0)
        code = out.finish(timeout=120)
    finally:
        first.stop()
    errors = [ln for ln in out.text.splitlines() if ln.startswith("error:")]
    assert code != 0 and len(errors) == 1, out.text[-3000:]
    assert errors[0].startswith(f"error: lost the Ray cluster at {first.dashboard_url}")
    assert f"resubmit with --run-id {run_id}" in errors[0]
    again = Output(submit(cluster.dashboard_url, args, cli_env(prefect_harness)))
    assert again.finish() == 0, again.text[-6000:]
    for key, body in done.items():  # the finished steps were reused, not recomputed
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
    assert len(_trains(s3, bucket, run_id)) == 2


def test_a_nightly_ray_flow_runs_its_steps_on_the_cluster(cluster, prefect_harness,
                                                         s3_endpoint, monkeypatch):
    """What a ``nightly-ray`` deployment's run loads (flows/ray_runner.py): the question's
    flow with the cluster Ray task runner at VF_RAY_ADDRESS."""
    from flows.ray_runner import q1_mlp

    bucket = make_bucket(s3_endpoint)
    monkeypatch.setenv("VF_RAY_ADDRESS", cluster.gcs_address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    small = merged(SWEEP, {"data": {"n_train": 600}, "epochs": 1, "repeats": 1,
                           "batch_sizes": [64], "resources": {"train": {"cpus": 1}}})
    result = q1_mlp(profile="smoke", store=f"s3://{bucket}/vf", overrides=small)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    flow = _manifest(s3, bucket, f"runs/q1-mlp/{result['run_id']}/manifest.json")
    assert flow["task_runner"]["kind"] == "ray"
    assert flow["task_runner"]["address"] == cluster.gcs_address
    nodes = {n["node_id"] for n in cluster.alive_nodes()}
    for m in _trains(s3, bucket, result["run_id"]).values():
        assert m["provenance"]["ray"]["node_id"] in nodes


@pytest.fixture(scope="module")
def token_cluster():
    c = _cluster(token=TOKEN)
    try:
        yield c
    finally:
        c.stop()


def test_token_cluster_refuses_without_the_token_and_stop_cancels_the_run(
        token_cluster, prefect_harness, s3_endpoint):
    url = token_cluster.dashboard_url
    bucket = make_bucket(s3_endpoint)
    args = ["q1-mlp", "--store", f"s3://{bucket}/vf", "--run-id", "submit-stop",
            *sets(merged(SWEEP, {"epochs": 200, "repeats": 1, "batch_sizes": [32]}))]
    refused = Output(submit(url, args, cli_env(prefect_harness)))
    assert refused.finish(timeout=120) == 2
    assert "HTTP 401" in refused.text and "set RAY_AUTH_TOKEN" in refused.text, refused.text
    out = Output(submit(url, args, cli_env(prefect_harness, RAY_AUTH_TOKEN=TOKEN)))
    job = out.wait_for(r"as Ray job (\S+)").group(1)
    out.wait_for(r"epoch 1/200|train-b32\S* on Ray node", timeout=300)
    start = time.monotonic()
    stop = subprocess.run([sys.executable, "-m", "flows.cli", "submit", "--ray-address", url,
                           "--stop", job], capture_output=True, text=True, cwd=ROOT,
                          env=cli_env(prefect_harness, RAY_AUTH_TOKEN=TOKEN), timeout=60)
    took = time.monotonic() - start
    assert stop.returncode == 0, stop.stderr
    ended = re.search(rf"Ray job {re.escape(job)}: STOPPED \(([\d.]+)s after the stop request\)",
                      stop.stderr)
    assert ended, stop.stderr
    assert float(ended.group(1)) < 10, stop.stderr
    print(f"\n--stop: job STOPPED {ended.group(1)}s after the request ({took:.1f}s with the "
          "command's own start)")
    assert out.finish(timeout=60) == 130, out.text[-3000:]
    print("".join(line for line in out.lines[-25:] if "werkzeug" not in line))
    for text in (out.text, stop.stdout + stop.stderr, refused.text):
        assert TOKEN not in text
    from prefect import get_client

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs()
                if (r.parameters or {}).get("run_id") == "submit-stop"]
    assert [r.state_type.value for r in runs] == ["CANCELLED"], runs


def test_a_step_no_node_holds_is_refused_before_submitting(cluster, prefect_harness,
                                                           s3_endpoint):
    bucket = make_bucket(s3_endpoint)
    out = Output(submit(cluster.dashboard_url, [
        "q1-mlp", "--store", f"s3://{bucket}/vf", "--set", "resources.train.cpus=8"],
        cli_env(prefect_harness)))
    assert out.finish(timeout=120) == 2
    errors = [ln for ln in out.text.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: q1-mlp: train steps need 8 CPUs, 0 GPUs and 4g memory, and no Ray node holds "
        "that (the largest: 4 CPUs, 2 GPUs, " + errors[0].split("2 GPUs, ", 1)[1]], out.text
    assert "nothing ran" in errors[0]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
