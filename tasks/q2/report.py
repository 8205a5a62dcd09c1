"""``transfer.report``: the Q2 report — data, both models, grids, fine-tuning, comparison.

Reads the manifests (and stored PNGs) of the explore, weights, train and finetune steps and
writes ``report.md`` + self-contained ``report.html``. Our per-epoch test accuracy is drawn
beside the original report's curve; steps that are missing are listed as such.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tasks.core.config import Config
from tasks.core.errors import MissingKeyError
from tasks.core.runtime import Manifest, TaskRun, find_verified
from tasks.core.store import Store
from tasks.ml import plots
from tasks.q2.options import ARCHS, Arch, head_params
from tasks.q2.reference import REFERENCE as REF
from tasks.reporting.compare import ComparisonLink, link_section
from tasks.reporting.render import Image, Report, Section, Table, write_report

REF_RANGE = (-2.1179, 2.6400)


class ModelRef(Config):
    arch: Arch
    train: str = Field(description="store prefix of the transfer.train run")
    finetune: str = Field(description="store prefix of the transfer.finetune run")


class ReportConfig(Config):
    out: str
    profile: str
    run_id: str
    title: str
    data: str = Field(description="store prefix of the stl10.fetch run")
    explore: str
    weights: str | None = None
    models: list[ModelRef] = Field(min_length=1)
    intro: list[str] = Field(default_factory=list)
    comparison: ComparisonLink | None = Field(
        None, description="the comparison with the champion the flow writes after promotion")


def png_bytes(store: Store, manifest: Manifest, name: str) -> bytes | None:
    try:
        return store.get_bytes(manifest.output_key(name))
    except MissingKeyError:
        return None


def fixed_text(fixed: int, of: int) -> str:
    """``1 of 3 (33.33 %)``: how many misclassified grid images fine-tuning fixed."""
    return f"{fixed} of {of}" + (f" ({100 * fixed / of:.2f} %)" if of else "")


def ranking_verdict(ours: float, ref: float) -> dict[str, Any]:
    """Whether our VGG16-minus-ResNet18 gap (points) agrees with the reference's, in words.

    Agreement means the same model ranks first; the sentence gives both gaps and their
    difference, all computed from the two numbers.
    """
    lead = "VGG16" if ref >= 0 else "ResNet18"
    ours_lead = "VGG16" if ours >= 0 else "ResNet18"
    agrees = (ours >= 0) == (ref >= 0)
    text = (f"Reference: {lead} ahead by {abs(ref):.2f} points at the last epoch. Ours: "
            f"{ours_lead} ahead by {abs(ours):.2f} points, a gap "
            f"{abs(ours) - abs(ref):+.2f} points {'wider' if abs(ours) >= abs(ref) else 'narrower'}"
            f" than the reference's: {'the ranking agrees' if agrees else 'the ranking differs'}.")
    return {"agrees": agrees, "text": text, "ours": ours, "reference": ref}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _data_section(store: Store, data: Manifest | None, ex: Manifest | None) -> Section:
    sec = Section("Data: STL10 and ImageNet normalisation")
    if data is None or ex is None:
        sec.paragraphs.append("The data or exploration step did not finish: nothing to show.")
        return sec
    m = ex.metrics
    sec.paragraphs.append(
        f"Source: {data.inputs.get('source', '?')} ({data.prefix}). Train {m['train/shape']}, "
        f"test {m['test/shape']} (reference: (5000, 3, 96, 96) and (8000, 3, 96, 96)); raw "
        f"values {m['raw/min']}..{m['raw/max']}. Images are normalised with the ImageNet "
        "mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) after scaling to [0, 1].")
    theory = m["normalized/theoretical_range"]
    sec.tables.append(Table(
        ["", "min", "max"],
        [["ours (training set)", m["normalized/min"], m["normalized/max"]],
         ["reference (one batch)", REF_RANGE[0], REF_RANGE[1]],
         ["possible (0 or 255 in the extreme channel)", min(theory["min"]), max(theory["max"])]],
        "Range of normalised pixel values"))
    sec.tables.append(Table(
        ["channel", "mean", "std"],
        [[c, mu, sd] for c, mu, sd in zip("RGB", m["normalized/mean"], m["normalized/std"],
                                          strict=True)],
        "Per-channel statistics after normalisation (training set)"))
    for name, caption in (("histogram", "STL10: histogram of the normalised training pixel "
                                        "values (ImageNet mean and std)"),
                          ("samples", "STL10: random training images with their labels")):
        png = png_bytes(store, ex, name)
        if png:
            sec.images.append(Image(f"{name}.png", png, caption, photo=name == "samples"))
    return sec


def _model_section(store: Store, ref: ModelRef, tr: Manifest | None, ft: Manifest | None
                   ) -> tuple[Section, dict[str, Any]]:
    label = ARCHS[ref.arch]["label"]
    r = REF[ref.arch]
    sec = Section(label)
    row: dict[str, Any] = {"arch": ref.arch, "status": "missing/failed"}
    if tr is None:
        sec.paragraphs.append(f"The {label} training step did not finish ({ref.train}).")
        return sec, row
    m = tr.metrics
    row.update(status="ok" if ft is not None else "trained, grid/fine-tune missing",
               final=m["test/accuracy"], best=m["best/test/accuracy"],
               per_epoch=m["test/accuracy_per_epoch"], train_time_s=m["train/time_s"],
               features_time_s=m["features/cache_time_s"], trainable=m["trainable_params"],
               total=m["total_params_imagenet"], cached=m["features/cached"])
    sec.paragraphs.append(_training_text(ref, m))
    sec.tables.append(_params_table(ref, m))
    hist = tr.model_extra.get("history", [])
    _add_epochs(sec, ref, hist)
    sec.subsections.append(_summary_section(store, tr, label, m, r))
    if ft is None:
        sec.subsections.append(Section("Prediction grid and fine-tuning",
                                       [f"The fine-tuning step did not finish ({ref.finetune})."]))
        return sec, row
    f = ft.metrics
    row.update(misclassified=f["misclassified"], fixed=f["fixed"], broken=f["broken"],
               test_after=f["test/accuracy_after"])
    sec.subsections += [_grid_section(store, ref, ft), _finetune_section(store, ref, ft)]
    return sec, row


def _training_text(ref: ModelRef, m: dict[str, Any]) -> str:
    """Which weights, what is frozen and trained, on how many images."""
    w = m["weights"]
    if w.get("pretrained"):
        wtext = (f"ImageNet weights `{w['file']}` from {w['source']} ({w['location']}, sha256 "
                 f"{w['sha256'][:16]}...).")
    else:
        wtext = ("**Random initialisation (`pretrained: false`)**: these numbers say that the "
                 "pipeline works, not how transfer learning performs.")
    return (
        f"{wtext} Every parameter is frozen and `{ARCHS[ref.arch]['head']}` is replaced by "
        f"Linear({ARCHS[ref.arch]['in']} -> 10); only it trains ({m['trainable_params']:,} "
        f"parameters, checked before and after training). {m['epochs']} epochs on "
        f"{m['n_train']:,} training images at {m['image_size']} px, test accuracy on "
        f"{m['n_test']:,} images after each epoch.")


def _params_table(ref: ModelRef, m: dict[str, Any]) -> Table:
    r = REF[ref.arch]
    return Table(
        ["", "ours", "reference"],
        [["total parameters (1000-class ImageNet model)", f"{m['total_params_imagenet']:,}",
          f"{r['total_params']:,}"],
         ["total parameters with the 10-class head", f"{m['total_params']:,}", "—"],
         ["trainable parameters (new head)", f"{m['trainable_params']:,}",
          f"{head_params(ref.arch):,}"]],
        "Parameters")


def _add_epochs(sec: Section, ref: ModelRef, hist: list[dict]) -> None:
    """The per-epoch table and curves, beside the reference's test accuracy."""
    label = ARCHS[ref.arch]["label"]
    ref_acc = REF[ref.arch]["test/accuracy"]
    sec.tables.append(Table(
        ["epoch", "train loss", "train acc", "test loss", "test acc", "reference test acc",
         "epoch time (s)"],
        [[h["epoch"], h["train/loss"], h["train/accuracy"], h["test/loss"], h["test/accuracy"],
          ref_acc[h["epoch"] - 1] if h["epoch"] <= len(ref_acc) else None, h["train/time_s"]]
         for h in hist], "Per-epoch metrics (accuracies as fractions)"))
    sec.images.append(Image(f"curves-{ref.arch}.png", plots.curves(
        {f"{label} (ours)": hist}, splits=("train", "test"),
        title=f"{label}: loss and accuracy per epoch",
        reference={f"{label} test accuracy": ref_acc}),
        f"{label}: our loss and accuracy per epoch (train solid, test dotted) beside the "
        "original report's test accuracy (dash-dot)"))


def _summary_section(store: Store, tr: Manifest, label: str, m: dict[str, Any],
                     r: dict[str, Any]) -> Section:
    """The torchsummary listing of the ImageNet model (or that the file is missing)."""
    try:
        return Section("Model summary", [
            f"The 1000-class ImageNet {label}, rows as torchsummary lists them (input "
            f"1x3x{m['image_size']}x{m['image_size']}; the reference used 96x96). Total "
            f"{m['total_params_imagenet']:,} parameters (reference {r['total_params']:,})."],
            code=store.get_text(tr.output_key("summary")))
    except MissingKeyError:
        return Section("Model summary", ["The summary file is missing."])


def _grid_section(store: Store, ref: ModelRef, ft: Manifest) -> Section:
    label = ARCHS[ref.arch]["label"]
    f = ft.metrics
    grid = Section("Prediction grid", [
        f"{len(f['grid/true'])} test images drawn with a fixed seed; {f['misclassified']} "
        f"misclassified (reference: 3 of 25). Red titles mark the misclassified."])
    png = png_bytes(store, ft, "grid")
    if png:
        grid.images.append(Image(f"grid-{ref.arch}.png", png,
                                 f"{label}: {len(f['grid/true'])} test images with their true "
                                 "and predicted labels (red: misclassified)", photo=True,
                                 detail=True))
    return grid


def _finetune_section(store: Store, ref: ModelRef, ft: Manifest) -> Section:
    label = ARCHS[ref.arch]["label"]
    r = REF[ref.arch]
    f = ft.metrics
    fine = Section("Fine-tuning every layer on the misclassified images")
    if not f["misclassified"]:
        fine.paragraphs.append("No image of the grid was misclassified: nothing to fine-tune.")
        return fine
    fine.paragraphs.append(
        f"All layers unfrozen, trained on just the {f['misclassified']} misclassified "
        f"images for {f['finetune/epochs']} epochs. Fixed: **{f['fixed']} of "
        f"{f['misclassified']}** ({_pct(f['fixed_fraction'])}); reference: "
        f"{fixed_text(*r['finetune_fixed'])}. Correct grid images broken by fine-tuning: "
        f"{f['broken']}. "
        f"Test accuracy {_pct(f['test/accuracy_before'])} before, "
        f"{_pct(f['test/accuracy_after'])} after.")
    fine.tables.append(Table(
        ["epoch", "train loss", "accuracy on the misclassified"],
        [[h["epoch"], h["train/loss"], h["misclassified/accuracy"]]
         for h in ft.model_extra.get("history", [])],
        "Fine-tuning (the reference printed 33.33 % every epoch for ResNet18, 0 % for "
        "VGG16)"))
    png = png_bytes(store, ft, "finetune_grid")
    if png:
        fine.images.append(Image(f"finetune-{ref.arch}.png", png,
                                 f"{label}: the misclassified grid images, predictions "
                                 "before and after fine-tuning every layer on them",
                                 photo=True, detail=True))
    return fine


def _comparison(rows: dict[str, dict], histories: dict[str, list]) -> tuple[Section, dict]:
    sec = Section("ResNet18 vs VGG16")
    ok = {a: r for a, r in rows.items() if "final" in r}
    result: dict[str, Any] = {"models": {a: {k: v for k, v in r.items() if k != "per_epoch"}
                                         for a, r in rows.items()}}
    cols = ["", *[ARCHS[a]["label"] for a in rows]]
    fields = [("final test accuracy", "final"), ("best test accuracy", "best"),
              ("total parameters (ImageNet)", "total"), ("trainable parameters", "trainable"),
              ("head training time, all epochs (s)", "train_time_s"),
              ("backbone feature time (s)", "features_time_s"),
              ("misclassified in the grid", "misclassified"), ("fixed by fine-tuning", "fixed"),
              ("test accuracy after fine-tuning", "test_after")]
    def cell(value: Any) -> Any:
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value

    table = [[name, *[cell(rows[a].get(key)) for a in rows]] for name, key in fields]
    table.append(["reference final test accuracy",
                  *[REF[a]["test/accuracy"][-1] for a in rows]])
    sec.tables.append(Table(cols, table, "Side by side"))
    if {"resnet18", "vgg16"} <= ok.keys():
        ours = 100 * (ok["vgg16"]["final"] - ok["resnet18"]["final"])
        ref = 100 * (REF["vgg16"]["test/accuracy"][-1] - REF["resnet18"]["test/accuracy"][-1])
        verdict = ranking_verdict(ours, ref)
        result.update(vgg_minus_resnet_points=ours, reference_points=ref,
                      agrees=verdict["agrees"], best="vgg16" if ours >= 0 else "resnet18")
        sec.paragraphs.append(verdict["text"])
        sec.images.append(Image("compare-accuracy.png", plots.grouped_bars(
            {ARCHS[a]["label"]: {"ours": ok[a]["final"],
                                 "reference": REF[a]["test/accuracy"][-1]} for a in ok},
            "test accuracy", "Final test accuracy: ours vs reference"),
            "Final test accuracy of ResNet18 and VGG16, ours beside the original report's"))
    elif ok:
        best = max(ok, key=lambda a: ok[a]["final"])
        result["best"] = best
        sec.paragraphs.append("Only one model finished: no comparison.")
    if histories:
        sec.images.append(Image("compare-curves.png", plots.curves(
            histories, metrics=("accuracy",), splits=("test",),
            title="Test accuracy per epoch, both models",
            reference={f"{ARCHS[a]['label']} accuracy": REF[a]["test/accuracy"] for a in ok}),
            "Test accuracy per epoch of both models: ours (dotted) and the original report's "
            "(dash-dot)"))
    return sec, result


def why_different(data: Manifest | None, trained: dict[str, Manifest]) -> str:
    """Why our numbers may differ from the original report's, from what this run did."""
    first = next(iter(trained.values()))
    c, m = first.config, first.metrics
    source = data.inputs.get("source") if data else None
    if source == "generator":
        what = "generated images in STL10's format, not the real dataset"
    elif source:
        what = f"the real STL10 (from {source})"
    else:
        what = "a dataset whose manifest is missing"
    random = [ARCHS[a]["label"] for a, t in trained.items()
              if not t.metrics.get("weights", {}).get("pretrained")]
    n_train, n_test = m.get("n_train"), m.get("n_test")
    size = m.get("image_size", c.get("image_size"))
    sizes = (f", {n_train:,} training / {n_test:,} test images"
             if isinstance(n_train, int) and isinstance(n_test, int) else "")
    parts = [f"ours: {what}{sizes} at {size} px"]
    training = [f"{m.get('epochs', c.get('epochs', '?'))} epochs"]
    if c.get("batch_size"):
        training.append(f"batch {c['batch_size']}")
    if c.get("optimizer") and c.get("learning_rate"):
        training.append(f"{c['optimizer']} with learning rate {c['learning_rate']:g} (the "
                        "original report does not print its optimizer or learning rate)")
    parts.append(", ".join(training))
    if random:
        parts.append(f"{', '.join(random)} from random weights (pretrained: false), so no "
                     "transfer at all")
    else:
        parts.append("ImageNet weights as in the reference")
    return ("Why our numbers may differ: " + "; ".join(parts) + ". Reference: ImageNet "
            "ResNet18 and VGG16, 10 epochs, batch 32, on the real 5,000 / 8,000 STL10 images "
            "at 96 px.")


def render(cfg: ReportConfig, store: Store) -> Manifest:
    """Build the Q2 report from the manifests of its steps."""
    with TaskRun("transfer.report", cfg, store, cfg.out) as run:
        report = Report(cfg.title, list(cfg.intro), meta={
            "question": "q2-transfer", "profile": cfg.profile, "run id": cfg.run_id,
            "store": store.uri})
        if cfg.profile != "full":
            report.title += (f" ({cfg.profile} profile: generated data, not comparable to the "
                             "reference)")
        if cfg.comparison is not None:
            report.sections.append(link_section(cfg.comparison, store))
        data, ex = find_verified(store, cfg.data), find_verified(store, cfg.explore)
        report.sections.append(_data_section(store, data, ex))
        rows, histories = {}, {}
        for ref in cfg.models:
            tr, ft = find_verified(store, ref.train), find_verified(store, ref.finetune)
            sec, row = _model_section(store, ref, tr, ft)
            report.sections.append(sec)
            rows[ref.arch] = row
            if tr is not None:
                histories[ARCHS[ref.arch]["label"]] = tr.model_extra.get("history", [])
        comp, result = _comparison(rows, histories)
        report.sections.append(comp)
        speed = Section("Frozen-backbone speed", [
            "The backbone is frozen, so it runs in eval mode without autograd. Without "
            "augmentation its output never changes: it is computed once for the train and "
            "test sets and every epoch trains only the head on the cached features (with "
            "`augment: true`, the training features are recomputed once per epoch). "
            "`python -m bench.q2_epoch` measures this against the naive loop (full forward "
            "and backward through the whole model each batch). VGG16's head is its whole "
            "classifier (the frozen fc6 and fc7 with Dropout between them, then the new "
            "layer), so its head epochs cost more than ResNet18's single Linear layer."])
        speed.tables.append(Table(
            ["model", "feature pass (s)", "head training, all epochs (s)", "cached"],
            [[ARCHS[a]["label"], r.get("features_time_s"), r.get("train_time_s"),
              r.get("cached")] for a, r in rows.items()]))
        report.sections.append(speed)
        trained = {ref.arch: tr for ref in cfg.models
                   if (tr := find_verified(store, ref.train)) is not None}
        if trained:
            report.why = why_different(data, trained)
            report.sections.append(Section("Why our numbers may differ from the reference",
                                           [report.why]))
        keys = write_report(report, store, cfg.out)
        run.outputs.update(keys)
        result["summary"], result["comparison"] = _final_rows(cfg, rows, result)
        return run.finish(result)


def _final_rows(cfg: ReportConfig, rows: dict[str, dict], result: dict) -> tuple[list, list]:
    """Rows for the cross-question report (see tasks/reporting/final.py)."""
    summary, comparison = [], []
    for ref in cfg.models:
        r = rows.get(ref.arch, {})
        summary.append({"question": "q2-transfer", "variant": f"model={ref.arch}",
                        "status": "ok" if "final" in r else "missing/failed",
                        "metric": "test/accuracy", "value": r.get("final"),
                        "time_s": r.get("train_time_s"), "run": ref.train})
        if "final" not in r:
            continue
        label = ARCHS[ref.arch]["label"]
        fixed = (fixed_text(r["fixed"], r["misclassified"])
                 if isinstance(r.get("fixed"), int) and isinstance(r.get("misclassified"), int)
                 else None)
        comparison += [
            {"question": "q2-transfer", "item": f"{label} final test accuracy",
             "ours": r["final"], "reference": REF[ref.arch]["test/accuracy"][-1],
             "kind": "pct"},
            {"question": "q2-transfer", "item": f"{label} best test accuracy",
             "ours": r.get("best"), "reference": max(REF[ref.arch]["test/accuracy"]),
             "kind": "pct"},
            {"question": "q2-transfer", "item": f"{label} total parameters (1000 classes)",
             "ours": r.get("total"), "reference": REF[ref.arch]["total_params"],
             "kind": "count"},
            {"question": "q2-transfer", "item": f"{label} fine-tuning fixed",
             "ours": fixed, "reference": fixed_text(*REF[ref.arch]["finetune_fixed"]),
             "kind": "text"}]
    if "vgg_minus_resnet_points" in result:
        comparison.append({"question": "q2-transfer", "item": "VGG16 minus ResNet18 (points)",
                           "ours": result["vgg_minus_resnet_points"],
                           "reference": result["reference_points"], "kind": "pts"})
    return summary, comparison
