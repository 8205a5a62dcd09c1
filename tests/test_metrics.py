from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.ml.metrics import classification_metrics, confusion_matrix


def direct(y_true, y_pred, k):
    """Straightforward loops, the definition of each metric."""
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[t, p] += 1
    prec, rec, f1 = [], [], []
    for c in range(k):
        tp = cm[c, c]
        pp = cm[:, c].sum()
        ap = cm[c, :].sum()
        p = tp / pp if pp else 0.0
        r = tp / ap if ap else 0.0
        prec.append(p)
        rec.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return cm, np.mean(prec), np.mean(rec), np.mean(f1), prec, rec, np.trace(cm) / len(y_true)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [2, 10])
def test_metrics_match_direct_computation(seed, k):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, 500)
    y_pred = np.where(rng.random(500) < 0.4, y_true, rng.integers(0, k, 500))
    if k == 10:
        y_pred[y_pred == 3] = 4  # a class never predicted: precision 0 by convention
    m = classification_metrics(torch.tensor(y_true), torch.tensor(y_pred), k)
    cm, p, r, f1, prec, rec, acc = direct(y_true, y_pred, k)
    assert m["confusion_matrix"] == cm.tolist()
    assert m["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert m["precision_macro"] == pytest.approx(p, abs=1e-6)
    assert m["recall_macro"] == pytest.approx(r, abs=1e-6)
    assert m["f1_macro"] == pytest.approx(f1, abs=1e-6)
    assert m["per_class"]["precision"] == pytest.approx(prec, abs=1e-6)
    assert m["per_class"]["recall"] == pytest.approx(rec, abs=1e-6)


def test_confusion_matrix_orientation():
    cm = confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([1, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]  # rows true, columns predicted
