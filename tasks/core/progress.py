"""Progress a person can watch: bytes of a download, on a terminal as a bar, otherwise as a
log line every 25 %."""

from __future__ import annotations

import sys
import time


class ByteProgress:
    """A one-line progress bar on stderr (a terminal), or a log line every 25 % (a pipe)."""

    def __init__(self, label: str, total: int | None, done: int, enabled: bool | None, log):
        enabled = True if enabled is None else enabled
        self.label, self.total, self.done, self.enabled, self.log = label, total, done, \
            enabled, log
        self.start, self.start_done = time.monotonic(), done
        self.tty = enabled and sys.stderr.isatty()
        self.next_pct = 25
        self.last_draw = 0.0
        if enabled and not self.tty:
            size = f"{total / 1e6:.1f} MB" if total else "unknown size"
            extra = f", resuming at {done / 1e6:.1f} MB" if done else ""
            log.info("downloading %s (%s%s)", label, size, extra)

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = 100 * self.done / self.total if self.total else None
        now = time.monotonic()
        if self.tty and now - self.last_draw > 0.1:
            self.last_draw = now
            rate = (self.done - self.start_done) / max(now - self.start, 1e-6) / 1e6
            width = 30
            fill = int(width * (pct or 0) / 100)
            bar = "#" * fill + "-" * (width - fill)
            total = f"{self.total / 1e6:.1f}" if self.total else "?"
            pct_s = f"{pct:5.1f}%" if pct is not None else "   ?%"
            sys.stderr.write(f"\r{self.label[:40]:40s} [{bar}] {pct_s} "
                             f"{self.done / 1e6:.1f}/{total} MB {rate:.1f} MB/s")
            sys.stderr.flush()
        elif not self.tty and pct is not None and pct >= self.next_pct and pct < 100:
            self.log.info("  %s: %d%%", self.label, int(pct))
            while self.next_pct <= pct:
                self.next_pct += 25

    def close(self) -> None:
        if self.tty:
            self.last_draw = 0.0
            self.update(0)
            sys.stderr.write("\n")
            sys.stderr.flush()
