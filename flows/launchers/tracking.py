"""Every process group and container a launcher starts, so that a stop (Ctrl-C, SIGTERM)
can end them at once and a killed CLI leaves none behind.

The launchers ``track`` what they start and ``untrack`` it when it ends. Under the
``visionflows`` CLI (``VF_WORK_ROOT`` set) each change is also appended to
``$VF_WORK_ROOT/children``, which the run's janitor (:mod:`flows.janitor`) reads to clean up
after a CLI that was killed outright (SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from tasks.core.settings import raw

_LOCK = threading.Lock()
# pgid: a task's process group; container: a task's container; server: the temporary Prefect
# server's process group (ended last, by its owner or the janitor, never by stop_all)
_LIVE: dict[str, set[str]] = {"pgid": set(), "container": set(), "server": set()}
LEDGER = "children"


def _ledger(line: str) -> None:
    root = raw("VF_WORK_ROOT")
    if root:
        with contextlib.suppress(OSError), open(Path(root) / LEDGER, "a") as fh:
            fh.write(line + "\n")


def track(kind: str, ident: int | str) -> None:
    """Remember a task's process group (``pgid``), a container (``container``) or the
    temporary server's process group (``server``) we started."""
    with _LOCK:
        _LIVE[kind].add(str(ident))
    _ledger(f"+{kind} {ident}")


def untrack(kind: str, ident: int | str) -> None:
    with _LOCK:
        _LIVE[kind].discard(str(ident))
    _ledger(f"-{kind} {ident}")


def live() -> dict[str, set[str]]:
    with _LOCK:
        return {k: set(v) for k, v in _LIVE.items()}


def read_ledger(root: str | os.PathLike) -> dict[str, set[str]]:
    """What ``root``'s ledger says is still running (tracked and not untracked)."""
    out: dict[str, set[str]] = {"pgid": set(), "container": set(), "server": set()}
    try:
        lines = (Path(root) / LEDGER).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        if len(line) < 3 or line[0] not in "+-":
            continue
        kind, _, ident = line[1:].partition(" ")
        if kind not in out or not ident:
            continue
        if line[0] == "+":
            out[kind].add(ident)
        else:
            out[kind].discard(ident)
    return out


def kill_groups(pgids: set[str], grace_s: float = 2.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after ``grace_s``."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pgid), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pgids and time.monotonic() < deadline:
        if not any(_alive(p) for p in pgids):
            return
        time.sleep(0.05)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pgid), signal.SIGKILL)


def _alive(pgid: str) -> bool:
    try:
        os.killpg(int(pgid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def kill_containers(ids: set[str]) -> None:
    """Kill and remove containers (best effort: the engine may be gone)."""
    if not ids:
        return
    try:
        import docker

        client = docker.from_env()
    except Exception:  # noqa: BLE001 - no SDK or no engine: nothing we can stop there
        return
    for ident in ids:
        with contextlib.suppress(Exception):
            client.containers.get(ident).remove(force=True, v=True)


def stop_all(grace_s: float = 2.0) -> None:
    """End every task this process started that is still running (not the server)."""
    now = live()
    kill_containers(now["container"])
    kill_groups(now["pgid"], grace_s)
