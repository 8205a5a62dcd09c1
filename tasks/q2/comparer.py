"""Q2's side of ``visionflows compare``: a cell is one architecture (``resnet18``,
``vgg16``) with its head training's metrics and curves and its fine-tuning's results; the
images are the two runs' prediction grids of the same fixed-seed test images, and a section
lists the grid predictions that changed. The input data is the STL10 copy's sha256 record
and the backbone weights' sha256.
"""

from __future__ import annotations

from typing import Any

from tasks.core.runtime import find_manifest
from tasks.core.store import Store
from tasks.q2.data import CLASSES
from tasks.reporting.compare import Cell, Comparer, ImagePair, dataset_identity, numbers
from tasks.reporting.render import Section, Table
from tasks.reporting.runs import RunInfo


class Q2Comparer(Comparer):
    question = "q2-transfer"
    primary = "test/accuracy"
    secondary = ("best/test/accuracy", "test/loss", "train/loss", "train/time_s",
                 "grid/accuracy", "misclassified", "fixed", "broken")
    curve_metrics = ("loss", "accuracy")
    curve_splits = ("train", "test")
    cell_label = "model"

    def _finetunes(self, store: Store, run: RunInfo) -> dict[str, Any]:
        return {arch: find_manifest(store, prefix)
                for arch, prefix in (run.manifest.get("finetune") or {}).items()}

    def cells(self, store: Store, run: RunInfo) -> dict[str, Cell]:
        out = {}
        tuned = self._finetunes(store, run)
        for arch, prefix in (run.manifest.get("train") or {}).items():
            tr, ft = find_manifest(store, prefix), tuned.get(arch)
            if tr is None:
                continue
            metrics = {**(numbers(ft.metrics) if ft else {}), **numbers(tr.metrics)}
            out[arch] = Cell(name=arch, seeds=[metrics],
                             history=list((tr.model_extra or {}).get("history") or []),
                             classes=list(CLASSES),
                             steps=[m.model_dump(mode="json") for m in (tr, ft) if m])
        return out

    def inputs(self, store: Store, run: RunInfo) -> dict[str, str]:
        out = dataset_identity(store, run.manifest.get("data"), "stl10")
        for arch, info in sorted((run.manifest.get("weights") or {}).items()):
            if isinstance(info, dict):
                out[f"weights {arch}"] = str(info.get("sha256") or info.get("source"))
        return out

    def images(self, store, a, b, cells_a, cells_b) -> list[ImagePair]:
        ta, tb = self._finetunes(store, a), self._finetunes(store, b)
        pairs = []
        for arch in [x for x in tb if x in ta]:
            fa, fb = ta[arch], tb[arch]
            if fa is None or fb is None:
                continue
            same = fa.metrics.get("grid/indices") == fb.metrics.get("grid/indices")
            data_same = (dataset_identity(store, a.manifest.get("data")) ==
                         dataset_identity(store, b.manifest.get("data")))
            note = ("the same test images in both runs" if same and data_same else
                    "not the same test images (grid_seed, grid_size or the data differ)")
            pairs.append(ImagePair(f"{arch}: prediction grid", fa.outputs.get("grid"),
                                   fb.outputs.get("grid"), f"Predictions before fine-tuning; "
                                   f"{note}."))
            if fa.outputs.get("finetune_grid") or fb.outputs.get("finetune_grid"):
                pairs.append(ImagePair(f"{arch}: misclassified after fine-tuning",
                                       fa.outputs.get("finetune_grid"),
                                       fb.outputs.get("finetune_grid"),
                                       "Each run fine-tunes on its own misclassified images."))
        return pairs

    def sections(self, store, a, b, cells_a, cells_b) -> tuple[list[Section], dict[str, Any]]:
        ta, tb = self._finetunes(store, a), self._finetunes(store, b)
        sec = Section("Prediction grid: what changed")
        data: dict[str, Any] = {}
        for arch in [x for x in tb if x in ta]:
            fa, fb = ta[arch], tb[arch]
            if fa is None or fb is None:
                continue
            ia, ib = fa.metrics.get("grid/indices"), fb.metrics.get("grid/indices")
            if ia != ib:
                sec.paragraphs.append(f"{arch}: the grids show different test images: no "
                                      "image-by-image comparison.")
                continue
            y, pa, pb = (fa.metrics["grid/true"], fa.metrics["grid/pred"],
                         fb.metrics["grid/pred"])
            changed = [i for i in range(len(y)) if pa[i] != pb[i]]
            fixed = sum(pa[i] != y[i] and pb[i] == y[i] for i in changed)
            broke = sum(pa[i] == y[i] and pb[i] != y[i] for i in changed)
            data[arch] = {"changed": len(changed), "right_in_b_only": fixed,
                          "right_in_a_only": broke, "images": len(y)}
            sec.paragraphs.append(
                f"{arch}: {len(changed)} of {len(y)} grid predictions changed; {fixed} right "
                f"only in B, {broke} right only in A.")
            if changed:
                sec.tables.append(Table(
                    ["test image", "true", "A predicted", "B predicted", "right in"],
                    [[ia[i], CLASSES[y[i]], CLASSES[pa[i]], CLASSES[pb[i]],
                      "A" if pa[i] == y[i] else "B" if pb[i] == y[i] else "neither"]
                     for i in changed], f"{arch}: grid images whose prediction changed"))
        return ([sec] if sec.paragraphs else []), {"grid": data}


    def summary(self, metrics: dict[str, Any]) -> list[str]:
        return [f"{arch} grid: {d['changed']} of {d['images']} predictions changed "
                f"({d['right_in_b_only']} right only in B, {d['right_in_a_only']} only in A)"
                for arch, d in (metrics.get("grid") or {}).items()]


COMPARER = Q2Comparer()
