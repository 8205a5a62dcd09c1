"""A model summary (torchsummary-style): each layer's output shape and parameter count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


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
