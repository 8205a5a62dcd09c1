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

from tasks.core.log import get_logger
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


def _forward(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, loss_fn,
             autocast: torch.dtype | None, cache: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and loss of one batch; autocast only when asked (its context manager alone
    costs tens of microseconds, a tenth of a small model's step)."""
    if autocast is None:
        logits = model(xb)
        return logits, loss_fn(logits, yb)
    with torch.autocast(xb.device.type, dtype=autocast, cache_enabled=cache):
        logits = model(xb)
        return logits, loss_fn(logits.float(), yb)


def train_one_epoch(model: nn.Module, data: Split, *, batch_size: int,
                    optimizer: torch.optim.Optimizer, loss_fn, preprocess: Preprocess,
                    generator: torch.Generator, drop_last: bool = False,
                    autocast: torch.dtype | None = None,
                    cuda_graph: bool = False) -> dict[str, float]:
    """One pass over ``data`` in a random order drawn from ``generator``.

    Per batch only what must be per batch: one ``index_select`` of the inputs, the
    ``preprocess`` hook, forward, loss, backward, optimizer step. The labels are gathered
    once per epoch, and the metrics are kept on the device (each step's loss and logits)
    and read once at the end, so the host never waits for the device mid-epoch.

    ``autocast`` (e.g. ``torch.bfloat16``) runs the forward pass in mixed precision.
    ``cuda_graph`` (CUDA only; ignored elsewhere): replay the full batches as one captured
    CUDA graph each (see ``_graphed_steps``); the optimizer must be capturable (Adam:
    ``capturable=True``), else the epoch runs eagerly with a warning.

    Returns ``{"loss", "accuracy", "time_s"}`` (sample-weighted means over the epoch).
    """
    model.train()
    device = data.x.device
    start = time.perf_counter()
    n = len(data)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    order = torch.randperm(n, generator=generator)[:stop].to(device)
    targets = data.y.index_select(0, order)
    batches = list(zip(order.split(batch_size), targets.split(batch_size), strict=True))
    tally = _Tally(len(batches))
    graphed = None
    if cuda_graph and device.type == "cuda":
        graphed = _graphed_steps(model, data, order, batches, batch_size=batch_size,
                                 optimizer=optimizer, loss_fn=loss_fn, preprocess=preprocess,
                                 autocast=autocast, tally=tally, capture=True)
    if graphed is None:
        _eager_steps(model, data, batches, optimizer, loss_fn, preprocess, autocast, tally)
    loss, correct, seen = tally.totals(device)
    return {"loss": loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "time_s": time.perf_counter() - start}


class _Tally:
    """An epoch's training metrics, kept on the device until the end of the epoch."""

    def __init__(self, batches: int) -> None:
        self.batches = batches  # the epoch's batches, for the progress bar
        self.done = 0
        self.losses: list[torch.Tensor] = []  # each eager step's mean loss (0-dim)
        self.sizes: list[int] = []
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.graph_loss: torch.Tensor | None = None  # sums over the replayed steps
        self.graph_correct: torch.Tensor | None = None
        self.graph_seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, yb: torch.Tensor) -> None:
        self.losses.append(loss.detach())
        self.sizes.append(yb.shape[0])
        self.logits.append(logits.detach())
        self.targets.append(yb)
        self.stepped()

    def stepped(self) -> None:
        """One more batch done: the progress bar (throttled) moves."""
        self.done += 1
        batch_done(self.done, self.batches)

    def totals(self, device: torch.device) -> tuple[float, int, int]:
        """(summed loss, correct, samples): the epoch's one read from the device."""
        loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        if self.losses:
            weights = torch.tensor(self.sizes, dtype=torch.float64).to(device)
            loss = loss + (torch.stack(self.losses).double() * weights).sum()
            pred = torch.cat(self.logits).argmax(1)
            correct = correct + (pred == torch.cat(self.targets)).sum()
        if self.graph_loss is not None:
            loss, correct = loss + self.graph_loss, correct + self.graph_correct
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return float(loss), int(correct), sum(self.sizes) + self.graph_seen


def _eager_steps(model: nn.Module, data: Split, batches, optimizer: torch.optim.Optimizer,
                 loss_fn, preprocess: Preprocess, autocast: torch.dtype | None,
                 tally: _Tally) -> None:
    for idx, yb in batches:
        check_stop()  # Ctrl-C / SIGTERM: stop between batches
        xb = preprocess(data.x.index_select(0, idx), True)
        logits, loss = _forward(model, xb, yb, loss_fn, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tally.add(loss, logits, yb)


GRAPH_WARMUP = 3  # eager steps on a side stream before a capture (cuBLAS/cuDNN set-up)


def _graphed_steps(model: nn.Module, data: Split, order: torch.Tensor, batches, *,
                   batch_size: int, optimizer: torch.optim.Optimizer, loss_fn,
                   preprocess: Preprocess, autocast: torch.dtype | None, tally: _Tally,
                   capture: bool) -> bool | None:
    """Run an epoch's ``batches`` with the full ones replayed from one captured CUDA graph.

    A small model on a GPU is bound by kernel launches (a Q1 step is ~100 tiny kernels);
    a replay launches the whole step at once. The first batch runs eagerly (on a fresh
    run it creates the optimizer's state). The step is then run ``GRAPH_WARMUP`` times on
    a side stream (lazy cuBLAS/cuDNN/autograd set-up must not happen during capture),
    everything those steps changed (parameters, buffers, optimizer state, the RNG state) is
    put back exactly, and the step is captured once and replayed for every other full
    batch. Each replay gathers its batch through a position counter that lives on the
    device, applies ``preprocess`` (random draws come from the CUDA generator's graph-safe
    offsets: the same distribution as eager, other numbers), runs forward, loss, backward
    and the optimizer step, and adds its loss and correct count to on-device sums. A
    partial last batch runs eagerly.

    Returns None, having run nothing, when capturing cannot work or pay (the optimizer is
    not capturable, or fewer than ``GRAPH_WARMUP + 2`` full batches); the caller then runs
    the epoch eagerly. A failed capture puts the state back, logs why and runs the rest
    eagerly. ``capture=False`` runs the same steps eagerly, warm-up and restore included
    (a rehearsal of this path where there is no GPU: tests compare it with the eager loop).
    """
    device = data.x.device
    full = len(order) // batch_size
    if full < GRAPH_WARMUP + 2:
        return None
    if capture and any(not g.get("capturable", True) for g in optimizer.param_groups):
        get_logger("ml.loop").warning(
            "cuda_graph: %s is not capturable (Adam: capturable=True); running eagerly",
            type(optimizer).__name__)
        return None
    _eager_steps(model, data, batches[:1], optimizer, loss_fn, preprocess, autocast, tally)
    pos0 = torch.arange(batch_size, batch_size * 2, device=device)
    pos = pos0.clone()  # positions in ``order`` of the next batch
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)

    def step() -> None:
        idx = order.index_select(0, pos)
        xb = preprocess(data.x.index_select(0, idx), True)
        yb = data.y.index_select(0, idx)
        optimizer.zero_grad(set_to_none=False)  # the grads stay where the graph wrote them
        logits, loss = _forward(model, xb, yb, loss_fn, autocast, cache=False)
        loss.backward()
        optimizer.step()
        loss_sum.add_(loss.detach().double() * batch_size)
        correct.add_((logits.detach().argmax(1) == yb).sum())
        pos.add_(batch_size)

    replay = step
    saved = _snapshot(model, optimizer, device)
    try:
        if capture:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP):
                    step()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            replay = graph.replay
        else:
            for _ in range(GRAPH_WARMUP):
                step()
    except Exception as exc:  # an op that cannot be captured: fall back, state intact
        if capture:
            torch.cuda.synchronize(device)  # the side stream's warm-up steps, if any
        _restore(saved, device)
        get_logger("ml.loop").warning("cuda_graph: capture failed (%s: %s); running this "
                                      "epoch eagerly", type(exc).__name__, exc)
        _eager_steps(model, data, batches[1:], optimizer, loss_fn, preprocess, autocast,
                     tally)
        return False
    _restore(saved, device)
    with torch.no_grad():
        pos.copy_(pos0)
        loss_sum.zero_()
        correct.zero_()
    for _ in range(full - 1):
        check_stop()
        replay()
        tally.stepped()
    tally.graph_loss, tally.graph_correct = loss_sum, correct
    tally.graph_seen = (full - 1) * batch_size
    _eager_steps(model, data, batches[full:], optimizer, loss_fn, preprocess, autocast, tally)
    return capture


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
    """Copies of everything a training step changes: parameters, buffers, optimizer state
    and the RNG states (CPU, and the device's)."""
    tensors = [*model.parameters(), *model.buffers()]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    with torch.no_grad():
        copies = [(t, t.detach().clone()) for t in tensors]
    rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return copies, torch.get_rng_state(), rng


def _restore(saved, device: torch.device) -> None:
    """Put back a ``_snapshot`` in place (a captured graph keeps its tensors' addresses)."""
    copies, cpu_rng, dev_rng = saved
    with torch.no_grad():
        for t, copy in copies:
            t.detach().copy_(copy)
    torch.set_rng_state(cpu_rng)
    if dev_rng is not None:
        torch.cuda.set_rng_state(dev_rng, device)


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
        logits, loss = _forward(model, xb, yb, loss_fn, autocast)
        total_loss += loss * yb.shape[0]
        preds.append(logits.argmax(1))
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=device)
    n = max(len(data), 1)
    out = {"loss": float(total_loss) / n, "accuracy": float((pred == data.y).sum()) / n}
    if return_predictions:
        out["predictions"] = pred.cpu()
    return out
