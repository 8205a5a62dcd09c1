"""Q1 epoch time vs dataset size (1x, 2x, 4x): it must grow linearly.

    python -m bench.q1_scaling [--n 10000] [--model mlp]

Prints seconds per epoch and per 1,000 samples for each size; per-sample cost should stay
flat (ratio to 1x close to 1.0).
"""

from __future__ import annotations

import argparse

import torch

from bench.common import race
from tasks.ml.loop import Split, make_loss, train_one_epoch
from tasks.q1.data import generate_arrays
from tasks.q1.train import TrainConfig, build_model, make_preprocess, prepare_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn", "cnn_pool_bn"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    images, labels = generate_arrays(4 * args.n, seed=0)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels.astype("int64"))
    cfg = TrainConfig(out="b", data="b", model=args.model, batch_size=args.batch_size)
    loss_fn, pre = make_loss("cross_entropy", 10), make_preprocess(cfg)
    contenders = {}
    for mult in (1, 2, 4):
        split = prepare_split(cfg, Split(x[:mult * args.n], y[:mult * args.n]))
        model = build_model(cfg)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        contenders[f"{mult}x"] = (lambda s=split, m=model, o=opt: train_one_epoch(
            m, s, batch_size=args.batch_size, optimizer=o, loss_fn=loss_fn, preprocess=pre,
            generator=torch.Generator().manual_seed(0)))
    medians = race(contenders, repeats=args.repeats)
    print(f"\nQ1 {args.model} epoch vs dataset size ({args.n} samples = 1x)")
    base = medians["1x"]
    for mult, name in ((1, "1x"), (2, "2x"), (4, "4x")):
        per_k = medians[name] / (mult * args.n / 1000)
        print(f"  {name}: {medians[name]:.3f} s/epoch, {per_k * 1000:.1f} ms per 1k samples, "
              f"time ratio vs 1x {medians[name] / base:.2f} (linear: {mult:.2f})")
    print(f"RESULT per-sample cost 4x/1x = {medians['4x'] / (4 * base):.3f} (linear: 1.0)")


if __name__ == "__main__":
    main()
