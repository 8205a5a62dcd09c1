"""The temporary Prefect server a ``visionflows`` command runs against when no
``PREFECT_API_URL`` is set, owned by us rather than started by Prefect on first use.

Prefect would start its own in the CLI's process group: the terminal's Ctrl-C then kills it
before the flow run can be marked, and a SIGKILL of the CLI leaves it running (adopted by
PID 1, holding its port and the caller's stdout). Ours runs in a session of its own (the
terminal's SIGINT does not reach it), dies with the CLI (``PR_SET_PDEATHSIG``; the run's
janitor, :mod:`flows.janitor`, kills it too), and is stopped last, after the flow run's
final state is recorded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from tasks.core.errors import VisionflowsError


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_settings(api_url: str) -> dict:
    """Prefect settings for a process that runs flows against a temporary server at
    ``api_url`` (for ``prefect.settings.temporary_settings``): its API, and no flow-run
    heartbeats. The server lives and dies with the command, so nothing reads them, and
    Prefect's heartbeat thread (sleeping in whole seconds, joined when a flow returns) makes
    every flow run end on the next whole second after it began (bench/README.md, row 3).
    A server set with ``PREFECT_API_URL`` keeps Prefect's heartbeats: its operator may
    watch them."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    return {PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


class TemporaryServer:
    """``uvicorn`` serving Prefect's API on 127.0.0.1 (SQLite in ``PREFECT_HOME``)."""

    def __init__(self, startup_timeout_s: float | None = None):
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.timeout_s = startup_timeout_s or float(
            os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 60)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> str:
        """Start it and wait until ``/api/health`` answers; return the API URL."""
        import prefect
        from prefect.settings import get_current_settings

        env = {**os.environ,
               **get_current_settings().to_environment_variables(exclude_unset=True),
               "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 - main thread, before any other
        deadline = time.monotonic() + self.timeout_s
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise VisionflowsError(
                        f"the temporary Prefect server exited with code {self.proc.returncode} "
                        "while starting; run `prefect server start` yourself and set "
                        "PREFECT_API_URL")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        return self.api_url
                time.sleep(0.1)
        self.stop()
        raise VisionflowsError(f"the temporary Prefect server did not answer within "
                               f"{self.timeout_s:.0f}s; raise "
                               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or run "
                               "`prefect server start` and set PREFECT_API_URL")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM its process group, SIGKILL after ``grace_s``; wait for it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
