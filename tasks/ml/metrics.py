"""Classification metrics: confusion matrix, accuracy, macro and per-class P/R/F1."""

from __future__ import annotations

from typing import Any

import torch


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[i, j]`` = number of samples of true class i predicted as j."""
    y_true = y_true.reshape(-1).long().cpu()
    y_pred = y_pred.reshape(-1).long().cpu()
    idx = y_true * num_classes + y_pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes,
                                                                            num_classes)


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor,
                           num_classes: int) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, per-class precision/recall/F1, confusion matrix.

    A class never predicted has precision 0; never present, recall 0 (sklearn's
    ``zero_division=0``). Macro averages are over all ``num_classes`` classes.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes).double()
    tp = cm.diag()
    pred_pos = cm.sum(0)
    true_pos = cm.sum(1)
    precision = torch.where(pred_pos > 0, tp / pred_pos.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(true_pos > 0, tp / true_pos.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12),
                     torch.zeros_like(tp))
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": true_pos.long().tolist(),
        },
        "confusion_matrix": cm.long().tolist(),
    }
