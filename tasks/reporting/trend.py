"""A question's nightly trend: the primary metric of its last N runs of one profile over
time, champion changes marked, regressions flagged.

For a question with a champion the runs are its promotion candidates
(``models/<question>[-<profile>]/candidates/``, one small record per run, oldest first),
joined with each run's flow manifest for the champion it was measured against, its
``regression_tolerance`` and its comparison with that champion. A run counts as a
regression when it is worse than that champion by more than its tolerance (the verdict its
flow recorded when there is one). Q3 keeps no champion: its trend lists its runs (images
segmented and rejected) without a metric.

Used by the final report (one trend per question) and ``visionflows compare --trend Q``
(task ``report.trend``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from tasks.core.config import Config
from tasks.core.errors import ConfigError, MissingKeyError
from tasks.core.promote import champion_key, champion_question, history, is_regression
from tasks.core.runtime import Manifest, TaskRun
from tasks.core.store import Store, join
from tasks.reporting.compare import finished_runs, flow_manifest_key
from tasks.reporting.render import Image, Report, Section, Table, write_report

DEFAULT_LAST = 20


def _flow_manifest(store: Store, flow: str, run_id: str) -> dict[str, Any] | None:
    try:
        return store.get_json(flow_manifest_key(flow, run_id))
    except MissingKeyError:
        return None


def trend_rows(store: Store, flow: str, profile: str, last: int = DEFAULT_LAST
               ) -> list[dict[str, Any]]:
    """One row per run, oldest first: the last ``last`` runs of ``flow`` of ``profile``."""
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
            rows.append({
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
                  title: str | None = None, rows: list[dict[str, Any]] | None = None
                  ) -> Section | None:
    """The trend of ``flow``'s ``profile`` runs as a report section (None: no runs)."""
    rows = trend_rows(store, flow, profile, last) if rows is None else rows
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
    sec.tables.append(Table(
        ["run id", "recorded (UTC)", metric, "champion before", "B - champion", "champion",
         "regression", "comparison with the champion"],
        [[r["run_id"], _when(r["time"]), r["value"], r["champion_before"],
          None if r["delta"] is None else f"{r['delta']:+.4f}",
          "NEW CHAMPION" if r["promoted"] else (r["status"] or "?"),
          "REGRESSION" if r["regression"] else "no",
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

    question: str = Field(description="the flow, e.g. q1-mlp")
    profile: str | None = Field(None, description="default: the profile of the latest run")
    last: int = Field(DEFAULT_LAST, ge=1, le=1000, description="how many runs")
    out: str


def latest_profile(store: Store, flow: str) -> str | None:
    try:
        run_id = store.get_json(join("runs", flow, "latest.json"))["run_id"]
    except MissingKeyError:
        return None
    m = _flow_manifest(store, flow, run_id)
    return None if m is None else m.get("profile")


def render(cfg: TrendConfig, store: Store) -> Manifest:
    """Write the trend page (HTML + Markdown) under ``cfg.out``."""
    profile = cfg.profile or latest_profile(store, cfg.question)
    if profile is None:
        raise ConfigError(f"no finished {cfg.question} run in {store.uri}: nothing to trend "
                          f"(run `visionflows run {cfg.question}` first)")
    rows = trend_rows(store, cfg.question, profile, cfg.last)
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
                           "champion_changes": sum(bool(r.get("promoted")) for r in rows)})
