"""Q1 model builders: the fully connected MLP and the two CNNs of (c) and (d)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """Fully connected classifier on flattened inputs: 784 -> hidden... -> classes."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (256, 128),
                 num_classes: int = 10, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in hidden:
            layers += [nn.Linear(prev, width), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """SPEC Q1-CNN: two 3x3 conv blocks, then fc 64 -> 32 -> classes.

    ``pool=False`` (c): conv(1->16, p1) -> ReLU -> conv(16->32) -> ReLU -> 21,632 features.
    ``pool=True`` (d): each conv followed by BatchNorm, ReLU, MaxPool(2) -> 1,152 features
    (SPEC.md's order); ``pool_first=True``: conv, MaxPool(2), BatchNorm, ReLU, the original
    report's blocks ("CPR", BatchNorm "at the output of the pooling layer"): the same
    shapes and parameters, BatchNorm normalising the 2x2 maxima.
    ``dropout`` applies to the fully connected layers only (e).
    """

    def __init__(self, pool: bool = False, num_classes: int = 10, dropout: float = 0.0,
                 activation: str = "relu", pool_first: bool = False):
        super().__init__()
        act = ACTIVATIONS[activation]
        if pool:
            def block(conv: nn.Conv2d) -> list[nn.Module]:
                bn = nn.BatchNorm2d(conv.out_channels)
                if pool_first:
                    return [conv, nn.MaxPool2d(2), bn, act()]
                return [conv, bn, act(), nn.MaxPool2d(2)]

            self.features = nn.Sequential(*block(nn.Conv2d(1, 16, 3, padding=1)),
                                          *block(nn.Conv2d(16, 32, 3)))
            flat = 6 * 6 * 32
        else:
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), act(),
                nn.Conv2d(16, 32, 3), act())
            flat = 26 * 26 * 32
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(flat, 64), act(), nn.Dropout(dropout),
            nn.Linear(64, 32), act(), nn.Dropout(dropout),
            nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def build_classifier(kind: str, *, activation: str = "relu", hidden: Sequence[int] = (256, 128),
                     dropout: float = 0.0, num_classes: int = 10) -> nn.Module:
    """Build a Q1 classifier by name: ``mlp``, ``cnn`` (no pooling), ``cnn_pool_bn`` (d) or
    ``cnn_pool_first`` ((d) with the report's block order)."""
    if kind == "mlp":
        return MLP(784, hidden, num_classes, activation, dropout)
    if kind in ("cnn", "cnn_pool_bn", "cnn_pool_first"):
        return CNN(pool=kind != "cnn", num_classes=num_classes, dropout=dropout,
                   activation=activation, pool_first=kind == "cnn_pool_first")
    raise ValueError(f"unknown model {kind!r}; use mlp, cnn, cnn_pool_bn or cnn_pool_first")
