"""One Q2 training epoch with a frozen backbone: our path vs the naive full forward+backward.

Same model (ResNet18 or VGG16, frozen, new 10-class head), images, batch size and
optimizer, measured in one process, interleaved. Contenders:

- naive: torchvision's ``STL10`` + per-sample transforms + a shuffling DataLoader, the whole
  model in train mode, forward and backward every batch (the tutorial loop);
- ours, cached: what ``transfer.train`` does without augmentation: the backbone runs once
  (eval mode, no autograd) and every epoch trains the head on the cached features; timed
  as ``--epochs`` epochs including that one pass, divided by ``--epochs``;
- ours, per epoch: with augmentation (random flips) the features are recomputed without
  autograd every epoch, then the head trains on them.

Prints each median and the ratios ours / naive (target <= 0.5 for the cached path).

    python -m bench.q2_epoch [--arch resnet18] [--n 256] [--image-size 96] [--epochs 10]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from bench.common import print_ratios, race
from tasks.core.files import md5_file
from tasks.ml.loop import Split, make_loss, train_one_epoch
from tasks.q2.data import generate_files, read_images, read_labels, torchvision_dataset
from tasks.q2.transfer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    adapt,
    build_imagenet_model,
    extract_features,
    identity,
    make_preprocess,
    split_model,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "vgg16"])
    ap.add_argument("--n", type=int, default=256, help="training images")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--feature-batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=10, help="epochs the cached pass serves")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (naive loop)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from torchvision import transforms

    tmp = Path(tempfile.mkdtemp(prefix="vf-bench-q2-"))
    files = generate_files(tmp, args.n, 10, n_unlabeled=0)
    md5 = {p.name: md5_file(p) for k, p in files.items() if k.endswith(("_x", "_y"))}
    device = torch.device(args.device)
    loss_fn = make_loss("cross_entropy", 10)

    def fresh_model():
        torch.manual_seed(0)
        model = adapt(build_imagenet_model(args.arch), args.arch).to(device)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
        return model, opt

    # naive: the tutorial loop over torchvision's STL10 reader
    tfs = [transforms.ToTensor()]
    if args.image_size != 96:
        tfs.append(transforms.Resize(args.image_size, antialias=True))
    tfs.append(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    ds = torchvision_dataset(tmp, "train", md5, transform=transforms.Compose(tfs))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers)
    naive_model, naive_opt = fresh_model()

    def naive():
        naive_model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(naive_model(xb), yb)
            naive_opt.zero_grad()
            loss.backward()
            naive_opt.step()

    # ours: uint8 tensors on the device, frozen backbone without autograd, the shared loop
    x = torch.from_numpy(read_images(files["train_x"]).copy())
    y = torch.from_numpy(read_labels(files["train_y"]))
    data = Split(x, y).to(device)
    ours_model, ours_opt = fresh_model()
    backbone, head = split_model(ours_model, args.arch)
    plain = make_preprocess(args.image_size)
    flips = make_preprocess(args.image_size, hflip=True)

    def head_epoch(feats: Split, epoch: int) -> None:
        train_one_epoch(head, feats, batch_size=args.batch_size, optimizer=ours_opt,
                        loss_fn=loss_fn, preprocess=identity,
                        generator=torch.Generator().manual_seed(epoch))

    def ours_cached():
        feats = Split(extract_features(backbone, data.x, plain, args.feature_batch_size),
                      data.y)
        for epoch in range(args.epochs):
            head_epoch(feats, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ours_per_epoch():
        feats = Split(extract_features(backbone, data.x, flips, args.feature_batch_size,
                                       train=True), data.y)
        head_epoch(feats, 0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    medians = race({"naive full forward+backward": naive,
                    f"ours cached ({args.epochs} epochs)": ours_cached,
                    "ours per-epoch features": ours_per_epoch}, repeats=args.repeats)
    cached_epoch = medians[f"ours cached ({args.epochs} epochs)"] / args.epochs
    medians = {"naive full forward+backward": medians["naive full forward+backward"],
               "ours cached, per epoch": cached_epoch,
               "ours per-epoch features": medians["ours per-epoch features"]}
    print_ratios(f"Q2 {args.arch} epoch, {args.n} images at {args.image_size}px, batch "
                 f"{args.batch_size}, {device}, torch threads {torch.get_num_threads()}",
                 medians, "naive full forward+backward")
    naive_s = medians["naive full forward+backward"]
    print(f"RESULT ours/naive = {cached_epoch / naive_s:.3f} (target <= 0.5; cached features, "
          f"{args.epochs} epochs)")
    print(f"RESULT ours per-epoch features/naive = "
          f"{medians['ours per-epoch features'] / naive_s:.3f} (with augmentation)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
