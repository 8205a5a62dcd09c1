"""The nightly stack as operators run it (issue 27), on 127.0.0.1: a real PostgreSQL
(Debian's, as a non-root user), a Prefect server on it with basic auth (``prefect server
start``, every service on), a process worker on a pool with concurrency 2, and deployment
runs of ``q1-mlp`` (smoke) through it: auth refused without the string; 8 runs queued at
once; a run cancelled from the API; the server SIGKILLed mid-run and restarted; PostgreSQL
killed mid-run and restarted. The timings printed here are for the note only (the bench,
``bench/ops_load.py``, measures them side by side); the bounds are the issue's. The load,
cancellation and restart tests take minutes: marked ``ops``, they run in .ci/run's
operations stage; the auth checks run with the rest of the suite."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path

import httpx
import pytest

from tasks.core.runtime import find_manifest
from tasks.core.store import open_store
from tests.ops_support import (
    Postgres,
    PrefectServer,
    ProcessWorker,
    deploy_q1_mlp,
    flow_run_pids,
    postgres_bin,
    start_runs,
    states_of,
    wait_final,
    wait_for,
)

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed "
                                "(apt-get install postgresql; .ci/run installs it)")

AUTH = f"vf-ops:{secrets.token_hex(12)}"
POOL = "vf-ops-process"
# one cell, one epoch: a run is the flow's whole path (fetch, train, evaluate, report,
# promote, manifest) in seconds
SMALL = {"data": {"n_train": 300, "n_test": 100}, "epochs": 1, "batch_sizes": [64],
         "activations": ["relu"], "losses": ["cross_entropy"]}
# a run long enough to be interrupted in its training
LONG = {**SMALL, "data": {"n_train": 4000, "n_test": 100}, "epochs": 60}


def basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """PostgreSQL, the server on it with auth, a deployment and a worker on a pool with
    concurrency 2; this process's Prefect client set to the server and the auth string."""
    from prefect.events.clients import NullEventsClient
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("ops")
    pg = Postgres(password=secrets.token_hex(16))
    server = worker = None
    EventsWorker.set_client_override(NullEventsClient)
    try:
        pg.start()
        server = PrefectServer(home, AUTH, pg.server_env())
        server.start()
        with temporary_settings(updates={PREFECT_API_URL: server.api_url,
                                         PREFECT_API_AUTH_STRING: AUTH}):
            deployment = deploy_q1_mlp(POOL, concurrency=2)
            store = f"file://{home / 'store'}"
            worker = ProcessWorker(home, server.api_url, AUTH, POOL,
                                   env={"VF_RETRY_DELAY_S": "1"})
            worker.start()
            yield {"pg": pg, "server": server, "worker": worker, "deployment": deployment,
                   "store": store, "home": home}
    finally:
        if worker is not None:
            worker.stop()
        if server is not None:
            server.stop()
        pg.cleanup()
        EventsWorker.set_client_override(None)


def params(store: str, run_id: str, seed: int = 0, overrides: dict | None = None) -> dict:
    return {"profile": "smoke", "store": store, "run_id": run_id, "refresh": True,
            "overrides": {**(overrides or SMALL), "seed": seed}}


def flow_manifest(store: str, run_id: str) -> dict | None:
    st = open_store(store)
    key = f"runs/q1-mlp/{run_id}/manifest.json"
    return st.get_json(key) if st.exists(key) else None


def accuracy(manifest: dict) -> float:
    (row,) = manifest["metrics"]
    return row["test/accuracy"]


def test_the_api_refuses_requests_without_the_auth_string(stack):
    api = stack["server"].api_url
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200  # probes need none
    for headers in ({}, basic("vf-ops:wrong-password"), {"Authorization": "Bearer x"}):
        r = httpx.post(f"{api}/flows/filter", json={}, headers=headers, timeout=10)
        assert r.status_code == 401, headers
    r = httpx.post(f"{api}/flows/filter", json={}, headers=basic(AUTH), timeout=10)
    assert r.status_code == 200
    # our clients: Prefect's (PREFECT_API_AUTH_STRING; every call below), visionflows doctor
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    from flows.doctor import check_prefect

    assert check_prefect().status == "ok"
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: "vf-ops:wrong-password"}):
        bad = check_prefect()
    assert bad.status == "fail" and "401" in bad.detail and "PREFECT_API_AUTH_STRING" in bad.fix
    # the database password and the auth string never reach the server's or worker's log
    for log in (stack["server"].log(), stack["worker"].log()):
        assert AUTH.split(":")[1] not in log and stack["pg"].password not in log


@pytest.mark.ops
def test_eight_runs_queued_at_once_all_complete_right(stack):
    store, dep = stack["store"], stack["deployment"]
    t0 = time.monotonic()
    (alone,) = start_runs(dep, [params(store, "ops-alone", seed=0)])
    runs = wait_final([alone], 600)
    alone_s = time.monotonic() - t0
    assert runs[alone].state_type.value == "COMPLETED", states_of(alone)
    seeds = [0, 1, 2, 3, 0, 1, 2, 3]
    t0 = time.monotonic()
    ids = start_runs(dep, [params(store, f"ops-load-{i}", seed=s) for i, s in enumerate(seeds)])
    runs = wait_final(ids, 900)
    wall = time.monotonic() - t0
    assert {r.state_type.value for r in runs.values()} == {"COMPLETED"}, \
        {rid: states_of(rid) for rid in ids}
    # the pool's limit held: never more than 2 running at once
    spans = sorted((r.start_time.timestamp(), r.end_time.timestamp()) for r in runs.values())
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2
    # the right results: every run wrote its own flow manifest; the same seed gives the same
    # metrics whether it ran alone or beside others, and different seeds differ
    acc = {}
    for i, s in enumerate(seeds):
        m = flow_manifest(store, f"ops-load-{i}")
        assert m is not None and m["run_id"] == f"ops-load-{i}" and m["config"]["seed"] == s
        acc.setdefault(s, set()).add(accuracy(m))
    assert all(len(v) == 1 for v in acc.values()), acc
    assert acc[0] == {accuracy(flow_manifest(store, "ops-alone"))}
    print(f"\nops: one run alone {alone_s:.1f}s; 8 runs at concurrency 2 {wall:.1f}s "
          f"(per run {wall / 8:.1f}s; per wave of 2 {wall / 4:.1f}s vs {alone_s:.1f}s alone)")


def _wait_training(store: str, run_id: str, timeout_s: float = 240) -> None:
    st = open_store(store)
    wait_for(lambda: any(k.endswith("started.json") or "/train-" in k
                         for k in st.list(f"runs/q1-mlp/{run_id}/")), timeout_s,
             f"the training of {run_id} to start")


@pytest.mark.ops
def test_a_run_cancelled_from_the_api_stops_within_ten_seconds(stack):
    import asyncio

    from prefect import get_client
    from prefect.states import Cancelling

    store = stack["store"]
    (rid,) = start_runs(stack["deployment"], [params(store, "ops-cancel", overrides=LONG)])
    _wait_training(store, "ops-cancel")
    time.sleep(2)  # well inside the training

    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(rid, Cancelling(), force=True)

    assert flow_run_pids(rid)  # it runs in a process of its own
    t0 = time.monotonic()
    asyncio.run(cancel())
    # it stops: its process (and the training in it) is gone within 10 s
    wait_for(lambda: not flow_run_pids(rid), 10, "the cancelled run's process to end",
             poll_s=0.1)
    gone = time.monotonic() - t0
    # and its state says so (the worker first imports the flow to run its on_cancellation
    # hooks, which takes a while on a loaded machine)
    run = wait_final([rid], 120, poll_s=0.2)[rid]
    took = time.monotonic() - t0
    assert run.state_type.value == "CANCELLED", states_of(rid)
    # nothing half-written: no flow manifest, no manifest for the interrupted training,
    # and latest.json does not point at it
    st = open_store(store)
    assert flow_manifest(store, "ops-cancel") is None
    trains = {k.split("/")[3] for k in st.list("runs/q1-mlp/ops-cancel/") if "/train-" in k}
    assert trains and all(find_manifest(st, f"runs/q1-mlp/ops-cancel/{t}") is None
                          for t in trains)
    if st.exists("runs/q1-mlp/latest.json"):
        assert st.get_json("runs/q1-mlp/latest.json")["run_id"] != "ops-cancel"
    print(f"\nops: cancel -> process gone in {gone:.1f}s, state Cancelled in {took:.1f}s; "
          f"states {states_of(rid)}")


def _restart_case(stack, run_id: str, kill, start) -> tuple[float, float, list[str]]:
    store = stack["store"]
    (rid,) = start_runs(stack["deployment"], [params(store, run_id, overrides={
        **SMALL, "data": {"n_train": 3000, "n_test": 100}, "epochs": 8})])
    _wait_training(store, run_id)
    kill()
    t0 = time.monotonic()
    time.sleep(3)  # down for a while, as a crashed pod before its restart
    start()
    back = time.monotonic() - t0
    run = wait_final([rid], 600)[rid]
    total = time.monotonic() - t0
    states = states_of(rid)
    if run.state_type.value == "COMPLETED":
        return back, total, states
    # what an operator would read first: the final state's message and the worker's log
    tail = "\n".join(stack["worker"].log().splitlines()[-60:])
    return back, total, [f"final {run.state_name}: {run.state.message}", *states,
                         f"worker log tail:\n{tail}"]


def _assert_recorded_once(store: str, run_id: str, states: list[str]) -> None:
    assert states[-1] == "Completed", "\n".join(states)
    m = flow_manifest(store, run_id)
    assert m is not None and m["run_id"] == run_id
    st = open_store(store)
    # one result per step, none lost or duplicated
    steps = sorted({k.split("/")[3] for k in st.list(f"runs/q1-mlp/{run_id}/")
                    if k.count("/") >= 4})
    assert [s.split("-")[0] for s in steps].count("train") == 1, steps
    for s in steps:
        if s.startswith(("train-", "eval-")):
            assert find_manifest(st, f"runs/q1-mlp/{run_id}/{s}") is not None, s


@pytest.mark.ops
def test_the_server_killed_mid_run_and_restarted(stack):
    server = stack["server"]
    back, total, states = _restart_case(stack, "ops-server-kill", server.kill, server.start)
    assert back < 30, back
    _assert_recorded_once(stack["store"], "ops-server-kill", states)
    print(f"\nops: server SIGKILL -> back in {back:.1f}s, run final {total:.1f}s after the "
          f"kill; states {states}")


@pytest.mark.ops
def test_postgres_killed_mid_run_and_restarted(stack):
    pg = stack["pg"]
    back, total, states = _restart_case(stack, "ops-pg-kill", pg.kill, pg.start)
    assert back < 30, back
    _assert_recorded_once(stack["store"], "ops-pg-kill", states)
    print(f"\nops: PostgreSQL SIGKILL -> back in {back:.1f}s, run final {total:.1f}s after "
          f"the kill; states {states}")


def test_credentials_stay_out_of_the_store(stack):
    """Nothing the runs wrote holds the auth string or the database password."""
    secrets_ = (AUTH.split(":")[1], stack["pg"].password)
    for path in Path(stack["home"], "store").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".html", ".txt", ".log"):
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets_), path
