"""Progress a person can watch: epochs, batches, images, bytes.

Code that makes progress calls :func:`emit` with an update (``id``, ``what``, ``done``,
``total``, ``unit``: ``epoch`` | ``batch`` | ``image`` | ``B``, ``info``: e.g. the current
loss). Where it goes depends on who runs the code:

- under a flow, the runner has set :data:`SINK` (the terminal's live bars and the Prefect
  progress artifact, see ``flows.common.run_step``);
- in a task's child process or container (``VF_PROGRESS_LINES=1``, set by the launchers) it
  is one line ``@@vf-progress {json}`` on stderr, which the launcher turns back into an update
  in the launching process (and never logs);
- standalone on a terminal (``visionflows mirror``, ``python -m tasks`` by hand) it draws its
  own live bars;
- otherwise (a pipe, a CI log, ``VF_NO_PROGRESS=1`` / ``--no-progress``) nothing: the log
  lines say the same at a slower pace (an epoch, 25 % of a download).

Updates of one bar are throttled (:class:`Ticker`), so a per-batch call costs a clock read.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tasks.core.settings import setting

PROTOCOL = "@@vf-progress "
LINES_ENV = "VF_PROGRESS_LINES"
OFF_ENV = "VF_NO_PROGRESS"
# Set by whoever runs the code to receive the updates: fn(update: dict).
SINK: contextvars.ContextVar[Callable[[dict], None] | None] = contextvars.ContextVar(
    "vf_progress_sink", default=None)
# The batch ticker of the epoch in progress (see batches()); the training loop ticks it.
BATCH: contextvars.ContextVar[Ticker | None] = contextvars.ContextVar("vf_batch", default=None)


def off() -> bool:
    return setting(OFF_ENV)


def emit(update: dict[str, Any]) -> None:
    """Send one progress update where this process's progress goes (see the module doc)."""
    sink = SINK.get()
    if sink is not None:
        sink(update)
    elif setting(LINES_ENV):
        sys.stderr.write(PROTOCOL + json.dumps(update, default=str) + "\n")
        sys.stderr.flush()
    elif not off() and sys.stderr.isatty():
        local_bars().update(update)


def parse_line(line: str) -> dict[str, Any] | None:
    """The update a ``@@vf-progress`` line carries, or None for any other line."""
    if not line.startswith(PROTOCOL):
        return None
    try:
        update = json.loads(line[len(PROTOCOL):])
    except json.JSONDecodeError:
        return None
    return update if isinstance(update, dict) and "id" in update else None


class Ticker:
    """One bar's updates, at most every ``interval_s`` (the last one always)."""

    def __init__(self, ident: str, what: str, total: int | None, unit: str,
                 interval_s: float = 0.25):
        self.ident, self.what, self.total, self.unit = ident, what, total, unit
        self.interval_s = interval_s
        self.last = 0.0

    def tick(self, done: int, info: dict[str, Any] | None = None, force: bool = False) -> None:
        now = time.monotonic()
        final = self.total is not None and done >= self.total
        if force or final or now - self.last >= self.interval_s:
            self.last = now
            emit({"id": self.ident, "what": self.what, "done": done, "total": self.total,
                  "unit": self.unit, "info": info or {}, "final": final})


def batch_done(done: int, total: int) -> None:
    """Called by the training loop after each batch (cheap when nobody listens)."""
    ticker = BATCH.get()
    if ticker is not None:
        ticker.total = total
        ticker.tick(done)


class batches:  # noqa: N801 - used as a context manager, like a function
    """``with batches(ident, what):`` the training loop's :func:`batch_done` calls inside
    drive a bar of the epoch's batches."""

    def __init__(self, ident: str, what: str):
        self.ticker = Ticker(ident, what, None, "batch")
        self._token = None

    def __enter__(self) -> Ticker:
        self._token = BATCH.set(self.ticker)
        return self.ticker

    def __exit__(self, *exc) -> None:
        BATCH.reset(self._token)


# ---------------------------------------------------------------- terminal bars

def _amount(done: float, total: float | None, unit: str) -> str:
    if unit == "B":
        def mb(x: float) -> str:
            return f"{x / 1e6:.1f}"

        return f"{mb(done)}/{mb(total) if total else '?'} MB"
    return f"{int(done)}/{int(total) if total else '?'} {unit}{'s' if unit != 'B' else ''}"


class TerminalBars:
    """Live bars on the terminal (rich), one per update id; finished ones stay as a line."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=30), TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"), TimeRemainingColumn(),
            TransferSpeedColumn(), TextColumn("{task.fields[info]}"),
            console=Console(file=sys.stderr), transient=False, redirect_stdout=False,
            redirect_stderr=False, refresh_per_second=4)
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.started = False

    def update(self, u: dict[str, Any]) -> None:
        info = u.get("info") or {}
        text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in info.items())
        with self.lock:
            if not self.started:
                self.progress.start()
                self.started = True
            tid = self.tasks.get(u["id"])
            fields = {"amount": _amount(u.get("done", 0), u.get("total"), u.get("unit", "")),
                      "info": text}
            if tid is None:
                tid = self.progress.add_task(str(u.get("what", u["id"]))[:48],
                                             total=u.get("total"), **fields)
                self.tasks[u["id"]] = tid
            self.progress.update(tid, completed=u.get("done", 0), total=u.get("total"),
                                 description=str(u.get("what", u["id"]))[:48], **fields)
            if u.get("unit") == "batch" and u.get("final"):  # an epoch's batches: gone
                self.progress.remove_task(tid)
                del self.tasks[u["id"]]

    def stop(self) -> None:
        with self.lock:
            if self.started:
                self.progress.stop()
                self.started = False


_LOCAL: TerminalBars | None = None


def local_bars() -> TerminalBars:
    """This process's own bars (standalone use), stopped at exit."""
    global _LOCAL
    if _LOCAL is None:
        _LOCAL = TerminalBars()
        atexit.register(_LOCAL.stop)
    return _LOCAL


# ---------------------------------------------------------------- downloads

class ByteProgress:
    """A download's progress: bytes as an update every quarter second; in a log (no
    terminal, or progress off) a line at the start and every 25 %."""

    def __init__(self, label: str, total: int | None, done: int, enabled: bool | None, log):
        self.enabled = True if enabled is None else enabled
        self.log, self.total, self.done = log, total, done
        self.ticker = Ticker(f"download:{label}:{id(self)}", label, total, "B")
        self.logs = self.enabled and (off() or (SINK.get() is None and not sys.stderr.isatty()
                                                and not setting(LINES_ENV)))
        self.next_pct = 25
        if self.logs:
            size = f"{total / 1e6:.1f} MB" if total else "unknown size"
            extra = f", resuming at {done / 1e6:.1f} MB" if done else ""
            log.info("downloading %s (%s%s)", label, size, extra)

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.logs:
            pct = 100 * self.done / self.total if self.total else None
            if pct is not None and self.next_pct <= pct < 100:
                self.log.info("  %s: %d%%", self.ticker.what, int(pct))
                while self.next_pct <= pct:
                    self.next_pct += 25
        elif not off():
            self.ticker.tick(self.done)

    def close(self) -> None:
        if self.enabled and not self.logs and not off():
            self.ticker.tick(self.done, force=True)
