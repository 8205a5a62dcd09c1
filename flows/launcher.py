"""Run a task by name, in-process, in a child process or in a container; return its manifest.

``local`` (the embedded default) calls the task function in this process. ``subprocess``
runs ``python -m tasks <name>`` in a child process (the same entrypoint containers use)
and relays its log lines when it ends. ``docker`` runs it in a container of the task image
(see ``flows/docker_launcher.py``). Flows pick the launcher by a parameter, never by
code changes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

from tasks.config import validate
from tasks.errors import ConfigError, VisionflowsError
from tasks.log import LOGGER_NAME, get_logger, redact
from tasks.runtime import Manifest, resolve, run_task

LAUNCHERS = ("local", "subprocess", "docker")


def launch(task: str, cfg: dict[str, Any], store: str, launcher: str = "local",
           timeout_s: float | None = None, env: dict[str, str] | None = None) -> Manifest:
    """Run ``task`` with ``cfg`` against the store URI ``store`` using ``launcher``.

    ``env`` adds environment variables for a ``subprocess`` task (e.g. its thread count).
    """
    show_task_logs()
    if launcher == "local":
        return run_task(task, cfg, store)
    if launcher == "subprocess":
        return _launch_subprocess(task, cfg, store, timeout_s, env)
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


def _launch_subprocess(task: str, cfg: dict, store: str, timeout_s: float | None,
                       extra_env: dict[str, str] | None = None) -> Manifest:
    _func, cfg_cls = resolve(task)
    validate(cfg_cls, cfg, what=f"task {task!r}")  # fail before starting anything
    log = get_logger("launcher")
    cmd = [sys.executable, "-m", "tasks", task, "--config", "-", "--store", store]
    env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(json.dumps(cfg), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise VisionflowsError(f"task {task} timed out after {timeout_s:.0f}s and was killed") \
            from None
    for line in err.splitlines():
        log.info("[%s] %s", task, redact(line))
    if proc.returncode != 0:
        last = next((ln for ln in reversed(err.splitlines()) if ln.startswith("error:")),
                    f"exit code {proc.returncode}")
        raise VisionflowsError(f"task {task} failed in subprocess: {redact(last)}")
    return Manifest.model_validate(json.loads(out))
