"""One ``visionflows`` command's run: its work folder, its janitor, its temporary Prefect
server, and how Ctrl-C and SIGTERM stop it.

- A work folder of its own (``VF_WORK_ROOT``): every task's scratch files and the
  launchers' temporary files go there; it is removed on every exit path (the janitor,
  :mod:`flows.janitor`, removes it after a SIGKILL too).
- The temporary Prefect server (:mod:`flows.server`) when no Prefect API is set
  (``PREFECT_API_URL`` in the environment or the active Prefect profile),
  shielded from the terminal's Ctrl-C and stopped last.
- SIGINT and SIGTERM stop the run within seconds: the stop flag is set (in-process
  training stops between batches), every child process group and container is ended, the
  flow run is marked Cancelled in Prefect, and the command exits 130 (SIGINT) or 143
  (SIGTERM) with one line saying what was kept and how to resume. A second Ctrl-C ends at
  once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from flows.launchers import tracking
from tasks.core import progress
from tasks.core.runtime import STOP

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Flow runs started in this process (flows.common.remember_flow_run), newest last.
FLOW_RUNS: list[str] = []
# The terminal's live bars of this command, set on a terminal (flows.common.step_sink).
BARS: list = []


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop (Ctrl-C or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


_ACTIVE: list[Session] = []  # the sessions entered in this process, innermost last


def reclaim_sigterm() -> None:
    """Put our SIGTERM handler back in place of Prefect's. A flow run swaps in its own (it
    raises ``TerminationSignal`` in the flow and waits for the running tasks), so a SIGTERM
    would let an in-process training run to its end; with ours it stops like Ctrl-C. Call it
    first thing in a flow (``flows.common.remember_flow_run`` does); Prefect restores ours
    when the flow run ends."""
    if threading.current_thread() is not threading.main_thread():
        return
    if not _ACTIVE:  # a run a worker started (`prefect flow-run execute`): no Session
        _stop_tasks_on_sigterm()
        return
    session = _ACTIVE[-1]
    if signal.SIGTERM in session._old and signal.getsignal(signal.SIGTERM) != session._on_signal:
        signal.signal(signal.SIGTERM, session._on_signal)


def _stop_tasks_on_sigterm() -> None:
    """In a flow run a worker started, a SIGTERM (a cancellation from the API, a deleted
    pod) also sets ``STOP``, so in-process steps stop between two batches; then Prefect's
    own handler runs (its ``TerminationSignal``). Without this the run trains on until the
    worker's 30 s grace ends in a SIGKILL.

    Prefect's worker only acknowledges a cancellation (and then records it as Cancelled
    rather than Crashed) while its own handler, ``prefect.utilities.engine.
    _prefect_sigterm_handler``, is the one installed, compared by identity; so ours takes
    that name (a wrapper that calls Prefect's) instead of replacing the handler. Should
    Prefect rename it, runs are left as Prefect makes them (tests/test_operations.py
    fails: the cancellation takes 30 s again)."""
    try:
        import prefect.utilities.engine as prefect_engine
    except ImportError:
        return
    original = getattr(prefect_engine, "_prefect_sigterm_handler", None)
    lock = getattr(prefect_engine, "_prefect_sigterm_bridge_lock", None)
    if original is None or lock is None or getattr(original, "_vf_stops_tasks", False):
        return

    def stop_then_prefect(sig_num: int, *args: object):
        from tasks.core.runtime import STOP

        STOP.set()
        return original(sig_num, *args)

    stop_then_prefect._vf_stops_tasks = True  # type: ignore[attr-defined]
    with lock:
        installed = signal.getsignal(signal.SIGTERM) is original
        prefect_engine._prefect_sigterm_handler = stop_then_prefect
        if installed:
            signal.signal(signal.SIGTERM, stop_then_prefect)


def _configured_api_url() -> str | None:
    """The Prefect API this process is set to use: ``PREFECT_API_URL`` from the environment,
    the active Prefect profile or a settings context (e.g. a test harness); None if none."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


class Session:
    """The context of one command (see the module doc). ``server``: start a temporary
    Prefect server when ``PREFECT_API_URL`` is not set."""

    def __init__(self, server: bool = True):
        self.want_server = server
        self.root: Path | None = None
        self.janitor: subprocess.Popen | None = None
        self.server = None
        self.stopping: int | None = None
        self._old: dict[int, object] = {}
        self._settings = None
        self._env_before: dict[str, str | None] = {}
        self.bars = None
        self._sink = None

    # ------------------------------------------------------------ setup

    def __enter__(self) -> Session:
        STOP.clear()
        FLOW_RUNS.clear()
        self.root = Path(tempfile.gettempdir()) / f"vf-run-{os.getpid()}-{secrets.token_hex(3)}"
        self.root.mkdir(parents=True)
        self._setenv("VF_WORK_ROOT", str(self.root))
        self.janitor = subprocess.Popen([sys.executable, "-m", "flows.janitor", str(self.root)],
                                        stdin=subprocess.PIPE, start_new_session=True)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._on_signal)
        _ACTIVE.append(self)
        if self.want_server:
            configured = _configured_api_url()
            if configured:  # the children (and Ray workers) reach the same API
                self._setenv("PREFECT_API_URL", configured)
            else:
                self._start_server()
        if sys.stderr.isatty() and not progress.off():  # live bars, where a person watches
            self.bars = progress.TerminalBars()
            BARS[:] = [self.bars]
            self._sink = progress.SINK.set(self.bars.update)
        print(f"visionflows: work folder {self.root};"
              + ("" if self.server is None else f" temporary Prefect server "
                 f"{self.server.api_url} (pid {self.server.pid})"), file=sys.stderr, flush=True)
        return self

    def _setenv(self, key: str, value: str) -> None:
        self._env_before.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def _start_server(self) -> None:
        """A temporary server for this command, and this process's Prefect settings for it
        (:func:`flows.server.client_settings`: no heartbeats)."""
        from prefect.settings import temporary_settings

        from flows.server import TemporaryServer, client_settings

        self.server = TemporaryServer()
        url = self.server.start()
        tracking.track("server", self.server.pid)
        self._setenv("PREFECT_API_URL", url)
        self._settings = temporary_settings(updates=client_settings(url))
        self._settings.__enter__()

    # ------------------------------------------------------------ stopping

    def _on_signal(self, signum: int, _frame) -> None:
        if self.stopping is not None:
            if signum == signal.SIGINT and self.stopping == signal.SIGINT:
                # a second Ctrl-C: end now, children first
                tracking.stop_all(grace_s=0.5)
                print("\nstopped at once (second Ctrl-C)", file=sys.stderr)
                os._exit(130)
            return  # the same stop again (Prefect re-sends SIGTERM to us): already on it
        self.stopping = signum
        STOP.set()
        threading.Thread(target=tracking.stop_all, daemon=True, name="vf-stop").start()
        raise Interrupted(signum)

    def cancel_flow_runs(self, message: str) -> list[str]:
        """Mark the flow runs this command started and left unfinished as Cancelled."""
        if not FLOW_RUNS:
            return []
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        done = []
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            for run_id in FLOW_RUNS:
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_completed():
                    continue
                client.set_flow_run_state(run_id, Cancelled(message=message), force=True)
                done.append(run_id)
        return done

    # ------------------------------------------------------------ teardown

    @staticmethod
    def _drain_prefect() -> None:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            with contextlib.suppress(Exception):  # a stuck worker must not block the exit
                worker.drain_all(timeout=5)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if isinstance(exc, KeyboardInterrupt) and self.stopping is None:
                self.stopping = signal.SIGINT  # Ctrl-C outside our handler (before setup)
            if self.stopping is not None:
                STOP.set()
                tracking.stop_all()
                self.cancel_flow_runs(f"stopped by {signal.Signals(self.stopping).name}")
        finally:
            if self.bars is not None:
                self.bars.stop()
                BARS.clear()
                progress.SINK.reset(self._sink)
            for sig, old in self._old.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, old)
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            if self._settings is not None:
                self._settings.__exit__(None, None, None)
            if self.server is not None:
                self._drain_prefect()  # logs and events reach the server before it stops
                pid = self.server.pid
                self.server.stop()
                tracking.untrack("server", pid)
            for key, value in self._env_before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
            if self.janitor is not None and self.janitor.stdin is not None:
                self.janitor.stdin.close()  # the janitor finds nothing left and exits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.janitor.wait(timeout=10)
            STOP.clear()
