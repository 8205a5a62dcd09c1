"""Q1 classifier tasks: ``classifier.train`` and ``classifier.evaluate`` (MLP and CNNs).

Training writes a self-describing checkpoint (``last.pt``, and ``best.pt`` by dev accuracy
when a dev split exists) to the store every ``checkpoint_every`` epochs; a rerun at the same
prefix without a manifest resumes from ``last.pt`` and ends with the same metrics as an
uninterrupted run (every random source is re-seeded per epoch from the config).
"""

from __future__ import annotations

import contextlib
import pickle
import time
import zipfile

import torch

from tasks.core.errors import ConfigError
from tasks.core.runtime import (
    Manifest,
    TaskRun,
    read_manifest,
    read_verified,
    reuse,
    set_aside_object,
)
from tasks.core.store import Store
from tasks.ml.loop import Split, make_loss, resolve_device, train_one_epoch
from tasks.ml.loop import evaluate as eval_loop
from tasks.ml.metrics import classification_metrics
from tasks.q1.data import CLASSES, load_arrays
from tasks.q1.models import build_classifier
from tasks.q1.options import EvalConfig, TrainConfig

NUM_CLASSES = 10


def split_indices(n: int, dev_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-seed split of ``n`` test samples into (dev, test) index tensors."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_dev = int(round(n * dev_fraction))
    return perm[:n_dev].sort().values, perm[n_dev:].sort().values


def load_splits(cfg: TrainConfig, store: Store, device: torch.device) -> dict[str, Split]:
    """Train / (dev) / test splits on ``device``, each prepared once as model input
    (``prepare_split``: float32 [N, 1, 28, 28], scaled, normalised, in the model's layout).

    The uint8 images cross to the device (pinned and non-blocking with ``pin_memory``) and
    are converted there: a quarter of the bytes on the bus, no per-batch conversion.
    """
    arrays = load_arrays(store, cfg.data)
    xtr = torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1)
    ytr = torch.from_numpy(arrays["train_labels"].astype("int64"))
    if cfg.train_limit:
        xtr, ytr = xtr[:cfg.train_limit], ytr[:cfg.train_limit]
    xte = torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1)
    yte = torch.from_numpy(arrays["test_labels"].astype("int64"))
    splits = {"train": Split(xtr, ytr)}
    if cfg.dev_fraction > 0:
        dev_idx, test_idx = split_indices(len(yte), cfg.dev_fraction, cfg.split_seed)
        if len(dev_idx) == 0 or len(test_idx) == 0:
            raise ConfigError(f"dev_fraction={cfg.dev_fraction} leaves an empty dev or test split "
                              f"of {len(yte)} test samples")
        splits["dev"] = Split(xte[dev_idx], yte[dev_idx])
        splits["test"] = Split(xte[test_idx], yte[test_idx])
    else:
        splits["test"] = Split(xte, yte)
    if cfg.pin_memory and device.type == "cuda":
        # one copy per split (no per-batch copies: batches are indexed on the device)
        splits = {k: v.pin_memory().to(device, non_blocking=True) for k, v in splits.items()}
    else:
        splits = {k: v.to(device) for k, v in splits.items()}
    return {k: prepare_split(cfg, v) for k, v in splits.items()}


def prepare_split(cfg: TrainConfig, split: Split) -> Split:
    """The whole split as model input, computed once on its device: uint8 -> float32 in
    [0, 1], ``Normalize(0.5, 0.5)`` when ``cfg.normalize``, channels-last when
    ``cfg.channels_last``.

    The same element-wise operations a per-batch transform would apply, so every value is
    bit-for-bit what it would compute; 4 bytes per pixel (60,000 Fashion-MNIST images:
    188 MB) instead of 1.
    """
    x = split.x.float().div_(255.0)
    if cfg.normalize:
        x = x.sub_(0.5).div_(0.5)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return Split(x, split.y)


def make_preprocess(cfg: TrainConfig):
    """The per-batch hook on splits from ``load_splits``: a random horizontal flip (p=0.5)
    of training batches when ``cfg.hflip``; nothing otherwise (the rest was done once).

    The flip mask is drawn per batch from the global generator, as before the splits were
    prepared once, so a seed gives the same flips (and, with dropout drawing from the same
    generator in between, the same dropout masks) as it always did.
    """

    def preprocess(x: torch.Tensor, train: bool) -> torch.Tensor:
        if train and cfg.hflip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
            x = torch.where(flip, x.flip(3), x)
        return x

    return preprocess


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    model = build_classifier(cfg.model, activation=cfg.activation, hidden=cfg.hidden,
                             dropout=cfg.dropout, num_classes=NUM_CLASSES)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def compiled(cfg: TrainConfig, model: torch.nn.Module) -> torch.nn.Module:
    """The module that runs forward passes: ``model`` itself, or its ``torch.compile``d
    wrapper (which shares its parameters; checkpoints keep saving ``model``)."""
    return torch.compile(model, dynamic=False) if cfg.compile else model


@contextlib.contextmanager
def cudnn_settings(cfg: TrainConfig, device: torch.device):
    """``cudnn_benchmark`` for this run only (the local launcher runs many tasks in one
    process)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or SGD over ``model`` (already on its device). With ``cuda_graphs`` on CUDA,
    Adam is ``capturable`` (its step count lives on the device, so a graph can replay it)."""
    if cfg.optimizer == "adam":
        on_cuda = any(p.is_cuda for p in model.parameters())
        return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate,
                                capturable=cfg.cuda_graphs and on_cuda)
    return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum)


def _save_checkpoint(run: TaskRun, name: str, model, optimizer, epoch: int, history: list,
                     cfg: TrainConfig) -> None:
    path = run.workdir / name
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "history": history, "config": cfg.model_dump(mode="json")},
               path)
    run.put_file(name.removesuffix(".pt"), path, name)


# What torch.load raises on a truncated or damaged checkpoint file.
CHECKPOINT_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
                     pickle.UnpicklingError, zipfile.BadZipFile)


def load_resume_point(run: TaskRun, cfg: TrainConfig, device: torch.device) -> dict | None:
    """The checkpoint an interrupted training resumes from: ``last.pt``, else ``best.pt``
    (an earlier epoch: every epoch is re-seeded from the config, so the epochs after it come
    out the same), else none. A checkpoint that does not load is moved aside (kept under
    ``trash/``) and the next one is tried, saying so; one of another config is an error."""
    for name in ("last.pt", "best.pt"):
        key = run.key(name)
        if not run.store.exists(key):
            continue
        path = run.store.get_file(key, run.workdir / f"resume-{name}")
        try:
            ckpt = torch.load(path, map_location=device, weights_only=False)
            int(ckpt["epoch"]), ckpt["model"], ckpt["optimizer"], list(ckpt["history"])
        except CHECKPOINT_ERRORS as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            set_aside_object(run.store, key, f"damaged checkpoint ({reason}), not resumed from")
            continue
        if ckpt.get("config") != cfg.model_dump(mode="json"):
            raise ConfigError(f"{run.store.url(key)} was written with a different config; "
                              "use a new run id (omit --run-id) instead of resuming, or "
                              "--refresh to start this one over")
        if name != "last.pt":
            run.log.warning("resuming from %s (epoch %d) instead of the damaged last.pt",
                            run.store.url(key), ckpt["epoch"])
        return ckpt
    return None


def train(cfg: TrainConfig, store: Store) -> Manifest:
    """Train one classifier; evaluate every split each epoch; checkpoint; write the manifest."""
    existing = reuse(store, "classifier.train", cfg, cfg.out)
    if existing is not None:
        return existing
    device = resolve_device(cfg.device)
    data_manifest = read_manifest(store, cfg.data)
    with TaskRun("classifier.train", cfg, store, cfg.out,
                 inputs={"data": store.url(cfg.data)}) as run, cudnn_settings(cfg, device):
        splits = load_splits(cfg, store, device)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg).to(device)
        net = compiled(cfg, model)
        optimizer = build_optimizer(cfg, model)
        loss_fn = make_loss(cfg.loss, NUM_CLASSES)
        preprocess = make_preprocess(cfg)
        history: list[dict] = []
        start_epoch = 1
        best_dev = -1.0
        ckpt = load_resume_point(run, cfg, device)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            history = ckpt["history"]
            start_epoch = ckpt["epoch"] + 1
            best_dev = max((h.get("dev/accuracy", -1.0) for h in history), default=-1.0)
            for name in ("last", "best"):
                if store.exists(run.key(f"{name}.pt")):
                    run.record(name, run.key(f"{name}.pt"))
            run.log.info("resuming %s from epoch %d", cfg.out, ckpt["epoch"])
        n_train = len(splits["train"])
        run.log.info("training %s on %s: %d train samples, %d epochs, batch %d",
                     cfg.model, device, n_train, cfg.epochs, cfg.batch_size)
        for epoch in range(start_epoch, cfg.epochs + 1):
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout/flip: resumable
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
            with run.batches(epoch):  # a bar of the epoch's batches on a terminal
                tr = train_one_epoch(net, splits["train"], batch_size=cfg.batch_size,
                                     optimizer=optimizer, loss_fn=loss_fn,
                                     preprocess=preprocess, generator=gen,
                                     autocast=cfg.autocast,
                                     cuda_graph=cfg.cuda_graphs)
            row = {"epoch": epoch, "train/loss": tr["loss"], "train/accuracy": tr["accuracy"],
                   "train/time_s": tr["time_s"]}
            for name in ("dev", "test"):
                if name in splits:
                    ev = eval_loop(net, splits[name], batch_size=1000, loss_fn=loss_fn,
                                   preprocess=preprocess, autocast=cfg.autocast)
                    row[f"{name}/loss"] = ev["loss"]
                    row[f"{name}/accuracy"] = ev["accuracy"]
            history.append(row)
            shown = " ".join(f"{k}={v:.4f}" for k, v in row.items()
                             if k != "epoch" and not k.endswith("time_s"))
            run.log.info("[%s] epoch %d/%d %s (%.1fs)", cfg.out.rsplit("/", 1)[-1], epoch,
                         cfg.epochs, shown, tr["time_s"])
            run.progress(epoch, cfg.epochs, info={
                "loss": tr["loss"], "acc": tr["accuracy"],
                **({"dev_acc": row["dev/accuracy"]} if "dev/accuracy" in row else {})})
            if "dev" in splits and row["dev/accuracy"] > best_dev:
                best_dev = row["dev/accuracy"]
                _save_checkpoint(run, "best.pt", model, optimizer, epoch, history, cfg)
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                _save_checkpoint(run, "last.pt", model, optimizer, epoch, history, cfg)
        run.put_json("history", history, "history.json")
        final = history[-1]
        metrics = {k: v for k, v in final.items() if k != "epoch"}
        metrics["train/time_s"] = sum(h["train/time_s"] for h in history)
        metrics["epochs"] = len(history)
        metrics["params"] = sum(p.numel() for p in model.parameters())
        metrics["device"] = str(device)
        metrics["threads"] = torch.get_num_threads()  # float sums depend on it
        if "dev" in splits:
            best = max(history, key=lambda h: h["dev/accuracy"])
            metrics["best_epoch"] = best["epoch"]
            metrics["best/dev/accuracy"] = best["dev/accuracy"]
        return run.finish(metrics, history=history,
                          classes=(data_manifest.model_extra or {}).get("classes", CLASSES))


def evaluate(cfg: EvalConfig, store: Store) -> Manifest:
    """Final metrics of a trained classifier: accuracy, macro/per-class P/R/F1, confusion."""
    existing = reuse(store, "classifier.evaluate", cfg, cfg.out)
    if existing is not None:
        return existing
    device = resolve_device(cfg.device)
    train_manifest = read_verified(store, cfg.train)
    tcfg = TrainConfig.model_validate(train_manifest.config)
    with TaskRun("classifier.evaluate", cfg, store, cfg.out,
                 inputs={"train": store.url(cfg.train)}) as run:
        ckpt_key = train_manifest.output_key(cfg.checkpoint)
        ckpt = torch.load(store.get_file(ckpt_key, run.workdir / "model.pt"),
                          map_location=device, weights_only=False)
        model = build_model(tcfg).to(device)
        model.load_state_dict(ckpt["model"])
        splits = load_splits(tcfg, store, device)
        if cfg.split not in splits:
            raise ConfigError(f"split {cfg.split!r} does not exist for this run (it has "
                              f"{', '.join(s for s in splits if s != 'train')}); "
                              "dev exists only when dev_fraction > 0")
        start = time.perf_counter()
        ev = eval_loop(model, splits[cfg.split], batch_size=cfg.batch_size,
                       loss_fn=make_loss(tcfg.loss, NUM_CLASSES),
                       preprocess=make_preprocess(tcfg), return_predictions=True,
                       autocast=tcfg.autocast)
        metrics = classification_metrics(splits[cfg.split].y.cpu(), ev["predictions"],
                                         NUM_CLASSES)
        metrics = {f"{cfg.split}/{k}": v for k, v in metrics.items()}
        metrics[f"{cfg.split}/loss"] = ev["loss"]
        metrics["checkpoint_epoch"] = ckpt["epoch"]
        metrics["eval/time_s"] = time.perf_counter() - start
        run.put_json("metrics", metrics, "metrics.json")
        return run.finish(metrics, classes=CLASSES)
