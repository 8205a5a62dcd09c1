"""Q2 transfer learning on STL10: ResNet18 and VGG16 with a frozen ImageNet backbone.

Tasks:
- ``transfer.weights``: find each model's ImageNet checkpoint (mirror -> hub cache ->
  download) before anything expensive runs, or record ``pretrained: false`` explicitly.
- ``transfer.explore``: ImageNet normalisation of the training pixels (range, per-channel
  stats, histogram) and a labelled sample grid.
- ``transfer.train``: freeze every layer, replace the last one with Linear(->10), assert
  that only it trains, and train it for ``epochs`` with test accuracy per epoch. The frozen
  backbone runs without autograd: once in all (features cached) without augmentation,
  once per epoch with it. The head is trained by the shared loop in ``tasks.ml.loop``.
- ``transfer.finetune``: a fixed-seed 5x5 grid of test images with true/predicted labels;
  the misclassified ones are used to fine-tune every layer for ``epochs``; how many are
  fixed (and whether correct ones broke).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.core.errors import ConfigError, VisionflowsError
from tasks.core.runtime import Manifest, TaskRun, read_manifest, read_verified, reuse
from tasks.core.store import Store
from tasks.inputs.weights import (
    ResolvedWeights,
    WeightsError,
    resolve_weights,
)
from tasks.ml import plots
from tasks.ml.loop import Split, make_loss, resolve_device, train_one_epoch
from tasks.ml.loop import evaluate as eval_loop
from tasks.ml.summary import format_summary, summarize
from tasks.q2.data import CLASSES, load_split
from tasks.q2.options import (
    ARCHS,
    NUM_CLASSES,
    ExploreConfig,
    FinetuneConfig,
    TrainConfig,
    WeightsConfig,
    head_params,
    weights_spec,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TransferError(VisionflowsError):
    """A transfer-learning invariant does not hold (e.g. more than the head would train)."""


# ---------------------------------------------------------------- models

def build_imagenet_model(arch: str, weights_path: str | None = None) -> nn.Module:
    """The 1000-class torchvision model, with the checkpoint at ``weights_path`` loaded.

    Without a path the model keeps torchvision's random initialisation (seed it first).
    """
    from torchvision import models

    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; use one of: {', '.join(ARCHS)}")
    model = getattr(models, arch)(weights=None)
    if weights_path:
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, OSError, ValueError) as exc:
            raise WeightsError(f"{weights_path} is not a {arch} ImageNet state dict "
                               f"({str(exc).splitlines()[0]})") from None
    return model


def adapt(model: nn.Module, arch: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """Freeze every parameter, then replace the last layer with a fresh Linear(-> classes).

    ResNet18: ``fc`` = Linear(512, 10). VGG16: ``classifier[6]`` = Linear(4096, 10).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    if arch == "resnet18":
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif arch == "vgg16":
        model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
    else:
        raise ConfigError(f"unknown arch {arch!r}; use one of: {', '.join(ARCHS)}")
    check_only_head_trains(model, arch, num_classes)
    return model


def trainable(model: nn.Module) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def check_only_head_trains(model: nn.Module, arch: str, num_classes: int = NUM_CLASSES) -> int:
    """Raise TransferError unless exactly the new head's parameters are trainable."""
    got = trainable(model)
    head = ARCHS[arch]["head"]
    want = head_params(arch, num_classes)
    if set(got) != {f"{head}.weight", f"{head}.bias"} or sum(got.values()) != want:
        raise TransferError(f"{arch}: expected only {head} ({want:,} parameters) to be "
                            f"trainable, found {sum(got.values()):,} in {sorted(got)[:6]}")
    return want


def split_model(model: nn.Module, arch: str) -> tuple[nn.Module, nn.Module]:
    """``(backbone, head)`` sharing the model's modules; ``head(backbone(x)) == model(x)``.

    The backbone ends where the model flattens (ResNet18: 512 features after avgpool;
    VGG16: 25,088 after avgpool). VGG16's head is its whole classifier, so its frozen
    Dropout layers still act during training, as in the unsplit model.
    """
    if arch == "resnet18":
        m = model
        backbone = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2,
                                 m.layer3, m.layer4, m.avgpool, nn.Flatten(1))
        return backbone, m.fc
    if arch == "vgg16":
        return nn.Sequential(model.features, model.avgpool, nn.Flatten(1)), model.classifier
    raise ConfigError(f"unknown arch {arch!r}; use one of: {', '.join(ARCHS)}")


def fingerprint(model: nn.Module) -> float:
    """A checksum of the frozen parameters (to check a rebuilt backbone is the same one)."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in model.parameters()
                         if not p.requires_grad))


def make_preprocess(image_size: int, hflip: bool = False):
    """uint8 [N, 3, H, W] -> float, random horizontal flip (train only), resize, ImageNet
    normalisation; all on the batch's device."""

    def preprocess(x: torch.Tensor, train: bool) -> torch.Tensor:
        x = x.float().div_(255.0)
        if hflip and train:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if x.shape[-1] != image_size or x.shape[-2] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    return preprocess


def identity(x: torch.Tensor, _train: bool) -> torch.Tensor:
    return x


@torch.no_grad()
def extract_features(backbone: nn.Module, x: torch.Tensor, preprocess, batch_size: int,
                     train: bool = False) -> torch.Tensor:
    """The frozen backbone's output for every image, in eval mode and without autograd."""
    backbone.eval()
    out = [backbone(preprocess(x[i:i + batch_size], train)) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


# ---------------------------------------------------------------- helpers

def resolve_for(arch: str, pretrained: bool, mirror: str | None, store: Store,
                log) -> ResolvedWeights | None:
    """The checkpoint for ``arch``, or None when ``pretrained`` is false."""
    if not pretrained:
        log.info("%s: pretrained=false, random initialisation", arch)
        return None
    return resolve_weights(weights_spec(arch), mirror, store, log)


def describe_weights(resolved: ResolvedWeights | None, seed: int | None = None
                     ) -> dict[str, Any]:
    """What a manifest says about the weights: where they came from, or random init."""
    if resolved is None:
        out: dict[str, Any] = {"pretrained": False,
                               "source": "none: random initialisation (pretrained: false)"}
        if seed is not None:
            out["seed"] = seed
        return out
    return {"pretrained": True, **resolved.as_dict()}


def _optimizer(kind: str, params, lr: float, momentum: float) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def _tensor_split(images: np.ndarray, labels: np.ndarray, limit: int | None,
                  device: torch.device) -> Split:
    if limit:
        images, labels = images[:limit], labels[:limit]
    return Split(torch.from_numpy(np.ascontiguousarray(images)),
                 torch.from_numpy(labels)).to(device)


# ---------------------------------------------------------------- tasks

def weights(cfg: WeightsConfig, store: Store) -> Manifest:
    """Find every model's checkpoint now (fail before data or training) and record where."""
    with TaskRun("transfer.weights", cfg, store, cfg.out) as run:
        found, errors = {}, []
        for arch in dict.fromkeys(cfg.archs):
            try:
                resolved = resolve_for(arch, cfg.pretrained, cfg.weights_mirror, store, run.log)
            except WeightsError as exc:  # report every missing checkpoint at once
                errors.append(exc)
                continue
            found[arch] = describe_weights(resolved)
        if errors:
            if len(errors) == 1:
                raise errors[0]
            raise WeightsError(" | ".join(str(e) for e in errors),
                               transient=any(e.transient for e in errors))
        return run.finish({"pretrained": cfg.pretrained, "weights": found})


def explore(cfg: ExploreConfig, store: Store) -> Manifest:
    """Normalised pixel range and histogram of the training images; labelled samples."""
    existing = reuse(store, "transfer.explore", cfg, cfg.out)
    if existing is not None:
        return existing
    with TaskRun("transfer.explore", cfg, store, cfg.out,
                 inputs={"data": store.url(cfg.data)}) as run:
        images, labels = load_split(store, cfg.data, "train")
        test_images, _ = load_split(store, cfg.data, "test")
        pre = make_preprocess(images.shape[-1])
        lo, hi = -2.5, 3.0
        counts = torch.zeros(cfg.bins, dtype=torch.float64)
        vmin, vmax = float("inf"), float("-inf")
        s1 = torch.zeros(3, dtype=torch.float64)
        s2 = torch.zeros(3, dtype=torch.float64)
        for i in range(0, len(images), 500):
            x = pre(torch.from_numpy(np.ascontiguousarray(images[i:i + 500])), False)
            counts += torch.histc(x, bins=cfg.bins, min=lo, max=hi).double()
            vmin, vmax = min(vmin, float(x.min())), max(vmax, float(x.max()))
            s1 += x.double().sum((0, 2, 3))
            s2 += (x.double() ** 2).sum((0, 2, 3))
        n = images.shape[0] * images.shape[2] * images.shape[3]
        mean = s1 / n
        std = (s2 / n - mean ** 2).clamp(min=0).sqrt()
        edges = np.linspace(lo, hi, cfg.bins + 1)
        theory = {"min": [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
                  "max": [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]}
        run.put_bytes("histogram", plots.histogram(
            counts.tolist(), edges.tolist(), "normalised pixel value",
            f"Training pixels after ImageNet normalisation ({images.shape[0]:,} images)",
            {"min": vmin, "max": vmax}), "histogram.png")
        rng = np.random.default_rng(cfg.seed)
        pick = np.sort(rng.choice(len(images), size=min(cfg.samples, len(images)),
                                  replace=False))
        run.put_bytes("samples", plots.image_grid(
            images[pick], [CLASSES[int(labels[i])] for i in pick],
            ncols=int(np.ceil(np.sqrt(len(pick)))), title="Training samples with labels"),
            "samples.png")
        metrics = {
            "train/shape": list(images.shape), "test/shape": list(test_images.shape),
            "raw/min": int(images.min()), "raw/max": int(images.max()),
            "normalized/min": vmin, "normalized/max": vmax,
            "normalized/mean": mean.tolist(), "normalized/std": std.tolist(),
            "normalized/theoretical_range": theory,
            "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
            "class_counts": np.bincount(labels, minlength=NUM_CLASSES).tolist(),
            "sample_indices": pick.tolist(),
        }
        run.put_json("stats", metrics, "stats.json")
        return run.finish(metrics, classes=CLASSES)


def train(cfg: TrainConfig, store: Store) -> Manifest:
    """Frozen backbone + new head: summaries, trainable check, per-epoch test accuracy."""
    existing = reuse(store, "transfer.train", cfg, cfg.out)
    if existing is not None:
        return existing
    device = resolve_device(cfg.device)
    read_manifest(store, cfg.data)  # fail early when the data is not there
    with TaskRun("transfer.train", cfg, store, cfg.out,
                 inputs={"data": store.url(cfg.data)}) as run:
        resolved = resolve_for(cfg.arch, cfg.pretrained, cfg.weights_mirror, store, run.log)
        torch.manual_seed(cfg.seed)
        model = build_imagenet_model(cfg.arch, resolved.path if resolved else None)
        shape = [1, 3, cfg.image_size, cfg.image_size]
        imagenet_summary = summarize(model, shape, containers=True)
        if imagenet_summary["total_params"] != ARCHS[cfg.arch]["total_params"]:
            raise TransferError(f"{cfg.arch}: {imagenet_summary['total_params']:,} parameters, "
                                f"expected {ARCHS[cfg.arch]['total_params']:,}")
        adapt(model, cfg.arch)
        n_trainable = check_only_head_trains(model, cfg.arch)
        adapted_summary = summarize(model, shape, containers=True)
        frozen_sum = fingerprint(model)
        run.put_bytes("summary", format_summary(imagenet_summary).encode(), "summary.txt")
        run.put_bytes("summary_adapted", format_summary(adapted_summary).encode(),
                      "summary-adapted.txt")
        model.to(device)
        backbone, head = split_model(model, cfg.arch)
        xtr, ytr = load_split(store, cfg.data, "train")
        xte, yte = load_split(store, cfg.data, "test")
        train_split = _tensor_split(xtr, ytr, cfg.train_limit, device)
        test_split = _tensor_split(xte, yte, cfg.test_limit, device)
        pre = make_preprocess(cfg.image_size, hflip=cfg.augment)
        run.log.info("%s on %s: %d train / %d test images at %dpx, %s, %d epochs, batch %d",
                     cfg.arch, device, len(train_split), len(test_split), cfg.image_size,
                     "pretrained" if resolved else "random init (pretrained: false)",
                     cfg.epochs, cfg.batch_size)
        start = time.perf_counter()
        test_feats = Split(extract_features(backbone, test_split.x, pre, cfg.feature_batch_size),
                           test_split.y)
        train_feats = None
        if not cfg.augment:  # no augmentation: the backbone's output never changes, cache it
            train_feats = Split(extract_features(backbone, train_split.x, pre,
                                                 cfg.feature_batch_size), train_split.y)
        _sync(device)
        feature_time = time.perf_counter() - start
        run.log.info("%s: features of %d images in %.1fs (%s)", cfg.arch,
                     len(test_split) + (0 if cfg.augment else len(train_split)), feature_time,
                     "cached for every epoch" if train_feats is not None else "test only")
        loss_fn = make_loss("cross_entropy", NUM_CLASSES)
        optimizer = _optimizer(cfg.optimizer, [p for p in head.parameters() if p.requires_grad],
                               cfg.learning_rate, cfg.momentum)
        history: list[dict[str, Any]] = []
        for epoch in range(1, cfg.epochs + 1):
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # flips and dropout
            epoch_features = 0.0
            feats = train_feats
            if feats is None:
                t0 = time.perf_counter()
                feats = Split(extract_features(backbone, train_split.x, pre,
                                               cfg.feature_batch_size, train=True),
                              train_split.y)
                _sync(device)
                epoch_features = time.perf_counter() - t0
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
            tr = train_one_epoch(head, feats, batch_size=cfg.batch_size, optimizer=optimizer,
                                 loss_fn=loss_fn, preprocess=identity, generator=gen)
            ev = eval_loop(head, test_feats, batch_size=512, loss_fn=loss_fn,
                           preprocess=identity)
            row = {"epoch": epoch, "train/loss": tr["loss"], "train/accuracy": tr["accuracy"],
                   "train/time_s": tr["time_s"] + epoch_features,
                   "features/time_s": epoch_features, "test/loss": ev["loss"],
                   "test/accuracy": ev["accuracy"]}
            history.append(row)
            run.log.info("[%s] epoch %d/%d train loss %.4f acc %.4f | test loss %.4f acc %.4f "
                         "(%.2fs)", cfg.arch, epoch, cfg.epochs, tr["loss"], tr["accuracy"],
                         ev["loss"], ev["accuracy"], row["train/time_s"])
            run.progress(epoch, cfg.epochs, info={"loss": tr["loss"],
                                                  "test_acc": ev["accuracy"]})
        check_only_head_trains(model, cfg.arch)  # nothing else was unfrozen along the way
        names = set(trainable(model))
        state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k in names}
        ckpt = run.workdir / "last.pt"
        torch.save({"arch": cfg.arch, "head": state, "epoch": cfg.epochs, "history": history,
                    "config": cfg.model_dump(mode="json"),
                    "backbone": {**describe_weights(resolved, cfg.seed),
                                 "fingerprint": frozen_sum}}, ckpt)
        run.put_file("last", ckpt, "last.pt")
        run.put_json("history", history, "history.json")
        accs = [h["test/accuracy"] for h in history]
        best = int(np.argmax(accs))
        metrics = {
            "arch": cfg.arch, "test/accuracy": accs[-1], "test/loss": history[-1]["test/loss"],
            "train/accuracy": history[-1]["train/accuracy"],
            "train/loss": history[-1]["train/loss"],
            "test/accuracy_per_epoch": accs, "best/test/accuracy": accs[best],
            "best_epoch": best + 1, "epochs": len(history),
            "train/time_s": sum(h["train/time_s"] for h in history),
            "features/cache_time_s": feature_time,
            "features/cached": train_feats is not None,
            "total_params_imagenet": imagenet_summary["total_params"],
            "total_params": adapted_summary["total_params"],
            "trainable_params": n_trainable,
            "n_train": len(train_split), "n_test": len(test_split),
            "image_size": cfg.image_size, "device": str(device),
            "weights": describe_weights(resolved, cfg.seed),
        }
        return run.finish(metrics, history=history, classes=CLASSES,
                          summary_rows=len(imagenet_summary["rows"]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def restore(train_manifest: Manifest, store: Store, workdir, device: torch.device, log
            ) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a trained transfer model (same backbone, trained head) from its manifest."""
    tcfg = TrainConfig.model_validate(train_manifest.config)
    ckpt = torch.load(store.get_file(train_manifest.output_key("last"), workdir / "last.pt"),
                      map_location="cpu", weights_only=False)
    resolved = resolve_for(tcfg.arch, tcfg.pretrained, tcfg.weights_mirror, store, log)
    recorded = ckpt["backbone"]
    if resolved is not None and resolved.sha256 != recorded.get("sha256"):
        raise WeightsError(f"{tcfg.arch}: the weights found now ({resolved.location}, sha256 "
                           f"{resolved.sha256[:12]}) differ from the ones trained with "
                           f"({recorded.get('location')}, {str(recorded.get('sha256'))[:12]})")
    torch.manual_seed(tcfg.seed)
    model = adapt(build_imagenet_model(tcfg.arch, resolved.path if resolved else None),
                  tcfg.arch)
    if not np.isclose(fingerprint(model), recorded["fingerprint"], rtol=0, atol=1e-6):
        raise TransferError(f"{tcfg.arch}: the rebuilt backbone differs from the trained one "
                            "(random initialisation not reproducible here?); rerun the training "
                            "step on this machine")
    missing, unexpected = model.load_state_dict(ckpt["head"], strict=False)
    if unexpected or set(ckpt["head"]) != set(trainable(model)):
        raise TransferError(f"{train_manifest.prefix}/last.pt does not hold the {tcfg.arch} head "
                            f"(unexpected {unexpected}, missing head keys)")
    return model.to(device), tcfg, ckpt


def _titles(y: list[int], *preds: tuple[str, list[int]]) -> list[str]:
    out = []
    for i, t in enumerate(y):
        lines = [f"true: {CLASSES[t]}"] + [f"{name}: {CLASSES[p[i]]}" for name, p in preds]
        out.append("\n".join(lines))
    return out


def finetune(cfg: FinetuneConfig, store: Store) -> Manifest:
    """Predict a fixed-seed grid of test images; fine-tune every layer on the misclassified."""
    existing = reuse(store, "transfer.finetune", cfg, cfg.out)
    if existing is not None:
        return existing
    device = resolve_device(cfg.device)
    tm = read_verified(store, cfg.train)
    with TaskRun("transfer.finetune", cfg, store, cfg.out,
                 inputs={"train": store.url(cfg.train)}) as run:
        model, tcfg, _ckpt = restore(tm, store, run.workdir, device, run.log)
        xte, yte = load_split(store, tcfg.data, "test")
        test = _tensor_split(xte, yte, tcfg.test_limit, device)
        if cfg.grid_size > len(test):
            raise ConfigError(f"grid_size={cfg.grid_size} is more than the {len(test)} test "
                              "images")
        pre = make_preprocess(tcfg.image_size)
        loss_fn = make_loss("cross_entropy", NUM_CLASSES)
        idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.grid_seed))
        idx = idx[:cfg.grid_size].sort().values
        grid = Split(test.x[idx.to(device)], test.y[idx.to(device)])
        y = grid.y.cpu().tolist()
        before = eval_loop(model, grid, batch_size=64, loss_fn=loss_fn, preprocess=pre,
                           return_predictions=True)["predictions"].tolist()
        wrong = [i for i, (t, p) in enumerate(zip(y, before, strict=True)) if t != p]
        ncols = int(np.ceil(np.sqrt(cfg.grid_size)))
        images = grid.x.cpu().numpy()
        run.put_bytes("grid", plots.image_grid(
            images, _titles(y, ("pred", before)), ncols=ncols,
            title=f"{ARCHS[tcfg.arch]['label']}: {cfg.grid_size} random test images "
                  f"(seed {cfg.grid_seed}), {len(wrong)} misclassified",
            wrong=[t != p for t, p in zip(y, before, strict=True)]), "grid.png")
        history: list[dict[str, Any]] = []
        after_grid, after_wrong = list(before), []
        test_after = None
        if wrong:
            sel = torch.tensor(wrong, device=device)
            mis = Split(grid.x[sel], grid.y[sel])
            model.requires_grad_(True)  # unfreeze every layer
            n_params = sum(p.numel() for p in model.parameters())
            if sum(trainable(model).values()) != n_params:
                raise TransferError("fine-tuning: not every layer is trainable")
            optimizer = _optimizer(tcfg.optimizer, model.parameters(), cfg.learning_rate,
                                   tcfg.momentum)
            for epoch in range(1, cfg.epochs + 1):
                torch.manual_seed(tcfg.seed * 1_000_003 + 10_000 + epoch)
                tr = train_one_epoch(model, mis, batch_size=len(mis), optimizer=optimizer,
                                     loss_fn=loss_fn, preprocess=pre,
                                     generator=torch.Generator().manual_seed(epoch))
                ev = eval_loop(model, mis, batch_size=64, loss_fn=loss_fn, preprocess=pre)
                history.append({"epoch": epoch, "train/loss": tr["loss"],
                                "train/accuracy": tr["accuracy"], "train/time_s": tr["time_s"],
                                "misclassified/loss": ev["loss"],
                                "misclassified/accuracy": ev["accuracy"]})
                run.log.info("[%s fine-tune] epoch %d/%d accuracy on the %d misclassified = "
                             "%.2f%%", tcfg.arch, epoch, cfg.epochs, len(mis),
                             100 * ev["accuracy"])
            after_grid = eval_loop(model, grid, batch_size=64, loss_fn=loss_fn, preprocess=pre,
                                   return_predictions=True)["predictions"].tolist()
            after_wrong = [after_grid[i] for i in wrong]
            run.put_bytes("finetune_grid", plots.image_grid(
                images[wrong], _titles([y[i] for i in wrong], ("before", [before[i] for i in
                                                                          wrong]),
                                       ("after", after_wrong)),
                ncols=min(len(wrong), 5),
                title=f"{ARCHS[tcfg.arch]['label']}: misclassified images after fine-tuning "
                      f"all layers for {cfg.epochs} epochs",
                wrong=[after_wrong[k] != y[i] for k, i in enumerate(wrong)]),
                "finetune-grid.png")
            if cfg.eval_test:
                test_after = eval_loop(model, test, batch_size=64, loss_fn=loss_fn,
                                       preprocess=pre)["accuracy"]
        fixed = sum(after_grid[i] == y[i] for i in wrong)
        broken = sum(before[i] == y[i] and after_grid[i] != y[i] for i in range(len(y)))
        result = {
            "arch": tcfg.arch, "grid/indices": idx.tolist(), "grid/true": y,
            "grid/pred": before, "grid/accuracy": 1 - len(wrong) / len(y),
            "misclassified": len(wrong), "misclassified/indices": [int(idx[i]) for i in wrong],
            "finetune/epochs": cfg.epochs if wrong else 0,
            "finetune/accuracy_per_epoch": [h["misclassified/accuracy"] for h in history],
            "finetune/pred": after_wrong, "grid/pred_after": after_grid,
            "fixed": fixed, "fixed_fraction": fixed / len(wrong) if wrong else None,
            "broken": broken,
            "test/accuracy_before": tm.metrics.get("test/accuracy"),
            "test/accuracy_after": test_after,
        }
        run.put_json("predictions", {**result, "history": history}, "predictions.json")
        return run.finish(result, history=history, classes=CLASSES)
