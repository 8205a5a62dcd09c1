"""Diagnostic tasks for the launchers: ``selftest.sleep``, ``selftest.alloc`` (limits) and
``selftest.fail`` (errors crossing the process boundary).

They do nothing useful on purpose: one sleeps, one holds memory, each writing a
``started.json`` output first and its manifest last, like every task. They show (and the
reliability tests prove) that a task past its time budget or its memory limit is stopped,
reported as such, and leaves no manifest::

    VF_TASK_TIMEOUT_S=2 python -c "from flows.launchers import launch; \\
        launch('selftest.sleep', {'seconds': 60}, 'file:///tmp/st', 'subprocess')"
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Literal

from pydantic import Field

from tasks.core.config import Config
from tasks.core.runtime import Manifest, TaskRun
from tasks.core.store import Store


class SleepConfig(Config):
    """Sleep ``seconds``; with ``spawn``, a child process sleeps alongside (a stand-in for a
    worker process such as ultralytics' trainer or a DataLoader worker)."""

    out: str = "selftest/sleep"
    seconds: float = Field(1.0, ge=0, le=7 * 24 * 3600)
    spawn: bool = False


class AllocConfig(Config):
    """Allocate and touch ``mib`` MiB in ``chunk_mib`` steps, then hold it ``hold_s``."""

    out: str = "selftest/alloc"
    mib: int = Field(64, gt=0, le=1 << 20)
    chunk_mib: int = Field(16, gt=0)
    pause_s: float = Field(0.02, ge=0, description="between chunks")
    hold_s: float = Field(0.0, ge=0)
    headroom_mib: int | None = Field(
        None, gt=0, description="simulate a machine with only this much memory left: cap "
        "this process's data segment (RLIMIT_DATA) so that going past it raises MemoryError")


class FailConfig(Config):
    """Count this attempt in ``<out>/attempts.json``, then fail with the ``error`` asked for:
    a transient one (store trouble, a failed download), a permanent one (a bad config, a
    missing checkpoint), or a crash that is not ours."""

    out: str = "selftest/fail"
    error: Literal["store", "config", "weights-transient", "weights-missing", "crash"] = "store"


def sleep(cfg: SleepConfig, store: Store) -> Manifest:
    """Sleep, having stored ``started.json`` (with the pids involved) first."""
    with TaskRun("selftest.sleep", cfg, store, cfg.out) as run:
        child = None
        if cfg.spawn:
            child = subprocess.Popen([sys.executable, "-c",
                                      f"import time; time.sleep({cfg.seconds + 60})"])
        run.put_json("started", {"pid": os.getpid(), "child_pid": child.pid if child else None,
                                 "at": time.time()}, "started.json")
        run.log.info("sleeping %gs%s", cfg.seconds, " (and a child process)" if child else "")
        until = time.monotonic() + cfg.seconds
        try:
            while (left := until - time.monotonic()) > 0:  # short calls, like a training loop
                time.sleep(min(left, 0.1))
        finally:
            if child is not None:
                child.kill()
                child.wait()
        return run.finish({"slept_s": cfg.seconds})


def alloc(cfg: AllocConfig, store: Store) -> Manifest:
    """Hold ``mib`` MiB of touched memory; a MemoryError is what running out looks like."""
    with TaskRun("selftest.alloc", cfg, store, cfg.out) as run:
        run.put_json("started", {"pid": os.getpid(), "at": time.time()}, "started.json")
        if cfg.headroom_mib:
            _cap_data(cfg.headroom_mib << 20)
        run.log.info("allocating %d MiB in %d MiB steps", cfg.mib, cfg.chunk_mib)
        held: list[bytes] = []
        done = 0
        while done < cfg.mib:
            step = min(cfg.chunk_mib, cfg.mib - done)
            held.append(b"\x01" * (step << 20))  # written, so resident
            done += step
            time.sleep(cfg.pause_s)
        time.sleep(cfg.hold_s)
        return run.finish({"allocated_mib": done})


def _cap_data(headroom: int) -> None:
    import resource

    with open("/proc/self/status") as fh:
        used = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmData:"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = used + headroom if hard == resource.RLIM_INFINITY else min(used + headroom, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))


def fail(cfg: FailConfig, store: Store) -> Manifest:
    """Fail on purpose, after recording the attempt (see ``FailConfig``)."""
    from tasks.core.errors import ConfigError, StoreError
    from tasks.inputs.weights import WeightsError

    with TaskRun("selftest.fail", cfg, store, cfg.out) as run:
        run.claim()  # the counter is written below, not through run.put_*: it is ours
        key = run.key("attempts.json")
        attempts = (store.get_json(key) if store.exists(key) else 0) + 1
        store.put_json(key, attempts)
        run.log.info("attempt %d: failing with %s", attempts, cfg.error)
        if cfg.error == "store":
            raise StoreError("simulated: the store did not answer")
        if cfg.error == "config":
            raise ConfigError("simulated: epochs must be > 0")
        if cfg.error == "weights-transient":
            raise WeightsError("simulated: the download failed", transient=True)
        if cfg.error == "weights-missing":
            raise WeightsError("simulated: no weights in the mirror", transient=False)
        raise ZeroDivisionError("simulated: a bug")
