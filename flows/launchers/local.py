"""The ``local`` launcher: the task function runs in this process (the embedded default).

It cannot stop a task that shares its process (Python cannot kill a thread, and a memory
limit would apply to the flow too), so it enforces neither budget; it reports an allocation
failure as ``TaskOutOfMemoryError`` and warns once when a budget is asked for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from tasks.core.errors import TaskOutOfMemoryError
from tasks.core.limits import is_out_of_memory
from tasks.core.log import get_logger
from tasks.core.resources import Resources
from tasks.core.runtime import Manifest
from tasks.registry import run_task

_WARNED: set[str] = set()


@contextlib.contextmanager
def torch_threads(env: dict[str, str] | None) -> Iterator[None]:
    """torch's thread count from ``env``'s ``OMP_NUM_THREADS`` for the call, then back (a
    step on a Ray worker, which runs one step at a time, uses the CPUs it asked for)."""
    n = (env or {}).get("OMP_NUM_THREADS", "")
    if not n.isdigit() or int(n) < 1:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def launch_local(task: str, cfg: dict[str, Any], store: str, timeout_s: float | None,
                 env: dict[str, str] | None = None, resources: Resources | None = None
                 ) -> Manifest:
    """Run ``task`` in this process; an allocation failure becomes ``TaskOutOfMemoryError``.

    ``env`` may set the thread count (``OMP_NUM_THREADS``); ``resources`` are not enforced
    here (the flow's own process has no limit of its own).
    """
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
        with torch_threads(env):
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
