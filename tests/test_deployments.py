"""Deployments: prefect.yaml matches the served ones; a real Prefect server runs q1-mlp/nightly
triggered by `prefect deployment run`; headless Chromium shows the run in the UI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.deployments import DEPLOYMENT, NIGHTLY, TIMEZONE
from flows.registry import FLOWS, REPORT_FLOW
from tests.browser_support import chromium
from tests.browser_support import flags as chromium_flags

ROOT = Path(__file__).resolve().parent.parent


def test_prefect_yaml_matches_served_deployments():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_flow: dict[str, list[dict]] = {}
    for dep in spec["deployments"]:
        if ":" in dep["entrypoint"]:  # a file in the checkout (process pool)
            path, func = dep["entrypoint"].split(":")
            assert (ROOT / path).is_file(), dep["entrypoint"]
        else:  # a module path: the flows installed in the task image (container pools)
            module, func = dep["entrypoint"].rsplit(".", 1)
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), dep["entrypoint"]
        flow_name = next(n for n, target in {**FLOWS, "report": REPORT_FLOW}.items()
                         if target.endswith(f":{func}"))
        by_flow.setdefault(flow_name, []).append(dep)
    assert set(by_flow) == set(NIGHTLY) == {*FLOWS, "report"}
    for name, deps in by_flow.items():
        nightly = next(d for d in deps if d["name"] == DEPLOYMENT)
        assert nightly["schedules"][0] == {"cron": NIGHTLY[name].cron, "timezone": TIMEZONE}
        assert nightly["work_pool"]["name"] == "visionflows-process"
        # the same flow in a container of the task image: on the docker and the k8s pool,
        # same schedule (inactive until that pool has a worker)
        for container in ("nightly-docker", "nightly-k8s"):
            dep = next(d for d in deps if d["name"] == container)
            assert dep["schedules"][0] == {"cron": NIGHTLY[name].cron, "timezone": TIMEZONE,
                                           "active": False}
            if name != "report":
                assert dep["parameters"]["profile"] == "full"
                assert dep["parameters"]["launcher"] == "local"  # the tasks in that container
        if name == "report":
            continue
        assert nightly["parameters"]["profile"] == "full"
        # the regression switch: on for every question with a champion (not Q3)
        assert nightly["parameters"].get("overrides", {}) == NIGHTLY[name].overrides, name
        assert NIGHTLY[name].overrides == ({} if name == "q3-segmentation"
                                           else {"fail_on_regression": True})
    crons = [n.cron for n in NIGHTLY.values()]
    assert len(set(crons)) == len(crons)  # staggered


def test_served_nightly_deployments_carry_the_regression_switch():
    from flows.deployments import build_deployments

    deps = {d.name + "/" + d.tags[-1]: d for d in build_deployments(
        ["q1-mlp", "q3-segmentation", "report"], {"profile": "full", "store": "file:///s"})}
    assert deps["nightly/q1-mlp"].parameters == {
        "profile": "full", "store": "file:///s", "overrides": {"fail_on_regression": True}}
    assert "overrides" not in deps["nightly/q3-segmentation"].parameters
    assert deps["nightly/report"].parameters == {"store": "file:///s"}


def test_served_nightly_ray_deployments_run_each_question_on_the_ray_runner(monkeypatch):
    """``visionflows serve --ray-address A``: a paused ``nightly-ray`` per question (not the
    report), whose entrypoint is the question's flow with the cluster Ray task runner; the
    served runs find the address in VF_RAY_ADDRESS."""
    pytest.importorskip("prefect_ray")
    import importlib

    from flows.deployments import RAY_DEPLOYMENT, build_deployments
    from tasks.core.errors import ConfigError

    # set, then removed: the test's end restores the variable's absence (build_deployments
    # sets it for the served runs; it must not leak into the next test's CLI runs)
    monkeypatch.setenv("VF_RAY_ADDRESS", "unset")
    monkeypatch.delenv("VF_RAY_ADDRESS")
    deps = build_deployments([*FLOWS, "report"], {"profile": "full"},
                             ray_address="ray://head.vf.svc:10001")
    assert os.environ["VF_RAY_ADDRESS"] == "ray://head.vf.svc:10001"
    ray = {d.flow_name: d for d in deps if d.name == RAY_DEPLOYMENT}
    assert set(ray) == set(FLOWS)
    module = importlib.import_module("flows.ray_runner")
    for name, dep in ray.items():
        plain = next(d for d in deps if d.name == DEPLOYMENT and d.flow_name == name)
        assert dep.paused and dep.parameters == plain.parameters, name
        assert [s.schedule.cron for s in dep.schedules] == [NIGHTLY[name].cron]
        path, attr = dep.entrypoint.split(":")
        assert path == "flows/ray_runner.py" and (ROOT / path).is_file()
        flow = getattr(module, attr)
        assert flow.name == name
        assert type(flow.task_runner).__name__ == "ClusterRayTaskRunner"
    with pytest.raises(ConfigError, match="use ray://HOST:10001"):
        build_deployments(["q1-mlp"], {}, ray_address="http://head:8265")
    monkeypatch.delenv("VF_RAY_ADDRESS")
    with pytest.raises(ConfigError, match="needs the Ray cluster's address: set VF_RAY_ADDRESS"):
        module.ClusterRayTaskRunner().__enter__()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the server is still starting
            last = exc
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on 127.0.0.1 with SQLite and analytics off."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           # the UI's browser code calls the API at this address (default: port 4200)
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 180,
                 "the Prefect server")
        yield {"api": api, "ui": f"http://127.0.0.1:{port}", "env": {**env, "PREFECT_API_URL":
                                                                      api}, "home": home}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.fixture(scope="module")
def nightly_run(prefect_server, tmp_path_factory):
    """`visionflows serve`, then `prefect deployment run q1-mlp/nightly` with smoke params."""
    import httpx

    work = tmp_path_factory.mktemp("serve")
    store = f"file://{work}/store"
    env = prefect_server["env"]
    with open(work / "serve.log", "w") as serve_log:
        serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--flows",
                                  "q1-mlp", "--profile", "smoke", "--store", store], cwd=ROOT,
                                 env=env, stdout=serve_log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    api = prefect_server["api"]
    try:
        wait_for(lambda: httpx.get(f"{api}/deployments/name/q1-mlp/{DEPLOYMENT}",
                                   timeout=5).status_code == 200, 180, "the served deployment")
        overrides = {"data": {"n_train": 300, "n_test": 100}, "epochs": 1}
        res = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", f"q1-mlp/{DEPLOYMENT}",
             "-p", f"overrides={json.dumps(overrides)}", "--watch", "--watch-timeout", "600"],
            env=env, capture_output=True, text=True, timeout=700)
        assert res.returncode == 0, res.stdout + res.stderr
        runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 20}, timeout=10).json()
        scheduled = [r for r in runs if r["auto_scheduled"]]
        assert scheduled and all(r["state"]["type"] == "SCHEDULED" for r in scheduled)
        runs = [r for r in runs if not r["auto_scheduled"]]  # the one we triggered
        yield {"runs": runs, "store": store, "api": api, "cli": res.stdout}
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(30)


def test_deployment_run_completes_with_artifacts_and_champion(nightly_run):
    import httpx

    from tasks.core.store import open_store

    runs = nightly_run["runs"]
    assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED"
    assert runs[0]["parameters"]["profile"] == "smoke"
    arts = httpx.post(f"{nightly_run['api']}/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}}, timeout=10).json()
    kinds = {a["type"] for a in arts}
    assert {"table", "markdown", "progress"} <= kinds
    progress = next(a for a in arts if a["type"] == "progress")
    assert progress["data"] == pytest.approx(100.0)
    champ = open_store(nightly_run["store"]).get_json("models/q1-mlp-smoke/champion.json")
    assert champ["metric"] == "test/accuracy" and 0 <= champ["value"] <= 1


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed "
                    "(.ci/run installs it: apt-get install -y chromium)")
def test_ui_shows_the_completed_run(nightly_run, prefect_server, tmp_path):
    run = nightly_run["runs"][0]
    url = f"{prefect_server['ui']}/runs/flow-run/{run['id']}"
    flags = chromium_flags(tmp_path / "chrome", width=1400, height=1000)
    shot = tmp_path / "flow-run.png"
    subprocess.run([chromium(), *flags, f"--screenshot={shot}", url], capture_output=True,
                   timeout=120)
    dom = subprocess.run([chromium(), *flags, "--dump-dom", url], capture_output=True,
                         text=True, timeout=120).stdout
    (tmp_path / "flow-run.html").write_text(dom)
    assert run["name"] in dom, f"run name not in the UI page; see {tmp_path}"
    assert "Completed" in dom
    assert shot.exists() and shot.stat().st_size > 10_000
    out = ROOT / "reports" / "out"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, out / "prefect-ui-flow-run.png")
