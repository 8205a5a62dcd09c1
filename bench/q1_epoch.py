"""One Q1 training epoch: ours vs pure compute vs a plain torchvision Dataset + DataLoader loop.

Three contenders per case (four on CUDA), each with its own copy of the same model (same
kind, seed and speed options) and its own Adam, measured in one process, interleaved:

- **ours**: what ``classifier.train`` runs (the split as the task prepares it, the shared
  ``train_one_epoch`` with the task's preprocess), with the speed options its flow uses by
  default (q1-cnn: ``channels_last``; ``--plain-options`` turns them off);
- **pure compute**: the bound: the model's forward, loss, backward and optimizer step on one
  fixed batch that is already prepared (no indexing, flip, normalisation or layout change,
  no metrics), for exactly as many steps (and samples: the last step uses a partial batch
  when ours has one) as ours;
- **plain**: the tutorial loop: ``FashionMNIST`` with per-sample ``ToTensor()`` (CNNs also
  ``RandomHorizontalFlip`` and ``Normalize``) and a shuffling ``DataLoader``;
- on CUDA (``--cuda-graphs auto``) a fourth, **ours + cuda_graphs**: ours with the
  ``cuda_graphs`` option (each epoch's step captured once, replayed per batch).

Cases are the seed's batch sizes: MLP 32, 64, 256 (20,000 samples), CNN (d) ``cnn_pool_bn``
and (c) ``cnn`` at 32 (10,000 samples). Each round runs every contender once (every other
round in reverse order); the ratios are medians of the per-round ratios (runs side by side
see the same load), with quartiles. On a shared machine a 5 % margin drowns in that noise,
so each case also measures ours' **own work** precisely: ours and pure compute once more
with a stand-in model of no compute (``StandIn``, a no-op SGD step); each run takes
milliseconds, so many rounds give a steady difference: the loop's per-step cost beyond
the model, in microseconds and as a share of a pure-compute step. Prints each contender's
median and ``RESULT`` lines with ours/pure (target <= 1.05), ours/plain, the own work
(and ours+cuda_graphs/pure, /ours).

Denormals: Adam's moments for weights whose gradient is rarely non-zero (pixels that are
almost always 0) decay into float32 denormals, and x86 arithmetic on those is slow (an Adam
step on 784x256 weights, 30 % of them denormal: 4x the time). Ours meets many more of them
than pure compute, whose one batch has few such pixels: a cost of the numbers, not of the
loop. ``--denormals flush`` sets flush-to-zero for every contender so that ours/pure
compares the work alone; the default ``keep`` times what training really does.

    python -m bench.q1_epoch [--cases mlp:32,mlp:64,mlp:256,cnn_pool_bn:32,cnn:32]
                             [--n N] [--repeats 3] [--threads T] [--clock wall|cpu]
                             [--denormals keep|flush] [--device cpu|cuda]
    python -m bench.q1_epoch --model cnn_pool_bn --batch-size 32     # one case
"""

from __future__ import annotations

import argparse
import gzip
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import paired_ratio, print_ratios, race_times
from tasks.ml.loop import Split, make_loss, train_one_epoch
from tasks.q1.data import generate_files, read_idx
from tasks.q1.plan import Q1CnnConfig
from tasks.q1.train import (
    TrainConfig,
    build_model,
    build_optimizer,
    make_preprocess,
    prepare_split,
)

DEFAULT_CASES = "mlp:32,mlp:64,mlp:256,cnn_pool_bn:32,cnn:32"
DEFAULT_N = {"mlp": 20000, "cnn": 10000, "cnn_pool_bn": 10000}
OURS, PURE, PLAIN = "ours", "pure compute", "plain DataLoader loop"
GRAPHS = "ours + cuda_graphs"
OWN_PREFIX = "stand-in model: "  # the own-work pair (see own_work_contenders)
TARGET_PURE = 1.05
OWN_ROUNDS = 51  # the own-work pair takes milliseconds a run: many rounds, a steady median


@dataclass
class Contender:
    """One epoch per call of ``run``; the model it trains and the optimizer it steps (tests
    count steps and samples through their hooks)."""

    run: Callable[[], None]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer


def case_configs(model: str, batch_size: int, plain_options: bool = False
                 ) -> tuple[TrainConfig, TrainConfig]:
    """(ours, plain) training configs of one case: the flow's defaults for ours."""
    cnn = model != "mlp"
    plain = TrainConfig(out="bench", data="bench", model=model, batch_size=batch_size,
                        normalize=cnn, hflip=cnn)
    ours = plain
    if cnn and not plain_options:  # q1-cnn's defaults
        flow = Q1CnnConfig()
        ours = plain.model_copy(update={"channels_last": flow.channels_last, "amp": flow.amp})
    return ours, plain


def write_raw(root: Path, n: int) -> dict[str, Path]:
    """Generated Fashion-MNIST files (``n`` train samples) in torchvision's raw layout."""
    files = generate_files(root / "gz", n, 10)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for p in files.values():
        with gzip.open(p) as s, open(raw / p.name[:-3], "wb") as d:
            shutil.copyfileobj(s, d)
    return files


def _model(cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    return model, torch.optim.Adam(model.parameters(), 1e-3)


def ours_contender(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                   device: torch.device) -> Contender:
    """What classifier.train runs for one epoch (from uint8 images [N, 1, 28, 28]): the
    split prepared once as ``load_splits`` does, the task's optimizer, preprocess and loop
    (with ``cfg.cuda_graphs`` on CUDA: the graphed steps)."""
    split = prepare_split(cfg, Split(x, y).to(device))
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    opt = build_optimizer(cfg, model)
    loss_fn, pre = make_loss(cfg.loss, 10), make_preprocess(cfg)

    def run():
        train_one_epoch(model, split, batch_size=cfg.batch_size, optimizer=opt, loss_fn=loss_fn,
                        preprocess=pre, generator=torch.Generator().manual_seed(0),
                        autocast=cfg.autocast, cuda_graph=cfg.cuda_graphs)

    return Contender(run, model, opt)


def ready_batch(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch as model input (scaled, normalised, in the model's layout)."""
    ready = prepare_split(cfg, Split(x[:cfg.batch_size], y[:cfg.batch_size]).to(device))
    return ready.x, ready.y


def pure_contender(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, n: int,
                   device: torch.device) -> Contender:
    """Forward, loss, backward and Adam step on one ready batch, as many steps as ours."""
    xb, yb = ready_batch(cfg, x, y, device)
    steps = math.ceil(n / cfg.batch_size)
    rest = n - (steps - 1) * cfg.batch_size  # the last step's batch size (ours: the same)
    xr, yr = xb[:rest], yb[:rest]
    model, opt = _model(cfg, device)
    loss_fn = make_loss(cfg.loss, 10)
    autocast = cfg.autocast

    def step(xs: torch.Tensor, ys: torch.Tensor) -> None:
        if autocast is None:
            loss = loss_fn(model(xs), ys)
        else:
            with torch.autocast(device.type, dtype=autocast):
                loss = loss_fn(model(xs).float(), ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def run():
        model.train()
        for _ in range(steps - 1):
            step(xb, yb)
        step(xr, yr)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return Contender(run, model, opt)


def plain_contender(cfg: TrainConfig, root: Path, device: torch.device,
                    workers: int = 0) -> Contender:
    """The tutorial loop over torchvision's FashionMNIST in ``root`` (see write_raw)."""
    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    tfs = [transforms.ToTensor()]
    if cfg.model != "mlp":
        tfs = [transforms.ToTensor(), transforms.RandomHorizontalFlip(0.5),
               transforms.Normalize(0.5, 0.5)]
    ds = FashionMNIST(str(root), train=True, download=False, transform=transforms.Compose(tfs))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True,
                                         num_workers=workers)
    model, opt = _model(cfg, device)
    loss_fn = make_loss(cfg.loss, 10)

    def run():
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return Contender(run, model, opt)


def build_contenders(model: str, batch_size: int, n: int, root: Path, device: torch.device,
                     *, plain_options: bool = False, workers: int = 0,
                     cuda_graphs: bool = False) -> tuple[dict[str, Contender], TrainConfig]:
    """The contenders of one case on ``n`` generated samples written under ``root``: ours,
    pure compute, plain, and with ``cuda_graphs`` ours with that option on."""
    cfg, plain_cfg = case_configs(model, batch_size, plain_options)
    files = write_raw(root, n)
    x = torch.from_numpy(read_idx(files["train_images"]).copy()).unsqueeze(1)
    y = torch.from_numpy(read_idx(files["train_labels"]).astype("int64"))
    contenders = {OURS: ours_contender(cfg, x, y, device),
                  PURE: pure_contender(cfg, x, y, n, device),
                  PLAIN: plain_contender(plain_cfg, root, device, workers)}
    if cuda_graphs:
        graphed = cfg.model_copy(update={"cuda_graphs": True})
        contenders[GRAPHS] = ours_contender(graphed, x, y, device)
    own = own_work_contenders(cfg, x, y, n, device)
    contenders.update({f"{OWN_PREFIX}{k}": c for k, c in own.items()})
    return contenders, cfg


class StandIn(torch.nn.Module):
    """A model of (almost) no compute: logits are the first 10 inputs times one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * self.w


def own_work_contenders(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, n: int,
                        device: torch.device) -> dict[str, Contender]:
    """Ours and pure compute again, with ``StandIn`` for the model and a no-op SGD step:
    their difference is the loop's own work (gather, flip, bookkeeping, per-epoch set-up),
    measured precisely because each run takes milliseconds."""
    split = prepare_split(cfg, Split(x, y).to(device))
    xb, yb = ready_batch(cfg, x, y, device)
    steps = math.ceil(n / cfg.batch_size)
    rest = n - (steps - 1) * cfg.batch_size
    loss_fn, pre = make_loss(cfg.loss, 10), make_preprocess(cfg)
    ours_model, pure_model = StandIn().to(device), StandIn().to(device)
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.0)
    pure_opt = torch.optim.SGD(pure_model.parameters(), lr=0.0)

    def ours():
        train_one_epoch(ours_model, split, batch_size=cfg.batch_size, optimizer=ours_opt,
                        loss_fn=loss_fn, preprocess=pre,
                        generator=torch.Generator().manual_seed(0), autocast=cfg.autocast)

    def step(xs: torch.Tensor, ys: torch.Tensor) -> None:
        loss = loss_fn(pure_model(xs), ys)
        pure_opt.zero_grad(set_to_none=True)
        loss.backward()
        pure_opt.step()

    def pure():
        pure_model.train()
        for _ in range(steps - 1):
            step(xb, yb)
        step(xb[:rest], yb[:rest])
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return {OURS: Contender(ours, ours_model, ours_opt),
            PURE: Contender(pure, pure_model, pure_opt)}


def parse_cases(text: str) -> list[tuple[str, int]]:
    cases = []
    for item in text.split(","):
        model, _, bs = item.partition(":")
        if model not in DEFAULT_N or not bs.isdigit() or int(bs) <= 0:
            raise ValueError(f"bad case {item!r}: use MODEL:BATCH with MODEL one of "
                             f"{', '.join(DEFAULT_N)}, e.g. mlp:32")
        cases.append((model, int(bs)))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=DEFAULT_CASES, help="comma list of MODEL:BATCH")
    ap.add_argument("--model", choices=list(DEFAULT_N), help="one case (with --batch-size)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--n", type=int, default=None,
                    help="training samples (default: MLP 20000, CNNs 10000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall time, or this process's CPU time (steadier on a shared "
                    "machine; use with --threads 1)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (plain loop)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plain-options", action="store_true",
                    help="ours without the flow's default speed options")
    ap.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                    help="a fourth contender, ours with cuda_graphs (auto: on CUDA)")
    ap.add_argument("--denormals", choices=["keep", "flush"], default="keep",
                    help="flush: CPU denormals to zero for every contender (see the docstring)")
    args = ap.parse_args()
    if args.model:
        cases = [(args.model, args.batch_size or (64 if args.model == "mlp" else 32))]
    else:
        try:
            cases = parse_cases(args.cases)
        except ValueError as exc:
            ap.error(str(exc))
    if args.denormals == "flush":  # before the first parallel region: its threads inherit it
        torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    graphs = args.cuda_graphs == "on" or (args.cuda_graphs == "auto" and device.type == "cuda")
    results = []
    for model, bs in cases:
        n = args.n or DEFAULT_N[model]
        tmp = Path(tempfile.mkdtemp(prefix="vf-bench-"))
        try:
            contenders, cfg = build_contenders(model, bs, n, tmp, device,
                                               plain_options=args.plain_options,
                                               workers=args.workers, cuda_graphs=graphs)
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            main = {k: c.run for k, c in contenders.items() if not k.startswith(OWN_PREFIX)}
            times = race_times(main, repeats=args.repeats, alternate=True, clock=clock)
            own = race_times({k: c.run for k, c in contenders.items()
                              if k.startswith(OWN_PREFIX)},
                             repeats=max(args.repeats, OWN_ROUNDS), alternate=True, clock=clock)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        medians = {k: statistics.median(ts) for k, ts in times.items()}
        print_ratios(f"Q1 {model} epoch, {n} samples, batch {bs}, {device}, torch threads "
                     f"{torch.get_num_threads()}, {args.clock} clock, denormals "
                     f"{args.denormals}; ours: channels_last={cfg.channels_last}, amp={cfg.amp} "
                     "(medians)", medians, PURE)
        pure, plain = paired_ratio(times, OURS, PURE), paired_ratio(times, OURS, PLAIN)
        extra = ""
        if GRAPHS in times:
            extra = (f" ours+cuda_graphs/pure = {paired_ratio(times, GRAPHS, PURE)[0]:.3f} "
                     f"ours+cuda_graphs/ours = {paired_ratio(times, GRAPHS, OURS)[0]:.3f}")
        steps = math.ceil(n / bs)
        own_us = (statistics.median(own[OWN_PREFIX + OURS])
                  - statistics.median(own[OWN_PREFIX + PURE])) / steps * 1e6
        pure_us = medians[PURE] / steps * 1e6
        print(f"  own work of ours per step (the loop with a stand-in model, minus the stand-in "
              f"on a ready batch; median of {max(args.repeats, OWN_ROUNDS)} rounds): "
              f"{own_us:.1f} us = {own_us / pure_us:.2%} of a pure-compute step ({pure_us:.0f} us)")
        extra += f" own work = {own_us:.1f} us/step ({own_us / pure_us:.2%} of pure)"
        results.append((model, bs, pure, plain, extra))
        print(f"RESULT {model} b{bs} ours/pure = {pure[0]:.3f} (target <= {TARGET_PURE}) "
              f"ours/plain = {plain[0]:.3f}{extra} [ours/pure quartiles {pure[1]:.3f}-"
              f"{pure[2]:.3f}, {args.repeats} rounds]", flush=True)
    if len(results) > 1:
        print(f"\nsummary (medians of per-round ratios over {args.repeats} interleaved rounds; "
              "ours/pure quartiles in brackets):")
        for model, bs, pure, plain, extra in results:
            print(f"  {model:<12} b{bs:<4} ours/pure {pure[0]:.3f} [{pure[1]:.3f}-{pure[2]:.3f}]"
                  f"  ours/plain {plain[0]:.3f}{extra}")


if __name__ == "__main__":
    main()
