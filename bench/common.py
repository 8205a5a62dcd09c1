"""Helpers for benchmarks: alternate the contenders, report medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def race_times(contenders: dict[str, Callable[[], object]], repeats: int = 3,
               warmup: int = 1, clock: Callable[[], float] = time.perf_counter,
               alternate: bool = False) -> dict[str, list[float]]:
    """Run each contender ``warmup`` + ``repeats`` times, interleaved (one round = each
    contender once); return every timed run's seconds, in round order.

    ``clock`` is wall time by default; ``time.process_time`` (this process's CPU time) is
    steadier on a machine shared with other jobs, for single-threaded contenders (with
    several threads it also counts the time OpenMP threads spend spinning). ``alternate``
    runs every other round in reverse order, so no contender always follows the same one.
    """
    names = list(contenders)
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names[::-1] if alternate and r % 2 else names):
            start = clock()
            contenders[name]()
            times[name].append(clock() - start)
    return times


def race(contenders: dict[str, Callable[[], object]], repeats: int = 3,
         warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Run each contender ``warmup`` + ``repeats`` times, interleaved; return median seconds
    (see ``race_times``)."""
    times = race_times(contenders, repeats, warmup, clock)
    return {name: statistics.median(ts) for name, ts in times.items()}


def paired_ratio(times: dict[str, list[float]], name: str, base: str
                 ) -> tuple[float, float, float]:
    """Median and quartiles of ``name``/``base`` taken round by round: runs minutes apart
    see different load, runs side by side the same, so per-round ratios are steadier than
    a ratio of medians on a shared machine."""
    ratios = sorted(a / b for a, b in zip(times[name], times[base], strict=True))
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q1, q3


def print_ratios(title: str, medians: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    for name, sec in medians.items():
        print(f"  {name:<34} {sec:8.3f} s   ratio vs {baseline}: {sec / medians[baseline]:.3f}")
