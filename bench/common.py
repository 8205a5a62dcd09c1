"""Helpers for benchmarks: alternate the contenders, report medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def race(contenders: dict[str, Callable[[], object]], repeats: int = 3,
         warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Run each contender ``warmup`` + ``repeats`` times, interleaved; return median seconds.

    ``clock`` is wall time by default; ``time.process_time`` (this process's CPU time) is
    steadier on a machine shared with other jobs, for single-threaded contenders (with
    several threads it also counts the time OpenMP threads spend spinning).
    """
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_ratios(title: str, medians: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    for name, sec in medians.items():
        print(f"  {name:<34} {sec:8.3f} s   ratio vs {baseline}: {sec / medians[baseline]:.3f}")
