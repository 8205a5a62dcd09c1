"""The stack as operators run it, on 127.0.0.1, for the issue-27 tests: a real PostgreSQL
(Debian's, started as a non-root user in a temporary data directory), a Prefect server on
it with basic auth (``prefect server start``, every background service on, as compose and
Kubernetes run it), and a process worker. Each is started and stopped by its own pid (its
own process group), and may be killed (SIGKILL) and started again on the same port."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from flows.server import free_port
from flows.work_pools import RUN_CLIENT_ENV

ROOT = Path(__file__).resolve().parent.parent
PG_USER = "vfpg"  # the OS account PostgreSQL runs as (it refuses to run as root)
DB_USER, DB_NAME = "prefect", "prefect"


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server binaries (``/usr/lib/postgresql/<v>/bin``), newest first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name), reverse=True)
    return Path(found[0]).parent if found else None


def _account() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as: ``vfpg`` (created when we are root), else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PG_USER], check=True, capture_output=True)
        pw = pwd.getpwnam(PG_USER)
    return pw.pw_uid, pw.pw_gid


def _kill_group(proc: subprocess.Popen, sig: int, wait_s: float) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Postgres:
    """A PostgreSQL cluster in a temporary folder, password (scram) auth, 127.0.0.1 only."""

    def __init__(self, password: str):
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin, self.password = bindir, password
        self.account = _account()
        self.dir = Path(tempfile.mkdtemp(prefix="vf-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.created = False
        pwfile = self.dir / "pw"
        pwfile.write_text(password + "\n")
        if self.account:
            os.chown(self.dir, *self.account)
            os.chown(pwfile, *self.account)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", DB_USER,
                   f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                   "--locale=C.UTF-8"])
        pwfile.unlink()

    def _run(self, cmd: list[str]) -> None:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                             **self._as_account())
        if res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {res.stderr[-2000:]}")

    def _as_account(self) -> dict:
        if not self.account:
            return {}
        return {"user": self.account[0], "group": self.account[1], "extra_groups": []}

    def start(self, timeout_s: float = 60) -> None:
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - the server's, closed by it
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             "-c", "max_connections=200", "-c", "fsync=on"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **self._as_account())
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: "
                                   f"{self.log()[-2000:]}")
            res = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p",
                                  str(self.port)], capture_output=True)
            if res.returncode == 0:
                if not self.created:  # the first start: the database Prefect uses
                    res = subprocess.run(
                        [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                         "-U", DB_USER, DB_NAME], capture_output=True, text=True,
                        env={**os.environ, "PGPASSWORD": self.password}, timeout=60)
                    if res.returncode != 0:
                        raise RuntimeError(f"createdb failed: {res.stderr}")
                    self.created = True
                return
            time.sleep(0.2)
        raise RuntimeError(f"postgres not ready in {timeout_s}s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (its process group): a crash."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL, 10)
            self.proc = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT), by pid."""
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGINT, 30)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def server_env(self) -> dict[str, str]:
        """The Prefect server's database settings, by parts (as compose and Kubernetes set
        them: the password its own variable, from a Secret)."""
        return {"PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg",
                "PREFECT_SERVER_DATABASE_HOST": "127.0.0.1",
                "PREFECT_SERVER_DATABASE_PORT": str(self.port),
                "PREFECT_SERVER_DATABASE_USER": DB_USER,
                "PREFECT_SERVER_DATABASE_NAME": DB_NAME,
                "PREFECT_SERVER_DATABASE_PASSWORD": self.password}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_API_", "PREFECT_SERVER_DATABASE",
                                 "PREFECT_SERVER_API_AUTH"))}


class PrefectServer:
    """``prefect server start`` on 127.0.0.1 (every service on), with basic auth."""

    def __init__(self, home: Path, auth: str, database: dict[str, str]):
        self.home, self.auth, self.database = home, auth, database
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout_s: float = 180) -> float:
        """Start it; wait for ``/api/health`` (no auth needed); return the seconds taken."""
        t0 = time.monotonic()
        env = {**_clean_env(), **self.database, "PREFECT_HOME": str(self.home),
               "PREFECT_SERVER_API_AUTH_STRING": self.auth, "PREFECT_UI_ENABLED": "false",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
               "PREFECT_LOGGING_SERVER_LEVEL": "WARNING"}
        log = open(self.home / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-ui"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        deadline = t0 + timeout_s
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"prefect server exited with {self.proc.returncode}: "
                                       f"{self.log()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        return time.monotonic() - t0
                time.sleep(0.2)
        raise RuntimeError(f"prefect server not up in {timeout_s}s: {self.log()[-3000:]}")

    def log(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL, 10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGTERM, 15)
            self.proc = None


class ProcessWorker:
    """``prefect worker start --type process`` for ``pool``, with our auth string."""

    def __init__(self, home: Path, api_url: str, auth: str, pool: str, env: dict[str, str]):
        self.home, self.api_url, self.auth, self.pool, self.env = home, api_url, auth, pool, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**_clean_env(), **RUN_CLIENT_ENV, **self.env, "PREFECT_HOME": str(self.home),
               "PREFECT_API_URL": self.api_url, "PREFECT_API_AUTH_STRING": self.auth,
               "PYTHONPATH": str(ROOT), "VF_PROJECT_DIR": str(ROOT),
               "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
               # a Cancelling run is seen by the worker through the server's event stream,
               # which was seen to take ~30 s here; polling every 2 s bounds it
               "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "2",
               "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
        log = open(self.home / "worker.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool,
             "--type", "process", "--name", f"vf-test-{self.pool}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=ROOT)
        log.close()

    def log(self) -> str:
        path = self.home / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGTERM, 20)
            self.proc = None


# -- deployments and runs on that server (the in-process client: PREFECT_API_URL and
#    PREFECT_API_AUTH_STRING set by the caller) ---------------------------------------------

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def deploy_q1_mlp(pool: str, concurrency: int, name: str = "ops") -> str:
    """A process pool with ``concurrency`` and a deployment of ``q1-mlp`` from this
    checkout on it; returns the deployment id."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.flows import Flow

    async def make_pool() -> None:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(
                name=pool, type="process", concurrency_limit=concurrency), overwrite=True)

    asyncio.run(make_pool())
    flow = Flow.from_source(source=str(ROOT), entrypoint="flows/q1_mlp.py:q1_mlp")
    return str(flow.deploy(name=name, work_pool_name=pool, build=False, push=False,
                           print_next_steps=False, ignore_warnings=True))


def start_runs(deployment_id: str, parameters: list[dict]) -> list[str]:
    """One flow run of the deployment per parameter set, all at once; their ids."""
    from prefect.deployments import run_deployment

    return [str(run_deployment(deployment_id, parameters=p, timeout=0).id)
            for p in parameters]


def read_run(run_id: str):
    import asyncio

    from prefect import get_client

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    return asyncio.run(read())


def states_of(run_id: str) -> list[str]:
    """Every state the run went through, in order (the server's history)."""
    import asyncio

    from prefect import get_client

    async def read():
        async with get_client() as client:
            return await client.read_flow_run_states(run_id)

    return [s.name for s in asyncio.run(read())]


def wait_final(run_ids: list[str], timeout_s: float, poll_s: float = 1.0) -> dict[str, object]:
    """Poll until every run is final (API errors, e.g. a restarting server, are waited
    out); the runs as last read."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        for rid in run_ids:
            if rid in last and last[rid].state_type.value in FINAL:
                continue
            with contextlib.suppress(Exception):
                last[rid] = read_run(rid)
        if len(last) == len(run_ids) and all(r.state_type.value in FINAL
                                             for r in last.values()):
            return last
        time.sleep(poll_s)
    states = {rid: getattr(r, "state_name", "?") for rid, r in last.items()}
    raise TimeoutError(f"runs not final within {timeout_s}s: {states}")


def wait_for(check, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what}: not within {timeout_s}s")


def flow_run_pids(run_id: str) -> list[int]:
    """Live processes executing flow run ``run_id`` (their environment names it; Linux)."""
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry.name}/environ", "rb") as fh:
            if needle in fh.read().split(b"\0"):
                pids.append(int(entry.name))
    return pids
