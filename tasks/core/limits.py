"""Resource limits shared by the task CLI and the launchers: sizes, out-of-memory detection,
and dying with the parent process.

Nothing here enforces a limit by itself: the ``subprocess`` launcher
(:mod:`flows.launchers.child_process`) and the ``docker`` launcher do; the task CLI only turns
an out-of-memory failure into a clear message and its own exit code.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import threading
import time

# ``python -m tasks`` exit codes: 0 done, 1 crash, 2 user error (config, data, store),
# 3 out of memory.
EXIT_OUT_OF_MEMORY = 3

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# What out-of-memory looks like from torch/numpy/C allocators, besides Python's MemoryError.
_OOM_TEXT = re.compile(r"out of memory|can't allocate memory|cannot allocate memory|"
                       r"std::bad_alloc|unable to allocate", re.IGNORECASE)


def parse_size(text: str | int | float, what: str = "memory") -> int:
    """Bytes from ``512m``, ``4g``, ``1.5g``, ``2048k`` (binary units) or a byte count.

    Raises ValueError (with the accepted forms) for anything else, and for sizes under
    1 MiB, which are always a missing unit (``512`` meant ``512m``).
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*", str(text).lower())
        if not m:
            raise ValueError(f"{what} {text!r}: use a size such as 512m, 4g or 1.5g")
        value, unit = float(m.group(1)), m.group(2)
    size = int(value * _UNITS[unit])
    if size < 1 << 20:
        raise ValueError(f"{what} {text!r} is under 1 MiB: give a unit, e.g. 512m or 4g")
    return size


def mib(size: int) -> int:
    return round(size / (1 << 20))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: MemoryError, torch's CPU/CUDA OOM, numpy's."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and bool(_OOM_TEXT.search(str(exc)))


def die_with_parent(env_var: str = "VF_PARENT_PID") -> None:
    """Exit when the process that started us dies, so no task outlives its launcher.

    ``env_var`` names the parent's pid (set by whoever starts us); without it, nothing
    happens. On Linux the kernel sends SIGKILL (``PR_SET_PDEATHSIG``); elsewhere a thread
    polls the parent pid.
    """
    from tasks.core.settings import setting

    parent = setting(env_var)
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(137)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, daemon=True, name="vf-parent-watch").start()
