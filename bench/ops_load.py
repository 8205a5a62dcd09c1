"""The nightly stack under load, PostgreSQL against SQLite (issue 27).

For each backend in turn: a Prefect server on it (``prefect server start``, basic auth, on
127.0.0.1), a process worker on a pool with concurrency 2, one ``q1-mlp`` smoke deployment
run alone, then 8 queued at once. Prints, per backend, the time of the run alone, the wall
time of the 8, the per-run overhead against the run alone (``wall / (8 / 2) - alone``: what
a wave of two concurrent runs costs beyond one run), and the states seen.

    python -m bench.ops_load [--runs 8] [--concurrency 2] [--backends postgres,sqlite]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

from tests.ops_support import (
    Postgres,
    PrefectServer,
    ProcessWorker,
    deploy_q1_mlp,
    start_runs,
    wait_final,
)
from tests.test_operations import SMALL

POOL = "vf-bench-process"


def one_backend(backend: str, runs: int, concurrency: int) -> dict[str, float]:
    from prefect.events.clients import NullEventsClient
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    home = Path(tempfile.mkdtemp(prefix=f"vf-bench-{backend}-"))
    auth = f"vf-bench:{secrets.token_hex(12)}"
    pg = Postgres(password=secrets.token_hex(16)) if backend == "postgres" else None
    server = worker = None
    EventsWorker.set_client_override(NullEventsClient)
    try:
        if pg is not None:
            pg.start()
            database = pg.server_env()
        else:
            database = {"PREFECT_SERVER_DATABASE_CONNECTION_URL":
                        f"sqlite+aiosqlite:///{home / 'prefect.db'}"}
        server = PrefectServer(home, auth, database)
        up = server.start()
        with temporary_settings(updates={PREFECT_API_URL: server.api_url,
                                         PREFECT_API_AUTH_STRING: auth}):
            dep = deploy_q1_mlp(POOL, concurrency)
            worker = ProcessWorker(home, server.api_url, auth, POOL, env={})
            worker.start()
            store = f"file://{home / 'store'}"

            def params(i: int) -> dict:
                return {"profile": "smoke", "store": store, "run_id": f"bench-{i}",
                        "refresh": True, "overrides": {**SMALL, "seed": i % 4}}

            t0 = time.monotonic()
            alone = start_runs(dep, [params(100)])
            done = wait_final(alone, 900)
            alone_s = time.monotonic() - t0
            t0 = time.monotonic()
            ids = start_runs(dep, [params(i) for i in range(runs)])
            done.update(wait_final(ids, 3600))
            wall = time.monotonic() - t0
            states = sorted({r.state_name for r in done.values()})
        waves = runs / concurrency
        return {"server_start_s": up, "alone_s": alone_s, "wall_s": wall,
                "per_run_overhead_s": wall / waves - alone_s, "states": states}
    finally:
        if worker is not None:
            worker.stop()
        if server is not None:
            server.stop()
        if pg is not None:
            pg.cleanup()
        EventsWorker.set_client_override(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--backends", default="postgres,sqlite")
    args = parser.parse_args()
    results = {}
    for backend in args.backends.split(","):
        results[backend] = r = one_backend(backend, args.runs, args.concurrency)
        print(f"RESULT {backend}: server up {r['server_start_s']:.1f}s; one run alone "
              f"{r['alone_s']:.1f}s; {args.runs} runs at concurrency {args.concurrency} "
              f"{r['wall_s']:.1f}s; per-run overhead vs alone {r['per_run_overhead_s']:+.1f}s "
              f"per wave; states {r['states']}", flush=True)
    if {"postgres", "sqlite"} <= set(results):
        print(f"RESULT postgres/sqlite wall: "
              f"{results['postgres']['wall_s'] / results['sqlite']['wall_s']:.3f}")


if __name__ == "__main__":
    main()
