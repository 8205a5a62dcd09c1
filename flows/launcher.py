"""Run a task by name, in-process, in a child process or in a container; return its manifest.

``local`` (the embedded default) calls the task function in this process. ``subprocess``
runs ``python -m tasks <name>`` in a child process group (the same entrypoint containers
use) with a time budget and a memory limit (see ``flows/subprocess_launcher.py``).
``docker`` runs it in a container of the task image (see ``flows/docker_launcher.py``).
Flows pick the launcher by a parameter, never by code changes.

Limits: ``local`` cannot stop a task that shares its process (Python cannot kill a thread,
and a memory limit would apply to the flow too), so it enforces neither budget; it reports
an allocation failure as ``TaskOutOfMemoryError`` and warns once when a budget is asked for.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from tasks.errors import ConfigError, TaskOutOfMemoryError
from tasks.limits import is_out_of_memory
from tasks.log import LOGGER_NAME, get_logger, redact
from tasks.runtime import Manifest, run_task

LAUNCHERS = ("local", "subprocess", "docker")
# A line of our CLI's log format (tasks.log.setup_cli_logging), as a task's child prints it
_LEVEL_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")


def launch(task: str, cfg: dict[str, Any], store: str, launcher: str = "local",
           timeout_s: float | None = None, env: dict[str, str] | None = None) -> Manifest:
    """Run ``task`` with ``cfg`` against the store URI ``store`` using ``launcher``.

    ``env`` adds environment variables for a ``subprocess`` task (e.g. its thread count).
    """
    show_task_logs()
    if launcher == "local":
        return _launch_local(task, cfg, store, timeout_s)
    if launcher == "subprocess":
        from flows.subprocess_launcher import launch_subprocess

        return launch_subprocess(task, cfg, store, timeout_s, extra_env=env)
    if launcher == "docker":
        from flows.docker_launcher import launch_docker

        return launch_docker(task, cfg, store, timeout_s)
    raise ConfigError(f"unknown launcher {launcher!r}; use one of: {', '.join(LAUNCHERS)}")


def show_task_logs() -> None:
    """Let the tasks' INFO lines through: Prefect attaches its API handler to our logger
    (PREFECT_LOGGING_EXTRA_LOGGERS) but leaves its level to the root's WARNING."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def iter_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Split a byte stream (arbitrary chunking) into decoded lines; ``\\r`` counts as a break."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        *lines, buf = re.split(rb"\r\n|\n|\r", buf)
        for line in lines:
            if line.strip():
                yield line.decode("utf-8", "replace")
    if buf.strip():
        yield buf.decode("utf-8", "replace")


def emit(log: logging.Logger, task: str, line: str) -> None:
    """Log one line of a task's output at its own level when it carries one (our CLI's format)."""
    m = _LEVEL_LINE.match(line)
    if m:
        log.log(logging.getLevelName(m.group(1)), "[%s] %s", task, m.group(2))
    else:
        log.info("[%s] %s", task, line)


def relay(lines: Iterable[str], log: logging.Logger, task: str, tail) -> None:
    """Log a child task's output lines, redacted, keeping the last ones in ``tail`` (a deque)."""
    for line in lines:
        line = redact(line.rstrip())
        tail.append(line)
        emit(log, task, line)


def quote_tail(tail: Iterable[str]) -> str:
    """The last log lines of a failed task, for its error message."""
    lines = list(tail)
    return f"Last {len(lines)} log lines:\n" + ("\n".join(f"  | {ln}" for ln in lines)
                                                 or "  | (no output)")


_WARNED: set[str] = set()


def _launch_local(task: str, cfg: dict[str, Any], store: str, timeout_s: float | None
                  ) -> Manifest:
    asked = [f"{k}={v}" for k, v in (("timeout_s", timeout_s),
                                     ("VF_TASK_TIMEOUT_S", os.environ.get("VF_TASK_TIMEOUT_S")),
                                     ("VF_TASK_MEMORY", os.environ.get("VF_TASK_MEMORY"))) if v]
    if asked and "local" not in _WARNED:
        _WARNED.add("local")
        get_logger("launcher").warning(
            "%s: not enforced by the local launcher (tasks share the flow's process); use "
            "--launcher subprocess or docker to have tasks stopped at their limits",
            ", ".join(asked))
    try:
        return run_task(task, cfg, store)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise TaskOutOfMemoryError(
            f"task {task} ran out of memory ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no details'}) in the flow's own "
            "process, which has no limit of its own; run it with --launcher subprocess and "
            "VF_TASK_MEMORY (or docker and VF_DOCKER_MEMORY) to have it stopped at a limit, "
            "or make it smaller (batch size, workers)") from None
