"""One Q1 training epoch: our path vs a plain torchvision Dataset + DataLoader loop.

Same model (the Q1 MLP, or ``--model cnn_pool_bn``), batch size, optimizer and data, measured
in one process, interleaved. Ours runs with the speed options its flow uses by default
(q1-cnn: ``channels_last``; ``--plain-options`` turns them off). Prints each median and the
ratio ours / plain (target <= 0.5).

    python -m bench.q1_epoch [--n 20000] [--batch-size 64] [--model mlp] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from pathlib import Path

import torch

from bench.common import print_ratios, race
from tasks.ml.loop import Split, make_loss, train_one_epoch
from tasks.q1.data import generate_files, read_idx
from tasks.q1.plan import Q1CnnConfig
from tasks.q1.train import TrainConfig, build_model, make_preprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="training samples")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn", "cnn_pool_bn"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (plain loop)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plain-options", action="store_true",
                    help="ours without the flow's default speed options")
    args = ap.parse_args()

    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    tmp = Path(tempfile.mkdtemp(prefix="vf-bench-"))
    files = generate_files(tmp / "gz", args.n, 10)
    raw = tmp / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for p in files.values():
        with gzip.open(p) as s, open(raw / p.name[:-3], "wb") as d:
            shutil.copyfileobj(s, d)

    device = torch.device(args.device)
    cnn = args.model != "mlp"
    cfg = TrainConfig(out="bench", data="bench", model=args.model, batch_size=args.batch_size,
                      normalize=cnn, hflip=cnn)
    plain_cfg = cfg
    if cnn and not args.plain_options:  # q1-cnn's defaults
        flow_cfg = Q1CnnConfig()
        cfg = cfg.model_copy(update={"channels_last": flow_cfg.channels_last,
                                     "amp": flow_cfg.amp})
    loss_fn = make_loss("cross_entropy", 10)

    # ours: whole dataset as a uint8 tensor on the device, batches by index
    x = torch.from_numpy(read_idx(files["train_images"]).copy()).unsqueeze(1)
    y = torch.from_numpy(read_idx(files["train_labels"]).astype("int64"))
    split = Split(x, y).to(device)
    torch.manual_seed(0)
    ours_model = build_model(cfg).to(device)
    ours_opt = torch.optim.Adam(ours_model.parameters(), 1e-3)
    pre = make_preprocess(cfg)

    def ours():
        train_one_epoch(ours_model, split, batch_size=args.batch_size, optimizer=ours_opt,
                        loss_fn=loss_fn, preprocess=pre,
                        generator=torch.Generator().manual_seed(0))

    # plain: the idiomatic tutorial loop, per-sample transforms in a Dataset
    tfs = [transforms.ToTensor()]
    if cnn:
        tfs = [transforms.ToTensor(), transforms.RandomHorizontalFlip(0.5),
               transforms.Normalize(0.5, 0.5)]
    ds = FashionMNIST(str(tmp / "root"), train=True, download=False,
                      transform=transforms.Compose(tfs))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers)
    torch.manual_seed(0)
    plain_model = build_model(plain_cfg).to(device)
    plain_opt = torch.optim.Adam(plain_model.parameters(), 1e-3)

    def plain():
        plain_model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(plain_model(xb), yb)
            plain_opt.zero_grad()
            loss.backward()
            plain_opt.step()

    medians = race({"plain DataLoader loop": plain, "ours (tensors + index batches)": ours},
                   repeats=args.repeats)
    print_ratios(f"Q1 {args.model} epoch, {args.n} samples, batch {args.batch_size}, "
                 f"{device}, torch threads {torch.get_num_threads()}; ours: channels_last="
                 f"{cfg.channels_last}, amp={cfg.amp}", medians,
                 "plain DataLoader loop")
    ratio = medians["ours (tensors + index batches)"] / medians["plain DataLoader loop"]
    print(f"RESULT ours/plain = {ratio:.3f} (target <= 0.5)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
