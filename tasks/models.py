"""Model builders for every question, and a model-summary helper (layer, output shape, params)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def summarize(model: nn.Module, input_shape: Sequence[int], device: str = "cpu",
              depth: int | None = None, containers: bool = False) -> dict[str, Any]:
    """Run one forward pass and list each leaf layer with its output shape and parameter count.

    Returns ``{"rows": [{"layer", "output_shape", "params"}], "total_params",
    "trainable_params", "input_shape", "output_shape"}``. Layer names follow torchsummary
    (``Conv2d-1``, ``ReLU-2``, ...); ``depth`` limits how deep modules are listed.
    ``containers=True`` also lists blocks other than Sequential/ModuleList (e.g. ResNet's
    ``BasicBlock``) with their own direct parameters, as torchsummary does, so the rows match
    its table one for one.
    """
    rows: list[dict[str, Any]] = []
    hooks = []
    counter = {"n": 0}

    def leafs():
        for name, mod in model.named_modules():
            leaf = not list(mod.children())
            block = containers and not isinstance(mod, nn.Sequential | nn.ModuleList)
            if name and (leaf or block or
                         (depth is not None and name.count(".") + 1 == depth)):
                if depth is not None and name.count(".") + 1 > depth:
                    continue
                yield name, mod

    def make_hook(name: str):
        def hook(mod, _inp, out):
            counter["n"] += 1
            shape = list(out.shape) if isinstance(out, torch.Tensor) else None
            leaf = not list(mod.children())
            rows.append({"layer": f"{type(mod).__name__}-{counter['n']}", "module": name,
                         "output_shape": shape,
                         "params": sum(p.numel() for p in mod.parameters(recurse=leaf or
                                                                         not containers))})
        return hook

    for name, mod in leafs():
        hooks.append(mod.register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(*input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {
        "input_shape": list(input_shape),
        "output_shape": list(out.shape),
        "rows": rows,
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A torchsummary-like text table of ``summarize``'s result."""
    lines = [f"{'Layer (type)':<28}{'Output Shape':<26}{'Param #':>14}", "=" * 68]
    for row in summary["rows"]:
        lines.append(f"{row['layer']:<28}{str(row['output_shape']):<26}{row['params']:>14,}")
    lines += ["=" * 68, f"Total params: {summary['total_params']:,}",
              f"Trainable params: {summary['trainable_params']:,}",
              f"Non-trainable params: {summary['total_params'] - summary['trainable_params']:,}"]
    return "\n".join(lines)
