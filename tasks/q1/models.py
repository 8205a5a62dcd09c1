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
    ``pool=True`` (d): each conv followed by BatchNorm, ReLU, MaxPool(2) -> 1,152 features.
    ``dropout`` applies to the fully connected layers only (e).
    """

    def __init__(self, pool: bool = False, num_classes: int = 10, dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__()
        act = ACTIVATIONS[activation]
        if pool:
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), act(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), act(), nn.MaxPool2d(2))
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
    """Build a Q1 classifier by name: ``mlp``, ``cnn`` (no pooling) or ``cnn_pool_bn``."""
    if kind == "mlp":
        return MLP(784, hidden, num_classes, activation, dropout)
    if kind == "cnn":
        return CNN(pool=False, num_classes=num_classes, dropout=dropout, activation=activation)
    if kind == "cnn_pool_bn":
        return CNN(pool=True, num_classes=num_classes, dropout=dropout, activation=activation)
    raise ValueError(f"unknown model {kind!r}; use mlp, cnn or cnn_pool_bn")
