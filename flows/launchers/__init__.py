"""Run a task by name, in-process, in a child process or in a container; return its manifest.

``local`` (the embedded default, :mod:`flows.launchers.local`) calls the task function in
this process. ``subprocess`` (:mod:`flows.launchers.child_process`) runs ``python -m tasks
<name>`` in a child process group (the same entrypoint containers use) with a time budget
and a memory limit. ``docker`` (:mod:`flows.launchers.container`) runs it in a container of
the task image (:mod:`flows.launchers.images`). Flows pick the launcher by a parameter,
never by code changes. What the out-of-process launchers share is in
:mod:`flows.launchers.output`.
"""

from __future__ import annotations

import logging
from typing import Any

from tasks.core.errors import ConfigError
from tasks.core.log import LOGGER_NAME
from tasks.core.resources import Resources
from tasks.core.runtime import Manifest

LAUNCHERS = ("local", "subprocess", "docker")


def launch(task: str, cfg: dict[str, Any], store: str, launcher: str = "local",
           timeout_s: float | None = None, env: dict[str, str] | None = None,
           resources: Resources | None = None) -> Manifest:
    """Run ``task`` with ``cfg`` against the store URI ``store`` using ``launcher``.

    ``env`` adds environment variables for a ``subprocess`` or ``docker`` task (e.g. its
    thread count); ``local`` applies its ``OMP_NUM_THREADS`` as torch's thread count for
    the call. ``resources`` (the step's row of the question's resource table) sets the
    subprocess and docker limits that ``VF_TASK_*`` / ``VF_DOCKER_*`` do not set.
    """
    show_task_logs()
    extra: dict[str, Any] = {k: v for k, v in (("env", env), ("resources", resources)) if v}
    if launcher == "local":
        from flows.launchers.local import launch_local

        return launch_local(task, cfg, store, timeout_s, **extra)
    if launcher == "subprocess":
        from flows.launchers.child_process import launch_subprocess

        return launch_subprocess(task, cfg, store, timeout_s, extra_env=env,
                                 resources=resources)
    if launcher == "docker":
        from flows.launchers.container import launch_docker

        return launch_docker(task, cfg, store, timeout_s, **extra)
    raise ConfigError(f"unknown launcher {launcher!r}; use one of: {', '.join(LAUNCHERS)}")


def show_task_logs() -> None:
    """Let the tasks' INFO lines through: Prefect attaches its API handler to our logger
    (PREFECT_LOGGING_EXTRA_LOGGERS) but leaves its level to the root's WARNING."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
