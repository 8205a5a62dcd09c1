"""Statistics over seeds, with no dependency beyond the standard library: the t
distribution (regularised incomplete beta), Welch's t-test between two sets of seeds, the
t-interval of a mean, where a number lies against an interval, and the difference of one
metric between two runs. Used by the comparisons, the trend, the question reports and the
final report (every "mean ± std, 95 % interval" in them comes from here)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

ALPHA = 0.05
CONFIDENCE = 1.0 - ALPHA  # of every interval over seeds

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-14
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float] | None:
    """Welch's t-test of mean(b) - mean(a) (unequal variances); None below two seeds a side."""
    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        return None
    m1, m2 = statistics.fmean(a), statistics.fmean(b)
    v1, v2 = statistics.variance(a), statistics.variance(b)
    se2 = v1 / n1 + v2 / n2
    if se2 == 0.0:  # every seed agrees on both sides
        return {"t": 0.0 if m1 == m2 else math.copysign(math.inf, m2 - m1),
                "df": float(n1 + n2 - 2), "p": 1.0 if m1 == m2 else 0.0}
    t = (m2 - m1) / math.sqrt(se2)
    df = se2 ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    return {"t": t, "df": df, "p": t_two_sided_p(t, df)}


def t_quantile(q: float, df: float) -> float:
    """The ``q``-quantile of Student's t with ``df`` degrees of freedom (no scipy): the
    root of ``t_two_sided_p`` by bisection, to about 1e-12."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"a quantile needs 0 < q < 1 (got {q})")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0 (got {df})")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    target = 2.0 * (1.0 - q)  # the two-sided p-value at the quantile
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE
               ) -> dict[str, Any] | None:
    """The t-interval of the mean over seeds: ``mean ± t(1 - alpha/2, n - 1) * s / sqrt(n)``
    with ``mean``, ``std`` (sample), ``n``, ``half`` (half-width), ``lo``, ``hi``,
    ``confidence`` and the ``values``; None below two values (one run: no interval)."""
    n = len(values)
    if n < 2:
        return None
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "half": half, "lo": mean - half,
            "hi": mean + half, "confidence": confidence, "values": [float(v) for v in values]}


def locate(value: float, interval: dict[str, Any]) -> dict[str, Any]:
    """Where ``value`` lies against ``interval`` (from :func:`t_interval`): ``position``
    (inside, above, below), ``gap`` (distance to the nearest edge, 0 inside) and
    ``from_mean`` (value - mean)."""
    if value < interval["lo"]:
        position, gap = "below", interval["lo"] - value
    elif value > interval["hi"]:
        position, gap = "above", value - interval["hi"]
    else:
        position, gap = "inside", 0.0
    return {"position": position, "gap": gap, "from_mean": value - interval["mean"]}


def interval_text(value: float | None, interval: dict[str, Any] | None, *,
                  percent: bool = False, what: str = "the reference") -> str:
    """In words: where ``value`` lies against our interval, with the gap (in percentage
    points when ``percent``: the values are fractions). A single run: no interval."""
    if interval is None:
        return "one run: no interval"
    if value is None:
        return "—"
    scale, unit = (100.0, " points") if percent else (1.0, "")
    lo, hi = scale * interval["lo"], scale * interval["hi"]
    span = f"[{lo:.2f}, {hi:.2f}]" if percent else f"[{lo:.4f}, {hi:.4f}]"
    where = locate(value, interval)
    level = f"{100 * interval['confidence']:g} %"
    from_mean = scale * where["from_mean"]
    text = (f"{what} lies inside our {level} interval {span} (n={interval['n']})"
            if where["position"] == "inside" else
            f"{what} lies {where['position']} our {level} interval {span} (n={interval['n']}) "
            f"by {scale * where['gap']:.2f}{unit}")
    return text + f"; {what} minus our mean: {from_mean:+.2f}{unit}"


def metric_delta(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Means, spreads and the difference B - A of one metric over each side's seeds, each
    side's per-seed values and 95 % t-interval (None for one seed), where B's mean lies
    against A's interval, and whether the difference exceeds the seed-to-seed spread
    (Welch's t-test, two-sided)."""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    ci_a, ci_b = t_interval(a), t_interval(b)
    out: dict[str, Any] = {
        "a": ma, "b": mb, "delta": mb - ma, "a_n": len(a), "b_n": len(b),
        "a_std": statistics.stdev(a) if len(a) > 1 else None,
        "b_std": statistics.stdev(b) if len(b) > 1 else None,
        "a_values": [float(v) for v in a], "b_values": [float(v) for v in b],
        "a_ci": None if ci_a is None else [ci_a["lo"], ci_a["hi"]],
        "b_ci": None if ci_b is None else [ci_b["lo"], ci_b["hi"]],
        "b_in_a": None if ci_a is None else locate(mb, ci_a)["position"],
        "p": None, "exceeds_spread": None}
    test = welch(a, b)
    if test is None:
        out["test"] = ("one seed each: no spread to compare with" if len(a) == len(b) == 1
                       else "fewer than 2 seeds on a side: no test")
    else:
        out["p"] = test["p"]
        out["exceeds_spread"] = test["p"] < ALPHA
        out["test"] = (f"Welch's t-test p={test['p']:.3g}: "
                       + ("exceeds" if out["exceeds_spread"] else "within")
                       + f" the seed-to-seed spread (alpha {ALPHA})")
    return out
