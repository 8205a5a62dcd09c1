"""What the out-of-process launchers share: splitting a child's byte stream into lines,
relaying them into our logger at their own level, and quoting the tail of a failed task."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator

from tasks.core import progress
from tasks.core.log import redact

# A line of our CLI's log format (tasks.core.log.setup_cli_logging), as a task's child prints it
_LEVEL_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")


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
    """Log a child task's output lines, redacted, keeping the last ones in ``tail`` (a deque);
    its progress lines (``@@vf-progress``) become progress updates in this process instead."""
    for line in lines:
        if (update := progress.parse_line(line)) is not None:
            progress.emit(update)
            continue
        line = redact(line.rstrip())
        tail.append(line)
        emit(log, task, line)


def quote_tail(tail: Iterable[str]) -> str:
    """The last log lines of a failed task, for its error message."""
    lines = list(tail)
    return f"Last {len(lines)} log lines:\n" + ("\n".join(f"  | {ln}" for ln in lines)
                                                 or "  | (no output)")
