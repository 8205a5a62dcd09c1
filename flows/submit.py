"""``visionflows submit``: a flow run as a Ray job on a cluster (the Ray Jobs API), so the
flow's driver runs on the cluster and a lost laptop or port-forward does not end it.

    visionflows submit --ray-address http://HEAD:8265 q1-mlp --store s3://b/vf --set epochs=2
    visionflows submit --ray-address http://HEAD:8265 --status JOB   # or --logs / --stop JOB

The job's entrypoint is ``visionflows run FLOW ... --task-runner ray --ray-address auto``
(through :func:`driver_main`, which first checks that the cluster's Python, Ray, Prefect,
prefect-ray and torch are the versions this machine submitted with). The project's code
(``tasks``, ``flows``, ``reports``) ships as the job's ``runtime_env`` ``py_modules``; its
dependencies come from the cluster's image (``images/tasks.Dockerfile`` with
``VF_RAY_IMAGE=1``: the ``[ray]`` extra on the task image). Before submitting: the Ray
versions match, every step kind fits a node (:func:`flows.runners.check_fit`), and the
store and Prefect URLs the nodes get are not this machine's loopback when nodes are elsewhere
(:func:`flows.runners.check_nodes_reach`). The cluster's token (``RAY_AUTH_TOKEN`` or Ray's
token file) goes in a header and is never printed. Logs follow in the terminal; Ctrl-C asks
whether to stop the job or detach (without a terminal: detach, saying how to follow/stop).
See docs/ray.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from tasks.core.errors import ConfigError, VisionflowsError
from tasks.core.settings import default, raw, setting

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STOP_WAIT_S = default("VF_RAY_STOP_WAIT_S")  # RAY_JOB_STOP_WAIT_TIME_S: time to mark a
# stopped run Cancelled
# what the driver on the cluster must share with this machine (import names for metadata)
PACKAGES = ("ray", "prefect", "prefect-ray", "torch")
DRIVER_FLAG = "--vf-driver"


class JobError(VisionflowsError):
    """The cluster was lost, or the job did not succeed."""

    exit_code = 1


def dashboard_url(address: str | None) -> str:
    """The Ray dashboard's URL (``http://HEAD:8265``), from ``--ray-address`` or
    ``VF_RAY_DASHBOARD``."""
    address = (address or raw("VF_RAY_DASHBOARD") or "").strip().rstrip("/")
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise ConfigError(
            f"submit needs the Ray dashboard's address, http://HEAD:8265 (got "
            f"{address or 'none'}): --ray-address or VF_RAY_DASHBOARD (for ray://... or "
            "HOST:6379 use `visionflows run --task-runner ray`)")
    return address


def auth_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``Authorization`` header of a token-authenticated cluster (the token from
    ``RAY_AUTH_TOKEN`` or Ray's token file); empty without a token."""
    from flows.runners import ray_auth_token

    token = ray_auth_token(env)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _get(url: str, path: str, headers: dict[str, str], timeout: float = 15) -> Any:
    import requests

    try:
        r = requests.get(url + path, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise JobError(f"the Ray dashboard at {url} does not answer ({type(exc).__name__}); "
                       "check the address, that the head is up and that this machine reaches "
                       "port 8265 (a port-forward for KubeRay); nothing was submitted"
                       ) from None
    if r.status_code in (401, 403):  # a setting to fix: exit 2, like a bad option
        raise ConfigError(
            f"the Ray cluster at {url} refused us (HTTP {r.status_code}): it uses token "
            "authentication; set RAY_AUTH_TOKEN (or put the token in ~/.ray/auth_token or "
            "RAY_AUTH_TOKEN_PATH) to the cluster's token (`ray get-auth-token` on its head)")
    if r.status_code != 200:
        raise JobError(f"the Ray dashboard at {url} answered {path} with HTTP "
                       f"{r.status_code}: {r.text[:200]}")
    return r.json()


def cluster_nodes(url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The cluster's alive nodes: ``{"ip", "resources"}`` (CPU, GPU, memory in bytes)."""
    body = _get(url, "/api/v0/nodes?limit=1000&detail=false", headers)
    rows = body.get("data", {}).get("result", {}).get("result", [])
    return [{"ip": n.get("node_ip"), "id": n.get("node_id"),
             "resources": dict(n.get("resources_total") or {})}
            for n in rows if n.get("state") == "ALIVE"]


def local_versions() -> dict[str, str]:
    out = {"python": ".".join(platform.python_version_tuple()[:2])}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def version_mismatch(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    return [f"{k} {expected[k]} here, {actual.get(k, 'missing')} there" for k in expected
            if actual.get(k) != expected[k]]


def job_env(job_id: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver's environment on the cluster: what the steps need (as for ``run``), with
    the cluster-side store and Prefect URLs (``VF_RAY_S3_ENDPOINT_URL``,
    ``VF_RAY_PREFECT_API_URL``) in place of this machine's. Holds secrets: never log it."""
    from flows.runners import CLUSTER_API_URL, CLUSTER_ENDPOINT, WORKER_ENV, configured_api_url
    from tasks.core.runtime import git_commit

    env = os.environ if env is None else env
    out = {k: env[k] for k in WORKER_ENV if env.get(k)}
    if env.get(CLUSTER_ENDPOINT):
        out["VF_S3_ENDPOINT_URL"] = env[CLUSTER_ENDPOINT]
    if api := env.get(CLUSTER_API_URL) or configured_api_url():
        out["PREFECT_API_URL"] = api
    out.update({"VF_RAY_JOB_ID": job_id, "VF_GIT_COMMIT": git_commit(),
                "PREFECT_LOGGING_EXTRA_LOGGERS": "visionflows", "PYTHONUNBUFFERED": "1",
                "VF_NO_PROGRESS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                "VF_RAY_FIT_WAIT_S": raw("VF_RAY_FIT_WAIT_S", env) or "0",
                # the driver's own runtime_env (flows.runners.ray_session) wins over the job's
                "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
                "RAY_JOB_STOP_WAIT_TIME_S": str(setting("VF_RAY_STOP_WAIT_S", env))})
    return out


def _run_args(run_parser: argparse.ArgumentParser, flow: str, rest: list[str]
              ) -> tuple[argparse.Namespace, list[str]]:
    """The ``run`` options of a submission, parsed by ``visionflows run``'s own parser."""
    args = run_parser.parse_args([flow, *rest])
    if args.task_runner == "thread" or args.ray_address:
        raise ConfigError("a submitted run's steps always run on the cluster's Ray (--task-"
                          "runner ray --ray-address auto): drop --task-runner/--ray-address "
                          "after the flow name")
    if args.flow == "all":
        raise ConfigError("submit one flow at a time (visionflows submit ... FLOW), not all")
    return args, rest


def submit(args: argparse.Namespace) -> int:
    from flows.registry import new_run_id
    from flows.runners import (
        check_fit,
        check_nodes_reach,
        configured_api_url,
        require_ray,
        shipped_code,
    )
    from tasks.core.config import parse_sets
    from tasks.core.store import open_store
    from tasks.plans import resolve_config

    require_ray()
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(args.ray_address)
    run, rest = _run_args(args.run_parser, args.flow, args.run_args)
    cfg = resolve_config(run.flow, run.profile, parse_sets(run.set))
    store = open_store(run.store)
    if store.uri.startswith("file://"):
        raise ConfigError(f"the store {store.uri} is a folder on this machine, which the Ray "
                          f"cluster at {url} cannot see: --store s3://BUCKET/PREFIX (with "
                          "VF_S3_ENDPOINT_URL / VF_RAY_S3_ENDPOINT_URL for MinIO)")
    headers = auth_headers()
    theirs = _get(url, "/api/version", headers).get("ray_version")
    ours = local_versions()
    if theirs != ours["ray"]:
        raise ConfigError(f"the Ray cluster at {url} runs Ray {theirs}, this machine "
                          f"{ours['ray']}: submit from an environment with the cluster's "
                          "versions (the visionflows Ray image's), or run the matching image "
                          "on the cluster; nothing was submitted")
    nodes = cluster_nodes(url, headers)
    if not nodes:
        raise JobError(f"the Ray cluster at {url} has no live node; nothing was submitted")
    check_nodes_reach([n["ip"] for n in nodes], url, api_url=configured_api_url())
    if setting("VF_RAY_FIT_WAIT_S") <= 0:
        check_fit(run.flow, cfg, lambda: [n["resources"] for n in cluster_nodes(url, headers)],
                  wait_s=0)
    # else: an autoscaling cluster; the driver waits for a node there, asking the autoscaler
    # for it (this machine has no Ray connection to ask with)
    run_id = run.run_id or new_run_id()
    job_id = f"vf-{run.flow}-{run_id}-{int(time.time())}"
    argv = ["run", run.flow, *[a for a in rest], "--task-runner", "ray", "--ray-address",
            "auto", "--no-progress"]
    if not run.run_id:
        argv += ["--run-id", run_id]
    if not run.store:  # VF_STORE here means nothing there
        argv += ["--store", store.uri]
    entrypoint = shlex.join(["python", "-P", "-m", "flows.submit", DRIVER_FLAG,
                             json.dumps(ours, sort_keys=True), *argv])
    client = JobSubmissionClient(url, headers=headers)
    client.submit_job(entrypoint=entrypoint, submission_id=job_id,
                      runtime_env={**shipped_code(), "env_vars": job_env(job_id)},
                      metadata={"visionflows_flow": run.flow, "visionflows_run": run_id})
    print(f"submitted {run.flow} run {run_id} as Ray job {job_id} to {url} (code shipped as "
          "its py_modules; dependencies from the cluster's image)", flush=True)
    return follow(client, url, job_id, run_id=run_id)


def _how(url: str, job_id: str) -> str:
    base = ["visionflows", "submit", "--ray-address", url]
    return (f"follow it with: {shlex.join([*base, '--logs', job_id])}; stop it with: "
            f"{shlex.join([*base, '--stop', job_id])}")


def _lost(url: str, job_id: str, exc: BaseException, run_id: str | None) -> JobError:
    again = (f"; resubmit with --run-id {run_id} to reuse its finished steps" if run_id
             else "")
    return JobError(f"lost the Ray cluster at {url} while following job {job_id} "
                    f"({type(exc).__name__}): its head is gone or unreachable and the job's "
                    f"state is unknown{again}")


def follow(client, url: str, job_id: str, run_id: str | None = None,
           interactive: bool | None = None) -> int:
    """Print the job's logs as they come until it ends; its outcome as the exit code
    (0 succeeded, 1 failed, 130 stopped). Ctrl-C: stop or detach."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        try:
            asyncio.run(tail())
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - the connection is the cluster's health
            raise _lost(url, job_id, exc, run_id) from None
        try:
            info = client.get_job_info(job_id)
        except Exception as exc:  # noqa: BLE001 - as above
            raise _lost(url, job_id, exc, run_id) from None
        if str(info.status) not in TERMINAL:  # the log stream ended without the job
            raise _lost(url, job_id, ConnectionError("log stream closed"), run_id)
    except KeyboardInterrupt:
        if interactive is None:
            interactive = sys.stdin.isatty()
        answer = "d"
        if interactive:
            try:
                answer = input(f"\nstop Ray job {job_id} (s) or detach and leave it running "
                               "(d)? [s/D] ").strip().lower()[:1] or "d"
            except (EOFError, KeyboardInterrupt):
                answer = "d"
        if answer != "s":
            print(f"\ndetached from Ray job {job_id}; it keeps running. {_how(url, job_id)}",
                  file=sys.stderr)
            return 0
        return stop(client, url, job_id)
    status = str(info.status)
    if status == "SUCCEEDED":
        print(f"Ray job {job_id} succeeded")
        return 0
    if status == "STOPPED":
        print(f"Ray job {job_id} was stopped", file=sys.stderr)
        return 130
    raise JobError(f"Ray job {job_id} failed: {(info.message or '').strip()[:500]}")


def stop(client, url: str, job_id: str) -> int:
    """Ask the job to stop (SIGTERM to its driver: the flow run is marked Cancelled); wait
    for it to end."""
    start = time.monotonic()
    client.stop_job(job_id)
    deadline = start + STOP_WAIT_S + 15
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id))
        if status in TERMINAL:
            print(f"Ray job {job_id}: {status} ({time.monotonic() - start:.1f}s after the "
                  "stop request)", file=sys.stderr)
            return 0
        time.sleep(0.2)
    raise JobError(f"Ray job {job_id} did not stop within {STOP_WAIT_S + 15}s; "
                   f"{_how(url, job_id)}")


def cmd_submit(args: argparse.Namespace) -> int:
    ops = [o for o in ("status", "logs", "stop") if getattr(args, o)]
    if len(ops) > 1 or (ops and args.flow):
        raise ConfigError("submit takes a flow to submit, or one of --status/--logs/--stop "
                          "JOB")
    if not ops:
        if not args.flow:
            raise ConfigError("submit what? e.g. visionflows submit --ray-address "
                              "http://HEAD:8265 FLOW --store s3://BUCKET/PREFIX")
        return submit(args)
    from flows.runners import require_ray

    require_ray()
    from ray.job_submission import JobSubmissionClient

    url = dashboard_url(args.ray_address)
    headers = auth_headers()
    _get(url, "/api/version", headers)  # a clear line when it does not answer
    client = JobSubmissionClient(url, headers=headers)
    job_id = getattr(args, ops[0])
    try:
        info = client.get_job_info(job_id)
    except RuntimeError as exc:
        raise JobError(f"no Ray job {job_id} at {url} ({str(exc).splitlines()[0][:200]})"
                       ) from None
    if ops == ["status"]:
        meta = info.metadata or {}
        print(f"{job_id}: {info.status}  flow {meta.get('visionflows_flow', '?')} run "
              f"{meta.get('visionflows_run', '?')}  {(info.message or '').strip()}")
        return 0
    if ops == ["stop"]:
        return stop(client, url, job_id)
    return follow(client, url, job_id, run_id=(info.metadata or {}).get("visionflows_run"))


def add_submit_parser(sub, run_parser: argparse.ArgumentParser) -> None:
    """The ``submit`` subcommand; ``run_parser`` (``visionflows run``'s) parses the run
    options given after the flow."""
    p = sub.add_parser("submit", help="run a flow as a Ray job on a cluster (Ray Jobs API); "
                                      "--status/--logs/--stop a job")
    p.add_argument("--ray-address", default=None, metavar="URL",
                   help="the Ray dashboard: http://HEAD:8265 (default $VF_RAY_DASHBOARD)")
    p.add_argument("--status", metavar="JOB", help="print a job's state")
    p.add_argument("--logs", metavar="JOB", help="follow a job's logs until it ends")
    p.add_argument("--stop", metavar="JOB", help="stop a job (its flow run is Cancelled)")
    p.add_argument("flow", nargs="?", metavar="FLOW", help="the flow to submit, then any "
                   "`visionflows run` options (--store, --profile, --set, --run-id, ...)")
    p.add_argument("run_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_submit, run_parser=run_parser)


def driver_main(argv: list[str]) -> int:
    """The job's entrypoint on the cluster: the environment matches the submitter's, then
    ``visionflows run``."""
    expected = json.loads(argv[0])
    if wrong := version_mismatch(expected, local_versions()):
        print(f"error: this Ray cluster's Python environment differs from the submitter's "
              f"({'; '.join(wrong)}): run the visionflows Ray image built from the same "
              "commit (images/build-local-base.sh with VF_RAY_IMAGE=1); nothing ran",
              file=sys.stderr)
        return 3
    sys.stdout.flush()
    # the same process (pid) becomes `visionflows run`: Ray's stop signal reaches it
    os.execv(sys.executable, [sys.executable, "-P", "-m", "flows.cli", *argv[1:]])


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == DRIVER_FLAG:
        sys.exit(driver_main(sys.argv[2:]))
    sys.exit(f"usage: python -m flows.submit {DRIVER_FLAG} VERSIONS_JSON run FLOW ...")
