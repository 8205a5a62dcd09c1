"""Q1 training speed options, each against the fp32 baseline, in one process, interleaved.

Every contender is the shared ``train_one_epoch`` on the same data, model kind, batch size
and seeds, differing only in the option(s) it turns on: ``channels_last`` (CNNs), ``amp``
(bf16 autocast), both, ``compile`` (torch.compile; its compilation happens in the warm-up
epoch and is not timed: it pays only when an epoch saves more than that), and on CUDA
``cudnn_benchmark``, ``cuda_graphs`` (each epoch's step captured once and replayed; the
capture is timed: it happens every epoch) and ``pin_memory`` (the latter is the one
host-to-device copy of the uint8 training split, timed on its own: batches never cross the
bus). Prints each median,
its ratio to the baseline, and each contender's train accuracy after the same epochs (what
the option does to the numbers).

    python -m bench.q1_options [--models cnn_pool_bn,cnn,mlp] [--n 10000] [--batch-size 32]
                               [--options channels_last,bf16,channels_last+bf16,compile]
                               [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import race
from tasks.ml.loop import Split, make_loss, train_one_epoch
from tasks.q1.data import generate_arrays
from tasks.q1.train import (
    TrainConfig,
    build_model,
    build_optimizer,
    compiled,
    cudnn_settings,
    make_preprocess,
    prepare_split,
)

# option name -> TrainConfig fields it sets
OPTIONS: dict[str, dict] = {
    "channels_last": {"channels_last": True},
    "bf16": {"amp": "bf16"},
    "channels_last+bf16": {"channels_last": True, "amp": "bf16"},
    "compile": {"compile": True},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "channels_last+bf16+cudnn_benchmark": {"channels_last": True, "amp": "bf16",
                                           "cudnn_benchmark": True},
    "cuda_graphs": {"cuda_graphs": True},
    "channels_last+cuda_graphs": {"channels_last": True, "cuda_graphs": True},
}
CPU_DEFAULT = "channels_last,bf16,channels_last+bf16,compile"
CUDA_DEFAULT = ("channels_last,bf16,channels_last+bf16,compile,cudnn_benchmark,"
                "channels_last+bf16+cudnn_benchmark,cuda_graphs,channels_last+cuda_graphs")


def contender(kind: str, fields: dict, raw: Split, batch_size: int, device: torch.device):
    """A callable training one epoch per call with ``fields`` on the uint8 split ``raw``
    (prepared as ``classifier.train`` prepares it); its last metrics in ``.last``."""
    cfg = TrainConfig(out="b", data="b", model=kind, batch_size=batch_size,
                      normalize=kind != "mlp", hflip=kind != "mlp", **fields)
    split = prepare_split(cfg, raw)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    net = compiled(cfg, model)
    opt = build_optimizer(cfg, model)
    loss_fn, pre = make_loss("cross_entropy", 10), make_preprocess(cfg)
    state = {"epoch": 0}

    def run():
        state["epoch"] += 1
        torch.manual_seed(state["epoch"])
        with cudnn_settings(cfg, device):
            run.last = train_one_epoch(net, split, batch_size=batch_size, optimizer=opt,
                                       loss_fn=loss_fn, preprocess=pre, autocast=cfg.autocast,
                                       generator=torch.Generator().manual_seed(state["epoch"]),
                                       cuda_graph=cfg.cuda_graphs)

    run.last = {}
    return run


def pin_race(x: torch.Tensor, device: torch.device, repeats: int) -> None:
    """The one copy of the training split: pageable ``.to`` vs pinned + non_blocking."""

    def pageable():
        x.to(device)
        torch.cuda.synchronize(device)

    def pinned():
        x.pin_memory().to(device, non_blocking=True)
        torch.cuda.synchronize(device)

    med = race({"pageable copy": pageable, "pinned, non_blocking": pinned}, repeats=repeats)
    ratio = med["pinned, non_blocking"] / med["pageable copy"]
    print(f"\npin_memory: copy of the {x.numel() / 2**20:.0f} MiB uint8 split: pageable "
          f"{med['pageable copy'] * 1000:.1f} ms, pinned {med['pinned, non_blocking'] * 1000:.1f}"
          f" ms")
    print(f"RESULT pin_memory copy ratio = {ratio:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn_pool_bn,cnn,mlp")
    ap.add_argument("--n", type=int, default=10000, help="training samples")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--options", default=None, help=f"comma list of {', '.join(OPTIONS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    names = (args.options or (CUDA_DEFAULT if device.type == "cuda" else CPU_DEFAULT)).split(",")
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        ap.error(f"unknown options {unknown}; known: {', '.join(OPTIONS)}")
    images, labels = generate_arrays(args.n, seed=0)
    split = Split(torch.from_numpy(images).unsqueeze(1),
                  torch.from_numpy(labels.astype("int64"))).to(device)
    print(f"Q1 speed options: {args.n} samples, batch {args.batch_size}, {device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    for kind in args.models.split(","):
        opts = [n for n in names if kind != "mlp" or "channels_last" not in n]
        runs = {"baseline (fp32)": contender(kind, {}, split, args.batch_size, device)}
        for name in opts:
            runs[name] = contender(kind, OPTIONS[name], split, args.batch_size, device)
        start = time.perf_counter()
        med = race(runs, repeats=args.repeats, warmup=1)
        base = med["baseline (fp32)"]
        print(f"\n{kind}: one epoch (median of {args.repeats}, after 1 warm-up epoch; "
              f"{time.perf_counter() - start:.0f} s in all)")
        for name, sec in med.items():
            last = runs[name].last
            print(f"  {name:<36} {sec:7.3f} s  ratio {sec / base:.3f}  train acc after "
                  f"{args.repeats + 1} epochs {last.get('accuracy', float('nan')):.4f}")
        print(f"RESULT {kind} " + " ".join(f"{n}={med[n] / base:.3f}" for n in opts))
    if device.type == "cuda":
        pin_race(split.x.cpu(), device, args.repeats)


if __name__ == "__main__":
    main()
