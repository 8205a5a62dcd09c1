"""``report.final``: the comparison report across every question.

Reads, for each question, the flow manifest of its latest run (``runs/<q>/latest.json``) or
of a given run id, then that run's question report manifest. The contract each question
keeps (see ``flows/common.write_flow_manifest`` and the question report tasks):

- flow manifest ``runs/<q>/<run-id>/manifest.json``: ``run_id``, ``profile``, ``config``,
  ``report`` (output name -> store key; ``report.html`` and the report's images);
- question report manifest (beside ``report.html``): ``metrics.summary`` (one row per
  experiment run: ``variant``, ``status``, ``metric``, ``value``, ``time_s``, ``run``) and
  ``metrics.comparison`` (``item``, ``ours``, ``reference``, optional ``kind``: ``pct``,
  ``pts``, ``score``, ``time``, ``count``, ``choice``, ``text``);
- ``report.json`` beside it (``tasks.reporting.render.report_index``): the question's own
  "why our numbers may differ" text and each figure's caption and role (main or detail).

Questions that never ran, and runs that failed, are shown as such, never dropped. Every
number is formatted by its kind; a difference is given only where the two values measure
the same thing (a choice agrees or differs; a smoke run's measurements on generated data are
not compared with the reference's). Each question links its own report: a ``file://`` URI
for a local store, a presigned URL for S3 (valid ``link_expiry_s``, stated in the report).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import Field

from tasks.core.config import Config, config_hash
from tasks.core.errors import MissingKeyError
from tasks.core.layout import flow_manifest_key, latest_key
from tasks.core.runtime import IntegrityError, Manifest, TaskRun, find_manifest, find_verified
from tasks.core.store import LINK_EXPIRY_MAX_S, Store, join, link_expiry_seconds
from tasks.reporting.render import (
    Image,
    Link,
    Report,
    Section,
    Table,
    fmt,
    metric_kind,
    write_report,
)
from tasks.reporting.stats import CONFIDENCE
from tasks.reporting.trend import CellsOf, trend_section

MEASURED = ("pct", "pts", "score", "time")  # kinds compared only between like data


def every_question() -> list[str]:
    """Every question's flow name, in report order (from the descriptors)."""
    from tasks.questions import question_flows

    return list(question_flows())


def question_titles() -> dict[str, str]:
    """Each question's section title (its descriptor's), by flow name."""
    from tasks.questions import question_flows

    return {name: f.title for name, f in question_flows().items()}


class FinalReportConfig(Config):
    out: str
    questions: list[str] = Field(default_factory=every_question, min_length=1)
    run_ids: dict[str, str] = Field(default_factory=dict,
                                    description="question -> run id; default: the latest")
    failures: dict[str, str] = Field(default_factory=dict,
                                     description="question -> error of a flow run that failed")
    title: str = "visionflows: every experiment, ours beside the original report"
    link_expiry_s: int | None = Field(
        None, gt=0, le=LINK_EXPIRY_MAX_S,
        description="how long the presigned links to each question's report stay valid "
                    "(S3 stores); default VF_LINK_EXPIRY or 7 days")


def _load_question(store: Store, question: str, run_id: str | None) -> dict[str, Any] | None:
    if run_id is None:
        try:
            run_id = store.get_json(latest_key(question))["run_id"]
        except MissingKeyError:
            return None
    try:
        flow = store.get_json(flow_manifest_key(question, run_id))
    except MissingKeyError:
        return {"run_id": run_id, "missing": True}
    report_dir = flow["report"]["report.html"].rsplit("/", 1)[0]
    try:
        report = find_verified(store, report_dir)
    except IntegrityError as exc:  # shown as such in the final report, never used as is
        return {"run_id": run_id, "missing": True, "damaged": str(exc)}
    try:
        index = store.get_json(join(report_dir, "report.json"))
    except MissingKeyError:  # a report written before report.json existed
        index = None
    return {"run_id": run_id, "flow": flow, "report": report, "report_dir": report_dir,
            "index": index}


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def comparison_kind(row: dict) -> str:
    """A comparison row's kind: its own, else ``choice`` for "best ..." items, else from the
    item's name."""
    if row.get("kind"):
        return row["kind"]
    if str(row.get("item", "")).startswith("best "):
        return "choice"
    return metric_kind(str(row.get("item", ""))) or "text"


def difference(ours: Any, ref: Any, kind: str, comparable_data: bool) -> str:
    """Ours against the reference, only where that means something: a choice agrees or
    differs; accuracies differ by percentage points, scores by their difference, times by a
    ratio (all only when ``comparable_data``: the same kind of data as the reference);
    counts by their difference; text is not compared."""
    a, b = _number(ours), _number(ref)
    if ours is None or ref is None:
        return "—"
    if kind == "choice":
        return "agrees" if ours == ref else "differs"
    if kind in MEASURED and not comparable_data:
        return "not comparable (generated data)"
    if a is None or b is None:
        return "same" if ours == ref else "—"
    if kind == "pct":
        return fmt(100 * (a - b), "pts")
    if kind == "pts":
        return fmt(a - b, "pts")
    if kind == "score":
        return f"{a - b:+.3f}"
    if kind == "time":
        return f"{a / b:.2f}x" if b else "—"
    if kind == "count":
        return "same" if a == b else f"{int(a - b):+,}"
    return "same" if a == b else "—"


def ours_text(value: Any, std: Any, n: Any, kind: str | None) -> str:
    """Our value by kind; a repeated one as ``mean ± std (n=...)`` (percentages: the
    standard deviation in points)."""
    if _number(std) is None or not n or int(n) < 2:
        return fmt(value, kind)
    spread = f"{100 * std:.2f} pts" if kind == "pct" else fmt(std, kind)
    return f"{fmt(value, kind)} ± {spread} (n={int(n)})"


def per_seed(values: Any, kind: str | None) -> str | None:
    """Every seed's value, for a repeated cell (None for one run)."""
    if not isinstance(values, list) or len(values) < 2:
        return None
    return ", ".join(fmt(v, kind) for v in values)


def _why(info: dict) -> str:
    """The question's own explanation (its report.json), or what the flow manifest says."""
    why = (info.get("index") or {}).get("why")
    if why:
        return why
    profile = info["flow"].get("profile", "?")
    return (f"Profile {profile}. This question's report predates its own explanation of the "
            "differences: rerun it for one.")


def _provenance(store: Store, q: dict) -> list[list[Any]]:
    flow = q["flow"]
    rows = flow.get("summary_rows") or (q["report"].metrics.get("summary", [])
                                        if q["report"] else [])
    prov: dict = {}
    for row in rows:
        m = find_manifest(store, row.get("run", "")) if row.get("run") else None
        if m is not None:
            prov = m.provenance
            break
    if not prov and q["report"] is not None:
        prov = q["report"].provenance
    duration = flow.get("duration_s")
    return [["run id", q["run_id"]], ["git commit", prov.get("git_commit", "?")],
            ["image tag", prov.get("image_tag", "?")], ["profile", flow.get("profile", "?")],
            ["config hash", config_hash(flow.get("config", {}))],
            ["hardware", f"{prov.get('cuda') or 'CPU'} on {prov.get('hostname', '?')} "
                         f"(torch {prov.get('torch', '?')})"],
            ["flow run time", fmt(duration, "time") if _number(duration) is not None
             else "?"]]


def _trend(store: Store, question: str, profile: str, cells_of: CellsOf | None = None
           ) -> Section | None:
    """The question's trend page: its last runs of this profile, champion changes marked,
    regressions and drops outside the champion's interval flagged (tasks.reporting.trend)."""
    return trend_section(store, question, profile, cells_of=cells_of)


HALF_WIDTH = 505  # px: two figures side by side in the 1040 px column


def display_width(fig: dict) -> int | None:
    """How wide a question report's figure is shown here: wide plots (curves, heat maps,
    small multiples) and wide photo panels across the column; narrower ones (bars, a single
    matrix, a photo grid) at half of it, two to a row."""
    w, h = fig.get("width"), fig.get("height")
    if not w or not h:
        return None
    wide = w / h >= 1.6 if fig.get("photo") else w > 800
    return w if wide else min(w, HALF_WIDTH)


def _figures(store: Store, q: str, info: dict) -> tuple[list[Image], list[Image]]:
    """The question report's figures, main and detail, with their captions."""
    main: list[Image] = []
    detail: list[Image] = []
    index = info.get("index")
    if index is not None:
        for f in index.get("figures", []):
            if not store.exists(f["key"]):
                continue
            img = Image(f"{q}-{f['name']}", store.get_bytes(f["key"]),
                        f.get("caption") or f["name"], photo=bool(f.get("photo")),
                        detail=bool(f.get("detail")), width=display_width(f))
            (detail if img.detail else main).append(img)
        return main, detail
    for name, key in sorted(info["flow"]["report"].items()):  # an older report: names only
        if name.endswith(".png") and store.exists(key):
            main.append(Image(f"{q}-{name}", store.get_bytes(key), name))
    return main, detail


def _headline(rows: list[dict]) -> str:
    """The best ok run by the question's primary metric (its first row's), in words."""
    metric = next((r.get("metric") for r in rows if r.get("metric")), None)
    scored = [r for r in rows if r.get("status") == "ok" and r.get("metric") == metric
              and _number(r.get("value")) is not None]
    if not scored:
        return "—"
    best = max(scored, key=lambda r: r["value"])
    return f"{best.get('variant')}: {metric} {fmt(best['value'], metric_kind(metric))}"


@dataclass
class _Parts:
    """What the per-question passes collect: the tables' rows, the question sections and
    each question's status."""
    glance: list[list[Any]] = field(default_factory=list)
    summary: list[list[Any]] = field(default_factory=list)
    comparison: list[list[Any]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)


def render(cfg: FinalReportConfig, store: Store,
           cells_of: Callable[[str], CellsOf | None] | None = None,
           titles: dict[str, str] | None = None) -> Manifest:
    """Assemble the cross-question report (HTML + Markdown) from the stored manifests.

    ``cells_of(question)`` (``tasks.comparers``) lets each trend check runs against their
    champion's interval over seeds; ``titles`` names each question's section (the
    descriptors' titles by default)."""
    titles = question_titles() if titles is None else titles
    expires = link_expiry_seconds(cfg.link_expiry_s)
    with TaskRun("report.final", cfg, store, cfg.out) as run:
        now = datetime.now(UTC)
        loaded = {q: _load_question(store, q, cfg.run_ids.get(q)) for q in cfg.questions}
        report = _new_report(cfg, store, loaded, now, expires)
        parts = _Parts()
        for q, info in loaded.items():
            _add_question(parts, store, cfg, q, info, titles.get(q, q), expires, cells_of)
        report.sections.extend(_overview_sections(parts))
        report.sections.extend(parts.sections)
        keys = write_report(report, store, cfg.out)
        run.outputs.update(keys)
        n_ok = sum(1 for s in parts.status.values() if s == "ok")
        return run.finish({"questions": parts.status, "experiments": len(parts.summary),
                           "comparisons": len(parts.comparison), "ok": n_ok})


def _new_report(cfg: FinalReportConfig, store: Store, loaded: dict[str, dict | None],
                now: datetime, expires: int) -> Report:
    """The report's title (naming the profiles that are not full), meta and intro."""
    profiles = {q["flow"]["profile"] for q in loaded.values() if q and q.get("flow")}
    title = cfg.title
    if profiles - {"full"}:
        title += f" ({', '.join(sorted(profiles))} profile runs: not comparable to the " \
                 "reference)"
    meta: dict[str, Any] = {"store": store.uri,
                            "generated": now.isoformat(timespec="seconds"),
                            "questions": ", ".join(cfg.questions)}
    presigned = store.uri.startswith("s3://")
    if presigned:
        until = (now + timedelta(seconds=expires)).strftime("%Y-%m-%d %H:%M UTC")
        meta["links to the question reports"] = \
            f"presigned, valid {fmt(expires, 'time')} (until {until})"
    return Report(title, [
        "Each question's latest run (or the runs named), with our numbers beside the "
        "original report's (reference). Missing or failed runs are listed as such. Each "
        "question's section links its own, complete report; the figures here are its "
        "main ones, the per-cell detail sits in a collapsed section below them.",
    ], meta=meta, compact=True)


def _add_question(parts: _Parts, store: Store, cfg: FinalReportConfig, q: str,
                  info: dict | None, title: str, expires: int,
                  cells_of: Callable[[str], CellsOf | None] | None) -> None:
    """One question's rows in the overview tables, and its section."""
    if q in cfg.failures:
        parts.status[q] = "failed"
        parts.summary.append([q, "(flow run)", "failed: " + cfg.failures[q][:200], None, None,
                              None, None, None])
        parts.sections.append(Section(title, [
            f"The latest flow run failed: {cfg.failures[q]}"]))
        if info is None or info.get("missing"):
            parts.glance.append([q, "failed", "—", "—", "—", "—", "—"])
            return
    if info is None or info.get("missing"):
        status = parts.status[q] = (
            "not run" if info is None else f"damaged: {info['damaged']}"
            if info.get("damaged") else "failed (no flow manifest)")
        parts.summary.append([q, "—", status, None, None, None, None, None])
        parts.glance.append([q, status, "—", "—", "—", "—", "—"])
        parts.sections.append(Section(title, [
            f"No finished run of {q} in this store ({status}): run "
            f"`visionflows run {q}`."]))
        return
    parts.status.setdefault(q, "ok")
    flow, rep = info["flow"], info["report"]
    profile = flow.get("profile", "?")
    rows = rep.metrics.get("summary", []) if rep else []
    parts.summary.extend(_summary_rows(q, info, rows))
    parts.comparison.extend(_comparison_rows(q, rep, profile))
    keys = flow["report"]
    links = {n: store.presign(keys[n], expires) for n in ("report.html", "report.md")
             if n in keys}
    html_link = links.get("report.html")
    ok_rows = sum(1 for r in rows if r.get("status") == "ok")
    parts.glance.append([Link(q, html_link) if html_link else q, parts.status[q], profile,
                         f"{ok_rows} of {len(rows)}", _headline(rows),
                         fmt(flow.get("duration_s"), "time"), info["run_id"]])
    parts.sections.append(_question_section(store, q, info, title, links, profile, cells_of))


def _summary_rows(q: str, info: dict, rows: list[dict]) -> list[list[Any]]:
    """A summary row per experiment run of the question's report."""
    out = []
    for r in rows:
        kind = metric_kind(r.get("metric"))
        out.append([q, r.get("variant"), r.get("status"), r.get("metric"),
                    ours_text(r.get("value"), r.get("std"), r.get("seeds"), kind)
                    + (" (best)" if r.get("best") else ""),
                    fmt(r.get("time_s"), "time"), info["run_id"],
                    per_seed(r.get("values"), kind)])
    if not rows:
        out.append([q, "—", "no report manifest", None, None, None, info["run_id"], None])
    return out


def _comparison_rows(q: str, rep: Manifest | None, profile: str) -> list[list[Any]]:
    """Ours beside the reference, a row per item of the question report's comparison."""
    out = []
    for c in rep.metrics.get("comparison", []) if rep else []:
        kind = comparison_kind(c)
        where = c.get("position") or "—"
        if kind in MEASURED and profile != "full" and "position" in c:
            where = "not comparable (generated data)"
        out.append([q, c["item"], ours_text(c["ours"], c.get("std"), c.get("n"), kind),
                    fmt(c["reference"], kind),
                    difference(c["ours"], c["reference"], kind, profile == "full"), where])
    return out


def _question_section(store: Store, q: str, info: dict, title: str,
                      links: dict[str, str | None], profile: str,
                      cells_of: Callable[[str], CellsOf | None] | None) -> Section:
    """A question's section: links to its own report, why ours differ, provenance, its main
    figures (the rest collapsed) and its trend."""
    keys = info["flow"]["report"]
    parts = [f"[{label}]({links[n]})" for n, label in
             (("report.html", "HTML"), ("report.md", "Markdown")) if links.get(n)]
    where = f"In the store: `{store.url(keys['report.html'])}`."
    sec = Section(title, [
        ("Its own report: " + " · ".join(parts) + ". " if parts else "") + where,
        _why(info)])
    sec.tables.append(Table(["field", "value"], _provenance(store, info), "Provenance"))
    main, detail = _figures(store, q, info)
    sec.images.extend(main)
    sec.grid = True
    if detail:
        sec.subsections.append(Section(
            f"{q}: {len(detail)} more figure{'s' if len(detail) > 1 else ''} "
            "(per cell, per model)", images=detail, collapsed=True, grid=True))
    if (trend := _trend(store, q, profile,
                        cells_of(q) if cells_of else None)) is not None:
        sec.subsections.append(trend)
    return sec


def _overview_sections(parts: _Parts) -> list[Section]:
    """At a glance, every experiment run, and ours beside the reference."""
    return [
        Section("At a glance", tables=[Table(
            ["question", "status", "profile", "runs ok", "best run (primary metric)",
             "flow run time", "run id"], parts.glance,
            "One row per question; the question links its own report")]),
        Section("Summary: every experiment run", tables=[Table(
            ["question", "variant", "status", "metric", "ours", "time", "run id", "per seed"],
            parts.summary, "One row per experiment run (missing and failed ones included); a "
            "repeated cell shows its mean ± standard deviation over n seeds, every seed's "
            "value, and (best) on the best setting of its sweep by the mean")]),
        Section("Ours beside the reference", [
            "Reference = the original report's printed numbers (SPEC.md). Accuracies are in "
            "%, P/R/mAP as fractions, times as durations. Difference: percentage points for "
            "accuracies, ours minus reference for scores and counts, ours / reference for "
            "times; a choice (e.g. the best batch size) agrees or differs. Measurements of "
            "runs on generated data (any profile but full) are not compared with the "
            "reference's. The reference is one run; ours, where a cell was repeated, is the "
            "mean ± standard deviation over n seeds, and the last column says whether the "
            f"reference lies inside the {100 * CONFIDENCE:g} % t-interval of our mean, above "
            "or below it, and by how many points (one run: no interval)."], [Table(
                ["question", "item", "ours", "reference", "difference",
                 f"reference vs our {100 * CONFIDENCE:g} % interval"], parts.comparison)]),
    ]
