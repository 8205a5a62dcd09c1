"""``yolo.report``: the Q4 report — every model side by side, the SPEC's reference beside ours.

Reads the ``yolo.train`` and ``yolo.evaluate`` manifests of each model; a model whose run is
missing or failed is listed as such, never dropped. Writes ``report.md`` and a
self-contained ``report.html`` (PNG plots embedded) to the store.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tasks.core.config import Config
from tasks.core.errors import MissingKeyError
from tasks.core.runtime import Manifest, TaskRun, find_verified
from tasks.core.store import Store
from tasks.ml import plots
from tasks.q4.reference import REFERENCE
from tasks.reporting.compare import ComparisonLink, link_section
from tasks.reporting.render import Image, Report, Section, Table, slug, write_report

QUESTION = "q4-yolo"
METRICS = (("precision", "P"), ("recall", "R"), ("mAP50", "mAP@0.5"),
           ("mAP50-95", "mAP@0.5:0.95"))

BACKGROUND = [
    "One-stage vs two-stage detectors (from the original report). Two-stage detectors "
    "(R-CNN, Fast/Faster R-CNN) first propose candidate regions and then classify and refine "
    "each one; they are accurate but slow. One-stage detectors (YOLO, SSD, RetinaNet) predict "
    "boxes and classes densely in a single pass over a grid of cells and anchors (or "
    "anchor-free points), trading a little accuracy on small or crowded objects for real-time "
    "speed. The YOLOv5 models here are one-stage; ultralytics 8 trains the anchor-free "
    "'YOLOv5u' heads.",
    "YOLOv3's configuration knobs the original report explains: batch and subdivisions (a "
    "batch of 64 images split into mini-batches that fit in memory, gradients accumulated — "
    "ultralytics' nbs plays this role), the network input size (a multiple of 32: 416 in the "
    "reference), momentum 0.9 and weight decay 0.0005, the learning-rate schedule with "
    "burn-in (a warm-up over the first iterations, then steps or decay), data augmentation "
    "(saturation, exposure, hue jitter, flips, scaling), and the training length rule "
    "max_batches >= "
    "2000 x classes (12,000 iterations for six classes).",
]


class ModelRef(Config):
    label: str = Field(description="display name, e.g. 'yolov5s'")
    model: str = Field(description="the ultralytics model trained, e.g. yolov5s.pt")
    reference: str | None = Field(None, description="REFERENCE['q4-yolo'] key, e.g. yolov5s")
    train: str = Field(description="store prefix of the yolo.train run")
    eval: str = Field(description="store prefix of the yolo.evaluate run")


class YoloReportConfig(Config):
    out: str
    profile: str
    run_id: str
    title: str = "Q4: object detection with YOLOv5s and YOLOv5x"
    split: str = "val"
    models: list[ModelRef] = Field(min_length=1)
    intro: list[str] = Field(default_factory=list)
    comparison: ComparisonLink | None = Field(
        None, description="the comparison with the champion the flow writes after promotion")


def hms(seconds: float | None) -> str:
    """``4583`` -> ``1 h 16 m 23 s`` (the original report's style)."""
    if seconds is None:
        return "—"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return (f"{h} h " if h else "") + (f"{m} m " if h or m else "") + f"{sec} s"


def png_bytes(store: Store, manifest: Manifest, name: str) -> bytes | None:
    try:
        return store.get_bytes(manifest.output_key(name))
    except MissingKeyError:
        return None


def _pair(a: str, b: str, ma: dict, mb: dict, sp: str = "") -> str:
    """How model ``b`` compares with model ``a``, in the reference report's terms."""
    pre = f"{sp}/" if sp else ""
    d50 = mb[f"{pre}mAP50"] - ma[f"{pre}mAP50"]
    d95 = mb[f"{pre}mAP50-95"] - ma[f"{pre}mAP50-95"]
    ahead = "ahead of" if d95 >= 0 else "behind"
    text = (f"{b} {ahead} {a} by {abs(d50):.3f} mAP@0.5 ({'+' if d50 >= 0 else '-'}) and "
            f"{abs(d95):.3f} mAP@0.5:0.95 ({'+' if d95 >= 0 else '-'}), recall "
            f"{mb[f'{pre}recall']:.3f} vs {ma[f'{pre}recall']:.3f}")
    ta, tb = ma.get("train_time_s"), mb.get("train_time_s")
    if ta and tb:
        text += f", training time {hms(tb)} vs {hms(ta)} ({tb / ta:.2f}x)"
    return text


def compare_sentences(ours: dict[str, dict], refs: dict[str, str | None], sp: str
                      ) -> list[str]:
    """The reference's YOLOv5s-vs-YOLOv5x comparison and ours, each computed from its numbers,
    and whether the ranking by mAP@0.5:0.95 agrees."""
    s, x = REFERENCE["yolov5s"], REFERENCE["yolov5x"]
    out = [f"Reference: {_pair('YOLOv5s', 'YOLOv5x', s, x)}."]
    by_ref = {r: label for label, r in refs.items() if r}
    if {"yolov5s", "yolov5x"} <= by_ref.keys():
        a, b = by_ref["yolov5s"], by_ref["yolov5x"]
        out.append(f"Ours: {_pair(a, b, ours[a], ours[b], sp)}.")
        ref_rank = x["mAP50-95"] >= s["mAP50-95"]
        our_rank = ours[b][f"{sp}/mAP50-95"] >= ours[a][f"{sp}/mAP50-95"]
        out.append("The ranking by mAP@0.5:0.95 agrees with the reference." if ref_rank ==
                   our_rank else "The ranking by mAP@0.5:0.95 differs from the reference's.")
    return out


def why_different(store: Store, trained: dict[str, Manifest], sp: str) -> str:
    """Why our numbers may differ from the reference's, from what this run really did."""
    from tasks.q4.reference import DATASET

    first = next(iter(trained.values()))
    data = find_verified(store, str(first.config.get("data", "")))
    scratch = [k for k, m in trained.items()
               if str(m.config.get("model", "")).endswith((".yaml", ".yml"))]
    pretrained = [k for k in trained if k not in scratch]
    parts = []
    if scratch:
        parts.append(f"{', '.join(scratch)} trained from random weights (a .yaml model)")
    if pretrained:
        parts.append(f"{', '.join(pretrained)} from pretrained weights")
    epochs = sorted({int(m.metrics.get("epochs") or 0) for m in trained.values()})
    imgsz = sorted({m.config.get("imgsz") for m in trained.values()})
    what = "an export we could not read back"
    if data is not None:
        source = data.inputs.get("source", "?")
        kind = "generated shapes" if source == "generator" else f"the export ({source})"
        what = (f"{kind}: {data.metrics.get(f'{sp}/images', '?')} validation images, "
                f"{data.metrics.get(f'{sp}/objects', '?')} objects")
    ref_objects = ("about " if DATASET["objects_approximate"] else "") + \
        f"{DATASET['val_objects']:,}"
    same = (not scratch and epochs == [100] and imgsz == [416] and data is not None
            and data.inputs.get("source") != "generator")
    head = "Why our numbers may differ" if not same else "Same setup as the reference"
    return (f"{head}: ours: {'; '.join(parts)}, {'/'.join(map(str, epochs))} epochs at "
            f"{'/'.join(map(str, imgsz))} px on {what}. Reference: pretrained YOLOv5s/x, "
            f"{REFERENCE['yolov5s']['epochs']} epochs at {REFERENCE['yolov5s']['imgsz']} px on "
            f"{DATASET['what']} ({DATASET['val_images']} validation images, {ref_objects} "
            "objects).")


def render(cfg: YoloReportConfig, store: Store) -> Manifest:
    """Build the Q4 report from the models' train and eval manifests."""
    sp = cfg.split
    with TaskRun("yolo.report", cfg, store, cfg.out) as run:
        report = _new_report(cfg, store)
        loaded = {m.label: (m, find_verified(store, m.train), find_verified(store, m.eval))
                  for m in cfg.models}
        ok = {k: v for k, v in loaded.items() if v[1] is not None and v[2] is not None}
        overall, records = _overall_section(loaded, sp)
        best = _overall_findings(overall, ok, sp)
        report.sections.append(overall)
        report.sections.append(_per_class_section(ok, sp))
        if ok:
            report.sections.append(_training_section(ok))
        report.sections.extend(_model_section(store, label, tr, ev, sp)
                               for label, (_ref, tr, ev) in ok.items())
        report.sections.append(_notes_section(store, report, loaded, ok, sp))
        keys = write_report(report, store, cfg.out)
        run.outputs.update(keys)
        groups: list[dict[str, Any]] = []
        if best is not None:
            groups.append({"key": "model", "select_by": f"{sp}/mAP50-95", "best": best,
                           "best_score": ok[best][2].metrics.get(f"{sp}/mAP50-95")})
        return run.finish({**records, "groups": groups})


def _new_report(cfg: YoloReportConfig, store: Store) -> Report:
    """The report's title, meta and the link to the comparison with the champion."""
    report = Report(cfg.title, list(cfg.intro), meta={
        "question": QUESTION, "profile": cfg.profile, "run id": cfg.run_id,
        "store": store.uri, "split": cfg.split})
    if cfg.profile != "full":
        report.title += (f" ({cfg.profile} profile: generated data and small models "
                         "trained from scratch, not comparable to the reference)")
    if cfg.comparison is not None:
        report.sections.append(link_section(cfg.comparison, store))
    return report


def _overall_section(loaded: dict, sp: str) -> tuple[Section, dict[str, list[dict]]]:
    """The overall table, ours beside the reference, and the manifest's records: ``models``
    (a row per model), ``summary`` (rows for the cross-question report,
    tasks/reporting/final.py) and ``comparison`` (ours against the reference)."""
    cols = ["model", "source", "status", *(c for _, c in METRICS), "train time",
            "epochs", "imgsz"]
    rows, summary = [], []
    final_rows: list[dict] = []
    comparison: list[dict] = []
    for label, (_ref, tr, ev) in loaded.items():
        status = "ok" if (tr and ev) else ("trained, not evaluated" if tr else
                                           "missing/failed")
        em = ev.metrics if ev else {}
        tm = tr.metrics if tr else {}
        imgsz = tr.config.get("imgsz") if tr else None
        rows.append([label, "ours", status, *(em.get(f"{sp}/{k}") for k, _ in METRICS),
                     hms(tm.get("train/time_s")), tm.get("epochs"), imgsz])
        summary.append({"model": label, "status": status, **{
            k: em.get(f"{sp}/{k}") for k, _ in METRICS},
            "train_time_s": tm.get("train/time_s"), "epochs": tm.get("epochs")})
        final_rows.append({"question": QUESTION, "variant": f"model={label}",
                           "status": status, "metric": f"{sp}/mAP50-95",
                           "value": em.get(f"{sp}/mAP50-95"),
                           "time_s": tm.get("train/time_s"), "run": _ref.train})
        ref_one = REFERENCE.get(_ref.reference or "")
        if ref_one and ev is not None:
            comparison += [{"question": QUESTION, "item": f"{label} {name}",
                            "ours": em.get(f"{sp}/{k}"), "reference": ref_one[k],
                            "kind": "score"} for k, name in METRICS]
            comparison.append({"question": QUESTION, "item": f"{label} training time",
                               "ours": tm.get("train/time_s"),
                               "reference": ref_one.get("train_time_s"), "kind": "time"})
    for key, ref in REFERENCE.items():
        rows.append([key.replace("yolov5", "YOLOv5"), "reference", "—",
                     *(ref.get(k) for k, _ in METRICS), hms(ref.get("train_time_s")), 100,
                     416])
    overall = Section("Overall: validation, all classes", tables=[Table(
        cols, rows, "Ours (this run) and the original report's numbers (reference)")])
    return overall, {"models": summary, "summary": final_rows, "comparison": comparison}


def _overall_findings(overall: Section, ok: dict, sp: str) -> str | None:
    """The best and fastest models, the comparison sentences and the overall plots, added to
    ``overall``; returns the best model's label (None when no model finished)."""
    if not ok:
        return None
    best = max(ok, key=lambda k: ok[k][2].metrics.get(f"{sp}/mAP50-95") or -1)
    best_val = ok[best][2].metrics.get(f"{sp}/mAP50-95")
    text = f"Ours: best model by mAP@0.5:0.95 is {best} ({best_val:.3f})."
    if len(ok) > 1:
        fastest = min(ok, key=lambda k: ok[k][1].metrics.get("train/time_s") or 1e18)
        text += f" Fastest to train: {fastest}."
    overall.paragraphs.append(text)
    overall.paragraphs.extend(compare_sentences(
        {k: {**v[2].metrics, "train_time_s": v[1].metrics.get("train/time_s")}
         for k, v in ok.items()}, {k: v[0].reference for k, v in ok.items()}, sp))
    bars = {f"{k} (ours)": {c: v[2].metrics.get(f"{sp}/{m}") or 0.0 for m, c in METRICS}
            for k, v in ok.items()}
    for key, ref in REFERENCE.items():
        bars[f"{key} (ref)"] = {c: ref[m] for m, c in METRICS}
    overall.images.append(Image("overall.png", plots.grouped_bars(
        bars, "score", "Validation P, R, mAP: ours vs reference"),
        f"Precision, recall, mAP@0.5 and mAP@0.5:0.95 on the {sp} split, per model: "
        "ours and the original report's (ref)"))
    overall.images.append(Image("train-time.png", plots.bars(
        {k: (v[1].metrics.get("train/time_s") or 0.0) for k, v in ok.items()},
        "seconds", "Training time (ours)"),
        "Wall-clock training time per model (seconds, ours)"))
    return best


def _per_class_section(ok: dict, sp: str) -> Section:
    """A per-class table per model (with the reference's where it printed them) and the
    per-class mAP@0.5 plot."""
    per_class = Section("Per class")
    for label, (ref, _tr, ev) in ok.items():
        pc = ev.metrics.get(f"{sp}/per_class", {})
        ref_pc = REFERENCE.get(ref.reference or "", {}).get("per_class", {})
        t_rows = [[name, row.get("instances"), row.get("precision"), row.get("recall"),
                   row.get("mAP50"), row.get("mAP50-95"),
                   *ref_pc.get(name, (None, None))]
                  for name, row in pc.items()]
        caption = f"{label}: per class" + (
            f" (reference: the original report's {ref.reference.replace('yolov5', 'YOLOv5')})"
            if ref_pc else " (the original report printed per-class numbers for YOLOv5s "
                           "only)")
        per_class.tables.append(Table(
            ["class", "instances", "P", "R", "mAP@0.5", "mAP@0.5:0.95", "ref mAP@0.5",
             "ref mAP@0.5:0.95"], t_rows, caption))
    if ok:
        per_class.images.extend(_per_class_images(ok, sp))
    return per_class


def _per_class_images(ok: dict, sp: str) -> list[Image]:
    """mAP@0.5 per class, per model (and the reference's YOLOv5s when it has every class)."""
    classes = list(next(iter(ok.values()))[2].metrics.get(f"{sp}/per_class", {}))
    series = {f"{k} mAP@0.5": [(v[2].metrics[f"{sp}/per_class"].get(c, {})
                                .get("mAP50") or 0.0) for c in classes]
              for k, v in ok.items()}
    ref_pc = REFERENCE.get("yolov5s", {}).get("per_class", {})
    if ref_pc and all(c in ref_pc for c in classes):
        series["YOLOv5s ref mAP@0.5"] = [ref_pc[c][0] for c in classes]
    if not classes:
        return []
    return [Image("per-class.png", plots.per_class(series, classes, "Per-class mAP@0.5"),
                  f"mAP@0.5 per class on the {sp} split, per model"
                  + (", and the original report's YOLOv5s" if "YOLOv5s ref mAP@0.5" in series
                     else ""))]


def _training_section(ok: dict) -> Section:
    """Loss and validation mAP curves per epoch, and which models trained in sessions."""
    hist = {k: [{**h, "val/mAP50": h.get("metrics/mAP50(B)")}
                for h in v[1].model_extra.get("history", [])] for k, v in ok.items()}
    png, clipped = plots.loss_panels(
        hist, ("box_loss", "cls_loss", "dfl_loss"), extra={"val mAP@0.5": "val/mAP50"},
        title="Losses per epoch: training (solid) and validation (dashed)")
    caption = ("box, cls and dfl losses per epoch, training (solid) and validation "
               "(dashed), and validation mAP@0.5, every panel on one epoch axis "
               "(results.csv)")
    if clipped:
        caption += ("; axes cut above spikes so the other epochs stay readable, "
                    "clipped values (red arrows): " + "; ".join(clipped))
    curves = Section("Training", images=[Image("loss-curves.png", png, caption)])
    for k, v in ok.items():
        sessions = v[1].model_extra.get("sessions", [])
        if len(sessions) > 1:
            curves.paragraphs.append(
                f"{k}: trained in {len(sessions)} sessions (epochs " + ", ".join(
                    f"{s['start_epoch'] + 1}-{s['end_epoch']}" for s in sessions) +
                "): resumed or extended from the stored checkpoint.")
    return curves


def _model_section(store: Store, label: str, tr: Manifest, ev: Manifest, sp: str) -> Section:
    """One model's sample predictions and confusion matrix."""
    sec = Section(f"{label}: predictions and confusion matrix")
    sec.paragraphs.append(
        f"Model {tr.model_extra.get('model')}, weights from "
        f"{tr.model_extra.get('weights_from')}; checkpoint evaluated: "
        f"{ev.metrics.get('checkpoint')}. Left: ground truth (magenta); right: "
        "predictions (orange, with confidence).")
    tag = slug(label)
    if png := png_bytes(store, ev, "predictions"):
        sec.images.append(Image(f"predictions-{tag}.png", png,
                                f"{label}: sample {sp} images, ground truth (left, "
                                "magenta) beside its predictions (right, orange)",
                                photo=True))
    if png := png_bytes(store, ev, "confusion"):
        sec.images.append(Image(f"confusion-{tag}.png", png,
                                f"{label}: confusion matrix on the {sp} split (rows: "
                                "true class, columns: predicted)", detail=True))
    return sec


def _notes_section(store: Store, report: Report, loaded: dict, ok: dict, sp: str) -> Section:
    """Background, the models that did not finish, and why ours differ (``report.why``)."""
    missing = [k for k in loaded if k not in ok]
    notes = Section("Background and differences", paragraphs=list(BACKGROUND))
    if missing:
        notes.paragraphs.append(f"Not finished (see the table): {', '.join(missing)}.")
    if ok:
        report.why = why_different(store, {k: v[1] for k, v in ok.items()}, sp)
        notes.paragraphs.append(report.why)
    return notes
