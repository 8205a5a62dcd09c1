"""Ray Jobs submission against a Ray Client run, on the same two-node local Ray cluster:
how long from the start (the ``visionflows run`` command / the Ray job's start) to the
first step starting on a Ray worker, and to the end.

    unshare -n sh -c 'ip link set lo up && python -m bench.ray_submit [--repeats 2]'

Needs root and a loopback-only network namespace (Ray binds 0.0.0.0; tests/ray_support.py).
Each run is a q1-mlp smoke sweep of one cell into a fresh bucket of a moto S3 server, its
flow run on one Prefect server started once. The driver's start: for ``submit`` the Ray
job's own start (its ``start_time``: after this machine's checks and the code's upload), for
``run`` its command's start; both also from the command's start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "data.n_train=1000", "--set", "data.n_test=200", "--set", "epochs=1",
         "--set", "batch_sizes=[64]", "--set", "activations=[\"relu\"]",
         "--set", "losses=[\"cross_entropy\"]", "--set", "resources.train.cpus=1",
         "--set", "resources.evaluate.cpus=1"]


def first_step_start(s3, bucket: str, run_id: str) -> float:
    """The earliest ``started_at`` of the run's step manifests (epoch seconds)."""
    starts = []
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="vf/")["Contents"]:
        if obj["Key"].endswith("/manifest.json"):
            m = json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            if m.get("started_at") and (m.get("provenance") or {}).get("ray"):
                starts.append(datetime.fromisoformat(m["started_at"]).timestamp())
    return min(starts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    from flows.server import TemporaryServer
    from tests.ray_support import RayCluster, loopback_only, new_cluster_root

    if not loopback_only():
        sys.exit("run inside a loopback-only namespace: unshare -n sh -c 'ip link set lo up "
                 "&& python -m bench.ray_submit'")
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1", VF_S3_ENDPOINT_URL=endpoint,
                      PREFECT_HOME=tempfile.mkdtemp(prefix="vf-bench-prefect-"))
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    server = TemporaryServer(startup_timeout_s=180)
    api = server.start()
    cluster = RayCluster(new_cluster_root(), dashboard=True).start()
    env = {**os.environ, "PREFECT_API_URL": api, "PYTHONPATH": str(ROOT),
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    results: dict[str, list[tuple[float, float, float]]] = {"run": [], "submit": []}
    try:
        for r in range(args.repeats):
            for how in (("run", "submit") if r % 2 == 0 else ("submit", "run")):
                bucket = f"bench-{how}-{r}"
                s3.create_bucket(Bucket=bucket)
                run_id = f"{how}-{r}"
                store = ["--store", f"s3://{bucket}/vf", "--run-id", run_id, *SMALL]
                start = time.time()
                if how == "run":
                    cmd = ["run", "q1-mlp", "--task-runner", "ray", "--ray-address",
                           cluster.gcs_address, "--no-progress", *store]
                else:
                    cmd = ["submit", "--ray-address", cluster.dashboard_url, "q1-mlp", *store]
                res = subprocess.run([sys.executable, "-m", "flows.cli", *cmd], env=env,
                                     capture_output=True, text=True, cwd=ROOT, timeout=900)
                end = time.time()
                if res.returncode != 0:
                    sys.exit(f"{how} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
                if how == "submit":
                    job = res.stdout.split("as Ray job ", 1)[1].split()[0]
                    info = json.loads(subprocess.run(
                        [sys.executable, "-c", "import json,sys; from ray.job_submission "
                         "import JobSubmissionClient as C; i=C(sys.argv[1]).get_job_info("
                         "sys.argv[2]); print(json.dumps([i.start_time, i.end_time]))",
                         cluster.dashboard_url, job], env=env, capture_output=True,
                        text=True, check=True).stdout)
                    job_start, end = info[0] / 1000, info[1] / 1000
                else:
                    job_start = start
                first = first_step_start(s3, bucket, run_id)
                results[how].append((first - job_start, first - start, end - start))
                print(f"{how:6s} round {r}: first step {first - job_start:5.1f}s after the "
                      f"driver's start, {first - start:5.1f}s after the command's; done "
                      f"{end - start:5.1f}s after the command's", flush=True)
    finally:
        cluster.stop()
        server.stop()
        moto.stop()
    for how, rows in results.items():
        med = [statistics.median(row[i] for row in rows) for i in range(3)]
        print(f"{how:6s} median: first step {med[0]:.1f}s after the driver's start "
              f"({med[1]:.1f}s after the command's); whole run {med[2]:.1f}s")


if __name__ == "__main__":
    main()
