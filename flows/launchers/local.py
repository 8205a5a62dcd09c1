"""The ``local`` launcher: the task function runs in this process (the embedded default).

**Time limit**: ``timeout_s``, else ``VF_TASK_TIMEOUT_S``, else the step's ``time_limit_s``
in the question's resource table (``none``: no limit), as the subprocess launcher. Python
cannot kill a thread, so past the limit a ``TaskTimeoutError`` is raised *inside* the
task's thread (``PyThreadState_SetAsyncExc``): it lands at the task's next Python
instruction (a training loop between two batches), runs its ``finally`` blocks and leaves
no manifest (written last). A task blocked inside one C call (a read without a timeout)
sees it only when that call returns; the Kubernetes Job's deadline and the flow's own
(:mod:`flows.fanout`) bound that case.

**Memory**: not enforced (a limit would apply to the flow too); an allocation failure is
reported as ``TaskOutOfMemoryError``, and ``VF_TASK_MEMORY`` is warned about once.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tasks.core.errors import ConfigError, TaskOutOfMemoryError, TaskTimeoutError
from tasks.core.limits import is_out_of_memory
from tasks.core.log import get_logger
from tasks.core.resources import Resources
from tasks.core.runtime import Manifest
from tasks.core.settings import raw
from tasks.registry import run_task

_WARNED: set[str] = set()
T = TypeVar("T")


class _PastDeadline(BaseException):  # noqa: N818 - raised into the task's thread only
    """Injected into a task's thread at its time limit. A BaseException, so a task's own
    ``except Exception`` does not swallow it; it becomes ``TaskTimeoutError`` here."""


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Make ``thread_id`` raise ``exc`` at its next instruction (None: clear a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else ctypes.c_void_p(0))


def time_budget(timeout_s: float | None, resources: Resources | None) -> float | None:
    """The task's time limit: ``timeout_s``, else ``VF_TASK_TIMEOUT_S`` (``none``: none),
    else the resource table's ``time_limit_s``."""
    if timeout_s is not None:
        return timeout_s
    env = raw("VF_TASK_TIMEOUT_S") or ""
    if env:
        if env.lower() in ("none", "off", "0"):
            return None
        try:
            value = float(env)
        except ValueError:
            raise ConfigError(f"VF_TASK_TIMEOUT_S={env!r} is not a number of seconds; use "
                              "e.g. 3600, or 'none' for no limit") from None
        if value <= 0:
            raise ConfigError(f"VF_TASK_TIMEOUT_S={env!r} must be > 0 (or 'none')")
        return value
    return resources.time_limit_s if resources is not None else None


def within(seconds: float | None, fn: Callable[[], T], what: str) -> T:
    """``fn()`` in this thread, stopped by :class:`_PastDeadline` after ``seconds``."""
    if seconds is None:
        return fn()
    me = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                _raise_in(me, _PastDeadline)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.name = f"vf-deadline-{what}"
    try:
        timer.start()
        try:
            return fn()
        finally:
            timer.cancel()
            with lock:
                state["done"] = True
                if state["fired"]:  # finished as it fired: drop the pending exception
                    _raise_in(me, None)
    except _PastDeadline:
        raise TaskTimeoutError(
            f"task {what} ran past its time limit of {seconds:g}s and was stopped in the "
            "flow's process (local launcher); it left no manifest. Give it more time (a flow "
            "step: --set resources.<kind>.time_limit_s=SECONDS; any task: "
            "VF_TASK_TIMEOUT_S=SECONDS, 'none': no limit)") from None


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
    """Run ``task`` in this process within its time limit (see the module docstring); an
    allocation failure becomes ``TaskOutOfMemoryError``.

    ``env`` may set the thread count (``OMP_NUM_THREADS``); of ``resources`` only the time
    limit applies here (the flow's own process has no memory limit of its own).
    """
    budget = time_budget(timeout_s, resources)
    if (memory := raw("VF_TASK_MEMORY")) and "local" not in _WARNED:
        _WARNED.add("local")
        get_logger("launcher").warning(
            "VF_TASK_MEMORY=%s: not enforced by the local launcher (tasks share the flow's "
            "process); use --launcher subprocess or docker to have tasks stopped at it",
            memory)
    try:
        with torch_threads(env):
            return within(budget, lambda: run_task(task, cfg, store), task)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise TaskOutOfMemoryError(
            f"task {task} ran out of memory ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no details'}) in the flow's own "
            "process, which has no limit of its own; run it with --launcher subprocess and "
            "VF_TASK_MEMORY (or docker and VF_DOCKER_MEMORY) to have it stopped at a limit, "
            "or make it smaller (batch size, workers)") from None
