"""Q4's side of ``visionflows compare``: a cell is one trained model (``yolov5s``); its
metrics are the evaluation's (P, R, mAP@0.5, mAP@0.5:0.95 on the evaluated split) and the
training's; its curves are ultralytics' ``results.csv`` (box/cls/dfl losses and mAP per
epoch); its per-class numbers are the per-class mAP and P/R, plus the confusion matrix; the
images are both runs' predicted boxes on the same validation images. The input data is the
export's sha256 record.
"""

from __future__ import annotations

from tasks.core.runtime import find_manifest
from tasks.core.store import Store
from tasks.reporting.compare import Cell, Comparer, ImagePair, dataset_identity, numbers
from tasks.reporting.runs import RunInfo

PER_CLASS = ("mAP50-95", "mAP50", "precision", "recall")


def _split(run: RunInfo) -> str:
    return str((run.manifest.get("config") or {}).get("eval_split") or "val")


def _history(rows: list[dict]) -> list[dict]:
    """results.csv rows with the mAP columns under the names the curves use."""
    return [{**h, "val/mAP50": h.get("metrics/mAP50(B)"),
             "val/mAP50-95": h.get("metrics/mAP50-95(B)")} for h in rows]


class Q4Comparer(Comparer):
    question = "q4-yolo"
    primary = "val/mAP50-95"
    secondary = ("val/mAP50", "val/precision", "val/recall", "train/time_s", "epochs")
    curve_metrics = ("box_loss", "cls_loss", "dfl_loss", "mAP50-95")
    curve_splits = ("train", "val")
    cell_label = "model"

    def _loaded(self, store: Store, run: RunInfo):
        out = {}
        evals = run.manifest.get("eval") or {}
        for model, prefix in (run.manifest.get("train") or {}).items():
            tr = find_manifest(store, prefix)
            ev = find_manifest(store, evals[model]) if model in evals else None
            if tr is not None and ev is not None:
                out[(ev.model_extra or {}).get("label") or model] = (tr, ev)
        return out

    def cells(self, store: Store, run: RunInfo) -> dict[str, Cell]:
        sp = _split(run)
        out = {}
        for label, (tr, ev) in self._loaded(store, run).items():
            names = list((ev.model_extra or {}).get("classes") or [])
            pc = ev.metrics.get(f"{sp}/per_class") or {}
            names = names or list(pc)
            metrics = {**numbers(tr.metrics), **numbers(ev.metrics)}
            if sp != "val":  # the primary and secondary names say val: alias the split
                metrics.update({k.replace(f"{sp}/", "val/", 1): v for k, v in metrics.items()
                                if k.startswith(f"{sp}/")})
            out[label] = Cell(
                name=label, seeds=[metrics],
                history=_history(list((tr.model_extra or {}).get("history") or [])),
                classes=names,
                per_class={k: [(pc.get(c) or {}).get(k) for c in names] for k in PER_CLASS
                           if any(k in (pc.get(c) or {}) for c in names)},
                confusion=ev.metrics.get(f"{sp}/confusion_matrix"),
                confusion_labels=[*names, "background"],
                steps=[tr.model_dump(mode="json"), ev.model_dump(mode="json")])
        return out

    def inputs(self, store: Store, run: RunInfo) -> dict[str, str]:
        return dataset_identity(store, run.manifest.get("data"), "export")

    def images(self, store, a, b, cells_a, cells_b) -> list[ImagePair]:
        la, lb = self._loaded(store, a), self._loaded(store, b)
        pairs = []
        for label in [x for x in lb if x in la]:
            ea, eb = la[label][1], lb[label][1]
            sa = (ea.model_extra or {}).get("samples")
            sb = (eb.model_extra or {}).get("samples")
            same = sa == sb and dataset_identity(store, a.manifest.get("data")) == \
                dataset_identity(store, b.manifest.get("data"))
            pairs.append(ImagePair(
                f"{label}: predicted boxes", ea.outputs.get("predictions"),
                eb.outputs.get("predictions"),
                "Ground truth (left of each pair) and predictions (right); "
                + ("the same validation images in both runs." if same else
                   "not the same validation images (the data or the sample count differ).")))
        return pairs


COMPARER = Q4Comparer()
