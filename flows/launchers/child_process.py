"""The ``subprocess`` launcher: ``python -m tasks`` in a process group of its own, with a time
budget and a memory limit.

- The task runs as ``python -m tasks <task> --config FILE --store URI --manifest-out FILE``
  (the entrypoint containers use) in a new session, so the task and every process it starts
  (ultralytics' worker, DataLoader workers) form one process group that is stopped as one.
  The child also dies with the launching process (``VF_PARENT_PID``).
- **Time budget**: ``timeout_s`` (``launch(..., timeout_s=...)``, else ``VF_TASK_TIMEOUT_S``,
  else the step's ``time_limit_s`` in the question's resource table, else 6 h like the
  docker launcher; ``none`` turns it off). Past it, the group is killed (SIGKILL) and
  ``TaskTimeoutError`` names the task and the budget.
- **Memory limit**: ``VF_TASK_MEMORY`` (``512m``, ``4g``), else the step's ``memory`` in the
  resource table (flows pass it), else none. A watchdog sums the
  proportional set size (PSS: shared pages counted once) of the group every ``poll_s``;
  past the limit it kills the group and ``TaskOutOfMemoryError`` names the task, the limit
  and what it reached. The limit covers the whole group, like a container's cgroup limit,
  but it is sampled, not enforced by the kernel: an allocation faster than the poll interval
  can overshoot by what it allocates in that time. A task that hits the machine's own limit
  (Python ``MemoryError``, torch's allocator) exits with code 3 and is reported the same way.
- The child's log (stdout and stderr) is relayed live, line by line and redacted, into the
  ``visionflows.launcher`` logger; failures quote its last lines.

A killed task never wrote its manifest (it is written last), so nothing half-done is ever
read as a result. Linux only for the memory limit (it reads ``/proc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

import flows.launchers.tracking as tracking
from flows.launchers.output import iter_lines, quote_tail, relay
from tasks.core.config import Config, validate
from tasks.core.errors import (
    TaskCrashedError,
    TaskOutOfMemoryError,
    TaskTimeoutError,
    error_from_record,
)
from tasks.core.files import work_dir
from tasks.core.limits import EXIT_OUT_OF_MEMORY, mib, parse_size
from tasks.core.log import get_logger
from tasks.core.resources import Resources
from tasks.core.runtime import STOP, Manifest, StopRequested
from tasks.core.settings import raw
from tasks.registry import resolve

DEFAULT_TIMEOUT_S = 6 * 3600.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class SubprocessOptions(Config):
    """Limits of the subprocess launcher (from ``VF_TASK_*``)."""

    timeout_s: float | None = Field(DEFAULT_TIMEOUT_S, gt=0,
                                    description="time budget per task (VF_TASK_TIMEOUT_S)")
    memory: str | None = Field(None, description="memory limit per task, e.g. 4g (VF_TASK_MEMORY)")
    poll_s: float = Field(0.2, gt=0, le=10, description="how often the watchdog looks")
    log_tail: int = Field(20, gt=0, description="log lines quoted in a failure")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v, "VF_TASK_MEMORY")
            if not Path("/proc/self/stat").is_file():
                raise ValueError("a memory limit needs Linux (/proc); use the docker launcher "
                                 "with VF_DOCKER_MEMORY instead")
        return v

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else parse_size(self.memory)

    def with_resources(self, res: Resources | None) -> SubprocessOptions:
        """The step's time limit and memory from the resource table, where ``VF_TASK_*``
        did not set them (an explicit setting, ``none`` included, wins)."""
        if res is None:
            return self
        update = {k: v for k, v in (("timeout_s", res.time_limit_s), ("memory", res.memory))
                  if k not in self.model_fields_set}
        return self.model_copy(update=update) if update else self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SubprocessOptions:
        """Options from ``VF_TASK_TIMEOUT_S``, ``VF_TASK_MEMORY`` and ``VF_TASK_LOG_TAIL``."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        for key, name in (("timeout_s", "VF_TASK_TIMEOUT_S"), ("memory", "VF_TASK_MEMORY"),
                          ("log_tail", "VF_TASK_LOG_TAIL")):
            if value := raw(name, env):
                data[key] = None if value.lower() in ("none", "off", "0") else value
        return validate(cls, data, what="subprocess launcher (VF_TASK_*)")


# ---------------------------------------------------------------- the process group

def group_pids(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (Linux ``/proc``)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:  # it just ended
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            pids.append(int(entry.name))
    return pids


def process_memory(pid: int) -> int:
    """Bytes of memory ``pid`` uses: its PSS, else its resident set size; 0 when gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def group_memory(pgid: int) -> int:
    return sum(process_memory(pid) for pid in group_pids(pgid))


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _Watchdog(threading.Thread):
    """Kills the task's process group past its deadline or its memory limit."""

    def __init__(self, proc: subprocess.Popen, timeout_s: float | None, limit: int | None,
                 poll_s: float):
        super().__init__(daemon=True, name=f"vf-watchdog-{proc.pid}")
        self.proc, self.limit, self.poll_s = proc, limit, poll_s
        self.deadline = time.monotonic() + timeout_s if timeout_s else None
        self.reason: str | None = None  # "timeout" | "memory"
        self.peak = 0
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.proc.poll() is not None:
                return
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._kill("timeout")
                return
            if self.limit is not None:
                used = group_memory(self.proc.pid)
                self.peak = max(self.peak, used)
                if used > self.limit:
                    self._kill("memory")
                    return

    def _kill(self, reason: str) -> None:
        self.reason = reason
        kill_group(self.proc.pid)

    def stop(self) -> None:
        self._stop.set()


def _chunks(proc: subprocess.Popen, watchdog: _Watchdog) -> Iterator[bytes]:
    """The child's output as it comes, until it ends (or is killed and gone)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    exited_at: float | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            if sel.select(timeout=0.5):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return
                yield chunk
            elif proc.poll() is not None:
                # exited, but something it started still holds the pipe: stop waiting
                exited_at = exited_at or time.monotonic()
                if watchdog.reason or time.monotonic() - exited_at > 2.0:
                    return


def launch_subprocess(task: str, cfg: Mapping[str, Any], store: str | None,
                      timeout_s: float | None = None, *,
                      options: SubprocessOptions | None = None,
                      extra_env: Mapping[str, str] | None = None,
                      resources: Resources | None = None) -> Manifest:
    """Run ``task`` in a child process group and return its manifest; see the module doc.

    ``extra_env`` adds environment variables for the child (e.g. its thread count);
    ``resources`` (the step's row of the resource table) gives the time budget and memory
    limit where ``VF_TASK_*`` does not.
    """
    _func, cfg_cls = resolve(task)
    validate(cfg_cls, cfg, what=f"task {task!r}")  # fail before starting anything
    opts = (options or SubprocessOptions.from_env()).with_resources(resources)
    budget = timeout_s if timeout_s is not None else opts.timeout_s
    limit = opts.memory_bytes
    log = get_logger("launcher")
    tmp = work_dir("vf-launch-")
    try:
        cfg_path, manifest_path = tmp / "config.json", tmp / "manifest.json"
        error_path = tmp / "error.json"
        cfg_path.write_text(json.dumps(dict(cfg)))
        # -P: the child never imports from its working directory, where a user's own
        # tasks/, flows/ or reports/ folder would shadow the installed packages
        cmd = [sys.executable, "-P", "-m", "tasks", task, "--config", str(cfg_path),
               *(["--store", store] if store else []), "--manifest-out", str(manifest_path),
               "--error-out", str(error_path)]
        env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1",
               "VF_PARENT_PID": str(os.getpid()), "VF_PROGRESS_LINES": "1"}
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        tracking.track("pgid", proc.pid)
        limits = ", ".join(filter(None, [budget and f"time budget {budget:g}s",
                                         limit and f"memory limit {mib(limit)} MiB"]))
        log.info("%s: started in process %d%s", task, proc.pid, f" ({limits})" if limits else "")
        watchdog = _Watchdog(proc, budget, limit, min(opts.poll_s, budget or opts.poll_s))
        watchdog.start()
        tail: deque[str] = deque(maxlen=opts.log_tail)
        try:
            relay(iter_lines(_chunks(proc, watchdog)), log, task, tail)
            code = proc.wait()
        finally:
            watchdog.stop()
            kill_group(proc.pid)  # the task is done: nothing it started may linger
            if proc.poll() is None:
                proc.wait()
            tracking.untrack("pgid", proc.pid)
            if proc.stdout is not None:
                proc.stdout.close()
        if STOP.is_set() and code != 0:
            raise StopRequested(f"task {task} was stopped (the run is being interrupted)")
        if watchdog.reason == "timeout":
            raise TaskTimeoutError(
                f"task {task} ran past its time budget of {budget:g}s and was stopped, with "
                "every process it started; it left no manifest. Give it more time (a flow "
                "step: --set resources.<kind>.time_limit_s=SECONDS; any task: "
                f"VF_TASK_TIMEOUT_S=SECONDS, 'none': no budget). {quote_tail(tail)}")
        if watchdog.reason == "memory":
            raise TaskOutOfMemoryError(
                f"task {task} ran out of memory (limit {mib(limit or 0)} MiB; it reached "
                f"{mib(watchdog.peak)} MiB) and was stopped, with every process it started; "
                "it left no manifest. Raise the limit (a flow step's: --set "
                "resources.<kind>.memory=8g; any task's: VF_TASK_MEMORY=8g) or make the task "
                f"smaller (batch size, workers). {quote_tail(tail)}")
        if code == EXIT_OUT_OF_MEMORY:
            where = f"limit {mib(limit)} MiB" if limit else "no limit set: the machine's memory"
            raise TaskOutOfMemoryError(
                f"task {task} ran out of memory ({where}); it left no manifest. "
                f"{_last_error(tail, code)}")
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            hint = (" -- with no limit of ours reached, most likely the kernel's out-of-memory "
                    "killer: set VF_TASK_MEMORY below the machine's memory to have it stopped "
                    "and reported first") if code == -signal.SIGKILL else ""
            raise TaskCrashedError(f"task {task} was killed by {name}{hint}. {quote_tail(tail)}")
        if code != 0:
            raise raised_error(error_path, task, f"failed in subprocess: "
                                                f"{_last_error(tail, code)}", tail)
        try:
            data = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise TaskCrashedError(f"task {task} exited 0 but wrote no manifest. "
                                   f"{quote_tail(tail)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Manifest.model_validate(data)


def raised_error(error_path: Path, task: str, fallback: str, tail) -> BaseException:
    """The error the task raised, rebuilt from the record it wrote (the same class, message
    and fields as under the local launcher); without a record, a ``TaskCrashedError``."""
    try:
        record = json.loads(error_path.read_text())
    except (OSError, json.JSONDecodeError):
        return TaskCrashedError(f"task {task} {fallback}. {quote_tail(tail)}")
    return error_from_record(record)


def _last_error(tail: deque[str], code: int) -> str:
    last = next((ln for ln in reversed(tail) if ln.startswith("error:")), None)
    return last or f"exit code {code}"
