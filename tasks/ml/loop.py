"""The one training and evaluation loop for every classifier.

Data lives in tensors on the device and is batched by index (no per-sample DataLoader).
Each question supplies hooks: how to preprocess a batch (on the device), which loss.
``train_one_epoch`` and ``evaluate`` take explicit arguments and return metric dicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tasks.core.progress import batch_done
from tasks.core.runtime import check_stop

Preprocess = Callable[[torch.Tensor, bool], torch.Tensor]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_loss(kind: str, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``cross_entropy`` on logits, or ``mse`` between softmax(logits) and one-hot targets."""
    if kind == "cross_entropy":
        return nn.CrossEntropyLoss()
    if kind == "mse":
        def mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            onehot = F.one_hot(target.long(), num_classes).to(logits.dtype)
            return F.mse_loss(torch.softmax(logits, dim=1), onehot)
        return mse
    raise ValueError(f"unknown loss {kind!r}; use cross_entropy or mse")


@dataclass(frozen=True)
class Split:
    """Inputs (any dtype; preprocess turns them into model input) and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def __len__(self) -> int:
        return int(self.y.shape[0])


def train_one_epoch(model: nn.Module, data: Split, *, batch_size: int,
                    optimizer: torch.optim.Optimizer, loss_fn, preprocess: Preprocess,
                    generator: torch.Generator, drop_last: bool = False,
                    autocast: torch.dtype | None = None) -> dict[str, float]:
    """One pass over ``data`` in a random order drawn from ``generator``.

    ``autocast`` (e.g. ``torch.bfloat16``) runs the forward pass in mixed precision.

    Returns ``{"loss", "accuracy", "time_s"}`` (sample-weighted means over the epoch).
    """
    model.train()
    device = data.x.device
    start = time.perf_counter()
    n = len(data)
    order = torch.randperm(n, generator=generator).to(device)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        check_stop()  # Ctrl-C / SIGTERM: stop between batches
        idx = order[i:i + batch_size]
        xb = preprocess(data.x.index_select(0, idx), True)
        yb = data.y.index_select(0, idx)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(xb)
            loss = loss_fn(logits.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bs = yb.shape[0]
        total_loss += loss.detach() * bs
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += bs
        batch_done(i // batch_size + 1, -(-stop // batch_size))  # progress bars, throttled
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"loss": float(total_loss) / max(seen, 1), "accuracy": float(correct) / max(seen, 1),
            "time_s": time.perf_counter() - start}


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, *, batch_size: int, loss_fn,
             preprocess: Preprocess, return_predictions: bool = False,
             autocast: torch.dtype | None = None) -> dict:
    """Loss and accuracy over ``data`` in eval mode; optionally the predictions (CPU tensor)."""
    model.eval()
    device = data.x.device
    total_loss = torch.zeros((), device=device)
    preds = []
    for i in range(0, len(data), batch_size):
        xb = preprocess(data.x[i:i + batch_size], False)
        yb = data.y[i:i + batch_size]
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(xb).float()
        total_loss += loss_fn(logits, yb) * yb.shape[0]
        preds.append(logits.argmax(1))
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=device)
    n = max(len(data), 1)
    out = {"loss": float(total_loss) / n, "accuracy": float((pred == data.y).sum()) / n}
    if return_predictions:
        out["predictions"] = pred.cpu()
    return out
