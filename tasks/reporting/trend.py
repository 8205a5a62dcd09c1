"""A question's nightly trend: the primary metric of its last N runs of one profile over
time, champion changes marked, regressions flagged.

For a question with a champion the runs are its promotion candidates
(``models/<question>[-<profile>]/candidates/``, one small record per run, oldest first),
joined with each run's flow manifest for the champion it was measured against, its
``regression_tolerance`` and its comparison with that champion. A run counts as a
regression when it is worse than that champion by more than its tolerance (the verdict its
flow recorded when there is one). Q3 keeps no champion: its trend lists its runs (images
segmented and rejected) without a metric.

Where runs keep several seeds per cell (Q1 full: ``repeats=3``), each run is also checked
against the interval recorded by the champion it was measured against: that run's best cell
by the mean of the primary metric, its 95 % t-interval over seeds, and this run's mean of the
same cell. A mean outside the interval on the worse side is flagged as a DROP (a change
larger than seed-to-seed noise), even when it is within ``regression_tolerance`` of the
champion's single best seed. The cells come from the question's comparer (handed in by
``tasks.comparers``; this module imports no question).

Used by the final report (one trend per question) and ``visionflows compare --trend Q``
(task ``report.trend``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from tasks.core.config import Config
from tasks.core.errors import ConfigError, MissingKeyError
from tasks.core.layout import flow_manifest_key, latest_key
from tasks.core.promote import champion_key, champion_question, history, is_regression
from tasks.core.runtime import Manifest, TaskRun
from tasks.core.store import Store
from tasks.reporting.compare import Cell
from tasks.reporting.render import Image, Report, Section, Table, metric_kind, write_report
from tasks.reporting.runs import RunInfo, finished_runs
from tasks.reporting.stats import CONFIDENCE, locate, t_interval

DEFAULT_LAST = 20
# a question's cells of a run (its Comparer.cells), for the interval check
CellsOf = Callable[[Store, RunInfo], dict[str, Cell]]


def interval_check(reference: dict[str, Cell], new: dict[str, Cell], metric: str, mode: str,
                   reference_run: str) -> dict[str, Any]:
    """A run against the interval recorded by ``reference_run``: the reference's best cell
    by the mean of ``metric`` over its seeds, its t-interval, and the new run's mean of that
    cell. ``drop`` is True when the new mean lies outside the interval on the worse side
    (below for ``mode`` max, above for min)."""
    scored = {name: [float(s[metric]) for s in c.seeds if metric in s]
              for name, c in reference.items()}
    scored = {name: v for name, v in scored.items() if v}
    out: dict[str, Any] = {"reference_run": reference_run, "metric": metric, "cell": None,
                           "interval": None, "value": None, "n": 0, "position": None,
                           "gap": None, "drop": False}
    if not scored:
        out.update(short="—", text=f"run {reference_run} recorded no {metric}: no check")
        return out
    pick = max if mode == "max" else min
    cell = pick(scored, key=lambda name: statistics.fmean(scored[name]))
    ci = t_interval(scored[cell])
    values = [float(s[metric]) for s in (new[cell].seeds if cell in new else []) if metric in s]
    out.update(cell=cell, interval=ci, n=len(values))
    if not values:
        out.update(short=f"{cell} not in this run",
                   text=f"{cell} (the best cell of run {reference_run}) is not in this run: "
                        "no check")
        return out
    value = statistics.fmean(values)
    out["value"] = value
    if ci is None:
        out.update(short="one run: no interval",
                   text=f"run {reference_run} has one seed of {cell}: one run, no interval")
        return out
    where = locate(value, ci)
    drop = where["position"] == ("below" if mode == "max" else "above")
    pct = metric_kind(metric) == "pct"
    scale, unit = (100.0, " points") if pct else (1.0, "")
    span = (f"[{scale * ci['lo']:.2f}, {scale * ci['hi']:.2f}]" if pct
            else f"[{ci['lo']:.4f}, {ci['hi']:.4f}]")
    gap = f" by {scale * where['gap']:.2f}{unit}" if where["gap"] else ""
    level = f"{100 * CONFIDENCE:g} %"
    out.update(position=where["position"], gap=where["gap"], drop=drop,
               short=("DROP: " if drop else "") + f"{where['position']} {span}{gap}",
               text=(f"{cell}: mean {metric} "
                     f"{f'{scale * value:.2f} %' if pct else f'{value:.4f}'} over "
                     f"{len(values)} seed(s) lies {where['position']} the {level} interval "
                     f"{span} recorded by run {reference_run} (n={ci['n']}){gap}"
                     + (": a drop beyond seed-to-seed noise" if drop else "")))
    return out


def _flow_manifest(store: Store, flow: str, run_id: str) -> dict[str, Any] | None:
    try:
        return store.get_json(flow_manifest_key(flow, run_id))
    except MissingKeyError:
        return None


def trend_rows(store: Store, flow: str, profile: str, last: int = DEFAULT_LAST,
               cells_of: CellsOf | None = None) -> list[dict[str, Any]]:
    """One row per run, oldest first: the last ``last`` runs of ``flow`` of ``profile``.

    With ``cells_of`` (the question's comparer), each run with a champion before it also
    gets ``interval`` (:func:`interval_check` against that champion's run) and ``drop``."""
    cache: dict[str, dict[str, Cell]] = {}

    def cells(run_id: str, manifest: dict[str, Any]) -> dict[str, Cell]:
        if run_id not in cache:
            cache[run_id] = cells_of(store, RunInfo(flow, run_id, run_id, manifest))
        return cache[run_id]

    candidates = history(store, champion_question(flow, profile))
    if not candidates:
        return [{"run_id": m["run_id"], "time": m.get("finished_at"), "metric": None,
                 "value": None, "status": m.get("status", "ok"), "ok": m.get("ok"),
                 "rejected": m.get("rejected"), "comparison": _link(m)}
                for m in finished_runs(store, flow, profile)[-last:]]
    rows, champion = [], None
    for i, cand in enumerate(candidates):
        keep = i >= len(candidates) - last
        flow_m = _flow_manifest(store, flow, cand["run_id"]) if keep else None
        champ_info = (flow_m or {}).get("champion") or {}
        before = champ_info.get("champion_value", champion) if flow_m else champion
        before_id = champ_info.get("champion_run_id") if flow_m else None
        promoted = cand.get("status") == "promoted"
        if keep:
            cfg = (flow_m or {}).get("config") or {}
            tolerance = float(cfg.get("regression_tolerance") or 0.0)
            recorded = ((flow_m or {}).get("comparison") or {}).get("verdict") or {}
            if "regression" in recorded and recorded.get("metric"):
                regression = bool(recorded["regression"])
            else:
                regression = before is not None and is_regression(
                    float(cand["value"]), float(before), cand.get("mode", "max"), tolerance)
            check = None
            if cells_of is not None and flow_m is not None and before_id:
                before_m = _flow_manifest(store, flow, before_id)
                check = (interval_check(cells(before_id, before_m),
                                        cells(cand["run_id"], flow_m), cand.get("metric"),
                                        cand.get("mode", "max"), before_id)
                         if before_m is not None else None)
            rows.append({
                "interval": check, "drop": bool(check and check["drop"]),
                "run_id": cand["run_id"], "time": cand.get("recorded_at"),
                "metric": cand.get("metric"), "value": cand.get("value"),
                "champion_before": before, "champion_before_id": before_id,
                "delta": None if before is None else float(cand["value"]) - float(before),
                "promoted": promoted, "status": cand.get("status"),
                "regression": regression, "tolerance": tolerance,
                "finished": flow_m is not None, "comparison": _link(flow_m or {})})
        if promoted:
            champion = cand["value"]
    return rows


def _link(flow_m: dict[str, Any]) -> str | None:
    report = ((flow_m.get("comparison") or {}).get("report") or {})
    return report.get("report.html")


def _when(iso: str | None) -> str:
    if not iso:
        return "?"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def trend_section(store: Store, flow: str, profile: str, last: int = DEFAULT_LAST,
                  title: str | None = None, rows: list[dict[str, Any]] | None = None,
                  cells_of: CellsOf | None = None) -> Section | None:
    """The trend of ``flow``'s ``profile`` runs as a report section (None: no runs)."""
    rows = trend_rows(store, flow, profile, last, cells_of) if rows is None else rows
    if not rows:
        return None
    key = champion_question(flow, profile)
    sec = Section(title or f"Trend: the last {len(rows)} {flow} runs ({profile} profile)")
    if rows[0]["metric"] is None:
        sec.paragraphs.append(f"{flow} keeps no champion, so there is no primary metric to "
                              "follow: its runs, oldest first.")
        sec.tables.append(Table(["run id", "finished (UTC)", "status", "images ok",
                                 "rejected", "comparison with the previous run"],
                                [[r["run_id"], _when(r["time"]), r["status"], r["ok"],
                                  r["rejected"], r["comparison"] and store.url(r["comparison"])]
                                 for r in rows]))
        return sec
    metric = rows[-1]["metric"]
    n_reg = sum(r["regression"] for r in rows)
    n_new = sum(r["promoted"] for r in rows)
    sec.paragraphs.append(
        f"{metric} of each run's best model, oldest first; champion record "
        f"{store.url(champion_key(key))}. {n_new} champion change(s) and {n_reg} "
        "regression(s) (worse than the champion before the run by more than its "
        "regression_tolerance) among these runs.")
    checks = [r for r in rows if r.get("interval")]
    if checks:
        n_drop = sum(r["drop"] for r in rows)
        sec.paragraphs.append(
            f"Against the recorded interval: each run's mean over its seeds of the best cell "
            f"of the champion before it, beside that champion run's {100 * CONFIDENCE:g} % "
            f"t-interval over seeds; {n_drop} drop(s) outside it among these runs."
            + "".join(f" {r['run_id']}: {r['interval']['text']}." for r in rows if r["drop"]))
    sec.tables.append(Table(
        ["run id", "recorded (UTC)", metric, "champion before", "B - champion", "champion",
         "regression", *(["vs the champion's interval (best cell, mean over seeds)"]
                         if checks else []), "comparison with the champion"],
        [[r["run_id"], _when(r["time"]), r["value"], r["champion_before"],
          None if r["delta"] is None else f"{r['delta']:+.4f}",
          "NEW CHAMPION" if r["promoted"] else (r["status"] or "?"),
          "REGRESSION" if r["regression"] else "no",
          *([(r["interval"] or {}).get("short", "—")] if checks else []),
          store.url(r["comparison"]) if r["comparison"] else
          ("no flow manifest" if not r["finished"] else "—")] for r in rows]))
    if len(rows) >= 2:
        from tasks.ml import plots

        sec.images.append(Image(f"trend-{key}.png", plots.trend(
            [f"{_when(r['time'])}\n{r['run_id'][-6:]}" for r in rows],
            [r["value"] for r in rows], metric, f"{key}: {metric} per run",
            champion=[r["champion_before"] for r in rows],
            promoted=[r["promoted"] for r in rows],
            regressions=[r["regression"] for r in rows]),
            "The metric per run (oldest first); dashed: the champion before each run; star: "
            "a new champion; red cross: a regression"))
    return sec


class TrendConfig(Config):
    """The trend page of one question and profile."""

    question: str = Field(description="the question's flow name")
    profile: str | None = Field(None, description="default: the profile of the latest run")
    last: int = Field(DEFAULT_LAST, ge=1, le=1000, description="how many runs")
    out: str


def latest_profile(store: Store, flow: str) -> str | None:
    try:
        run_id = store.get_json(latest_key(flow))["run_id"]
    except MissingKeyError:
        return None
    m = _flow_manifest(store, flow, run_id)
    return None if m is None else m.get("profile")


def render(cfg: TrendConfig, store: Store, cells_of: CellsOf | None = None) -> Manifest:
    """Write the trend page (HTML + Markdown) under ``cfg.out``; ``cells_of`` (the
    question's comparer) adds the check against each champion's recorded interval."""
    profile = cfg.profile or latest_profile(store, cfg.question)
    if profile is None:
        raise ConfigError(f"no finished {cfg.question} run in {store.uri}: nothing to trend "
                          f"(run `visionflows run {cfg.question}` first)")
    rows = trend_rows(store, cfg.question, profile, cfg.last, cells_of)
    if not rows:
        raise ConfigError(f"no {cfg.question} run of the {profile} profile in {store.uri}: "
                          "nothing to trend")
    with TaskRun("report.trend", cfg, store, cfg.out) as run:
        sec = trend_section(store, cfg.question, profile, cfg.last, rows=rows)
        report = Report(f"{cfg.question} trend ({profile} profile)", meta={
            "question": cfg.question, "profile": profile, "store": store.uri,
            "generated": datetime.now(UTC).isoformat(timespec="seconds")},
            sections=[sec])
        run.outputs.update(write_report(report, store, cfg.out))
        return run.finish({"question": cfg.question, "profile": profile, "runs": rows,
                           "regressions": sum(bool(r.get("regression")) for r in rows),
                           "drops": sum(bool(r.get("drop")) for r in rows),
                           "champion_changes": sum(bool(r.get("promoted")) for r in rows)})
