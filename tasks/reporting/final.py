"""``report.final``: the comparison report across every question.

Reads, for each question, the flow manifest of its latest run (``runs/<q>/latest.json``) or
of a given run id, then that run's question report manifest. The contract each question
keeps (see ``flows/common.write_flow_manifest`` and the question report tasks):

- flow manifest ``runs/<q>/<run-id>/manifest.json``: ``run_id``, ``profile``, ``config``,
  ``report`` (output name -> store key; ``report.html`` and the report's PNGs);
- question report manifest (beside ``report.html``): ``metrics.summary`` (one row per
  experiment run: ``variant``, ``status``, ``metric``, ``value``, ``time_s``, ``run``) and
  ``metrics.comparison`` (``item``, ``ours``, ``reference``).

Questions that never ran, and runs that failed, are shown as such, never dropped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from tasks.core.config import Config, config_hash
from tasks.core.errors import MissingKeyError
from tasks.core.runtime import IntegrityError, Manifest, TaskRun, find_manifest, find_verified
from tasks.core.store import Store, join
from tasks.reporting.render import Image, Report, Section, Table, write_report
from tasks.reporting.trend import trend_section

QUESTIONS = ["q1-mlp", "q1-cnn", "q2-transfer", "q3-segmentation", "q4-yolo"]
TITLES = {
    "q1-mlp": "Q1-MLP: fully connected classifier on Fashion-MNIST",
    "q1-cnn": "Q1-CNN: convolutional classifiers on Fashion-MNIST",
    "q2-transfer": "Q2: transfer learning on STL10 (ResNet18, VGG16)",
    "q3-segmentation": "Q3: semantic segmentation with DeepLabV3",
    "q4-yolo": "Q4: object detection with YOLOv5s and YOLOv5x",
}


class FinalReportConfig(Config):
    out: str
    questions: list[str] = Field(default_factory=lambda: list(QUESTIONS), min_length=1)
    run_ids: dict[str, str] = Field(default_factory=dict,
                                    description="question -> run id; default: the latest")
    failures: dict[str, str] = Field(default_factory=dict,
                                     description="question -> error of a flow run that failed")
    title: str = "visionflows: every experiment, ours beside the original report"


def _load_question(store: Store, question: str, run_id: str | None) -> dict[str, Any] | None:
    if run_id is None:
        try:
            run_id = store.get_json(join("runs", question, "latest.json"))["run_id"]
        except MissingKeyError:
            return None
    try:
        flow = store.get_json(join("runs", question, run_id, "manifest.json"))
    except MissingKeyError:
        return {"run_id": run_id, "missing": True}
    report_dir = flow["report"]["report.html"].rsplit("/", 1)[0]
    try:
        report = find_verified(store, report_dir)
    except IntegrityError as exc:  # shown as such in the final report, never used as is
        return {"run_id": run_id, "missing": True, "damaged": str(exc)}
    return {"run_id": run_id, "flow": flow, "report": report, "report_dir": report_dir}


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _difference(ours: Any, ref: Any) -> str:
    a, b = _number(ours), _number(ref)
    if a is None or b is None:
        return "same" if ours == ref else "differs"
    return f"{a - b:+.4f}"


def _why(flow: dict, prov: dict) -> str:
    profile = flow.get("profile", "?")
    cfg = flow.get("config", {})
    data = cfg.get("data", {}) if isinstance(cfg.get("data"), dict) else {}
    epochs = cfg.get("epochs")
    hw = prov.get("cuda") or "CPU"
    parts = [f"profile {profile}"]
    if profile != "full":
        parts.append("generated data in the real format, not the real dataset, so the numbers "
                     "are not comparable to the reference")
    elif data.get("source"):
        parts.append(f"data source {data.get('source')}")
    if epochs is not None:
        parts.append(f"{epochs} epochs")
    parts.append(f"hardware {hw}")
    parts.append("the original report's unstated choices (layer sizes, optimizer, learning "
                 "rate, seeds) are ours, and a single seed is not a distribution")
    return "Why they may differ: " + "; ".join(parts) + "."


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
            ["duration (s)", round(duration, 1) if isinstance(duration, int | float) else "?"]]


def _trend(store: Store, question: str, profile: str) -> Section | None:
    """The question's trend page: its last runs of this profile, champion changes marked,
    regressions flagged (tasks.reporting.trend)."""
    return trend_section(store, question, profile)


def render(cfg: FinalReportConfig, store: Store) -> Manifest:
    """Assemble the cross-question report (HTML + Markdown) from the stored manifests."""
    with TaskRun("report.final", cfg, store, cfg.out) as run:
        loaded = {q: _load_question(store, q, cfg.run_ids.get(q)) for q in cfg.questions}
        profiles = {q["flow"]["profile"] for q in loaded.values() if q and q.get("flow")}
        title = cfg.title
        if profiles - {"full"}:
            title += f" ({', '.join(sorted(profiles))} profile runs: not comparable to the " \
                     "reference)"
        report = Report(title, [
            "Each question's latest run (or the runs named), with our numbers beside the "
            "original report's (reference). Missing or failed runs are listed as such.",
        ], meta={"store": store.uri, "generated": datetime.now(UTC).isoformat(timespec="seconds"),
                 "questions": ", ".join(cfg.questions)})
        summary: list[list[Any]] = []
        comparison: list[list[Any]] = []
        sections: list[Section] = []
        status: dict[str, str] = {}
        for q, info in loaded.items():
            if q in cfg.failures:
                status[q] = "failed"
                summary.append([q, "(flow run)", "failed: " + cfg.failures[q][:200], None, None,
                                None, None])
                sections.append(Section(TITLES.get(q, q), [
                    f"The latest flow run failed: {cfg.failures[q]}"]))
                if info is None or info.get("missing"):
                    continue
            if info is None or info.get("missing"):
                status[q] = ("not run" if info is None else f"damaged: {info['damaged']}"
                             if info.get("damaged") else "failed (no flow manifest)")
                summary.append([q, "—", status[q], None, None, None, None])
                sections.append(Section(TITLES.get(q, q), [
                    f"No finished run of {q} in this store ({status[q]}): run "
                    f"`visionflows run {q}`."]))
                continue
            status.setdefault(q, "ok")
            flow, rep = info["flow"], info["report"]
            rows = rep.metrics.get("summary", []) if rep else []
            for r in rows:
                summary.append([q, r.get("variant"), r.get("status"), r.get("metric"),
                                r.get("value"), r.get("time_s"), info["run_id"]])
            if not rows:
                summary.append([q, "—", "no report manifest", None, None, None, info["run_id"]])
            for c in rep.metrics.get("comparison", []) if rep else []:
                comparison.append([q, c["item"], c["ours"], c["reference"],
                                   _difference(c["ours"], c["reference"])])
            prov_rows = _provenance(store, info)
            sec = Section(TITLES.get(q, q), [
                _why(flow, rep.provenance if rep else {}),
                f"Full question report: {store.url(flow['report']['report.html'])}"])
            sec.tables.append(Table(["field", "value"], prov_rows, "Provenance"))
            for name, key in sorted(flow["report"].items()):
                if name.endswith(".png") and store.exists(key):
                    sec.images.append(Image(f"{q}-{name}", store.get_bytes(key), name))
            if (trend := _trend(store, q, flow.get("profile", "full"))) is not None:
                sec.subsections.append(trend)
            sections.append(sec)
        report.sections.append(Section("Summary: every experiment run", tables=[Table(
            ["question", "variant", "status", "metric", "ours", "time (s)", "run id"], summary,
            "One row per experiment run (missing and failed ones included)")]))
        report.sections.append(Section("Ours beside the reference", [
            "Reference = the original report's printed numbers (SPEC.md). Difference = ours "
            "minus reference where both are numbers."], [Table(
                ["question", "item", "ours", "reference", "difference"], comparison)]))
        report.sections.extend(sections)
        keys = write_report(report, store, cfg.out)
        run.outputs.update(keys)
        n_ok = sum(1 for s in status.values() if s == "ok")
        return run.finish({"questions": status, "experiments": len(summary),
                           "comparisons": len(comparison), "ok": n_ok})
