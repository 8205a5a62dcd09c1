"""Q1's side of ``visionflows compare``: a cell is one sweep cell (``b64-relu-cross_entropy``,
``cnn_pool_bn-d0.3``) with its seeds (``<cell>-seed<k>``); its metrics are its training's and
its final evaluation's, its curves the training history, its per-class numbers the
evaluation's precision and recall, plus the confusion matrix. The input data is the
Fashion-MNIST copy's sha256 record.
"""

from __future__ import annotations

import re

from tasks.core.runtime import Manifest, find_manifest
from tasks.core.store import Store
from tasks.q1.data import CLASSES
from tasks.reporting.compare import Cell, Comparer, dataset_identity, numbers
from tasks.reporting.runs import RunInfo

SEED = re.compile(r"-seed(\d+)$")


def _split_key(metrics: dict, suffix: str) -> str | None:
    return next((k for k in metrics if k.endswith(f"/{suffix}")), None)


class Q1Comparer(Comparer):
    """A Q1 sweep (q1-mlp or q1-cnn)."""

    curve_metrics = ("loss", "accuracy")
    curve_splits = ("train", "dev", "test")
    cell_label = "cell"

    def __init__(self, question: str, primary: str, secondary: tuple[str, ...]):
        self.question, self.primary, self.secondary = question, primary, secondary

    def cells(self, store: Store, run: RunInfo) -> dict[str, Cell]:
        train, evals = run.manifest.get("train") or {}, run.manifest.get("eval") or {}
        by_base: dict[str, list[str]] = {}
        for cid in train:
            by_base.setdefault(SEED.sub("", cid), []).append(cid)
        out = {}
        for base, ids in by_base.items():
            ids.sort(key=lambda c: int(m[1]) if (m := SEED.search(c)) else 0)
            loaded: list[tuple[Manifest, Manifest]] = []
            for cid in ids:
                tr = find_manifest(store, train[cid])
                ev = find_manifest(store, evals[cid]) if cid in evals else None
                if tr is not None and ev is not None:
                    loaded.append((tr, ev))
            if not loaded:
                continue
            tr0, ev0 = loaded[0]
            pc_key = _split_key(ev0.metrics, "per_class")
            cm_key = _split_key(ev0.metrics, "confusion_matrix")
            pc = ev0.metrics.get(pc_key, {}) if pc_key else {}
            classes = list((ev0.model_extra or {}).get("classes") or CLASSES)
            out[base] = Cell(
                name=base, seeds=[{**numbers(t.metrics), **numbers(e.metrics)}
                                  for t, e in loaded],
                history=list((tr0.model_extra or {}).get("history") or []), classes=classes,
                per_class={k: pc[k] for k in ("precision", "recall") if k in pc},
                confusion=ev0.metrics.get(cm_key) if cm_key else None,
                confusion_labels=classes,
                steps=[m.model_dump(mode="json") for pair in loaded for m in pair])
        return out

    def inputs(self, store: Store, run: RunInfo) -> dict[str, str]:
        return dataset_identity(store, run.manifest.get("data"), "fashion-mnist")


MLP = Q1Comparer("q1-mlp", "test/accuracy", (
    "test/f1_macro", "test/precision_macro", "test/recall_macro", "test/loss", "train/loss",
    "train/time_s", "epochs"))
CNN = Q1Comparer("q1-cnn", "dev/accuracy", (
    "test/accuracy", "best/dev/accuracy", "test/f1_macro", "test/loss", "train/loss",
    "train/time_s", "epochs"))
