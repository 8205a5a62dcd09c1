"""Q4 detection tasks: ``yolo.train`` and ``yolo.evaluate`` (ultralytics YOLO).

The ultralytics work runs in a child process (:mod:`tasks.q4.worker`, which explains how
ultralytics is kept offline); this module prepares its inputs, starts it, relays its log,
and turns its files into store outputs and a manifest.

Checkpoints and reruns of ``yolo.train`` at the same ``out`` prefix:

* ``last.pt`` (ultralytics' checkpoint *with* optimizer state), ``best.pt``,
  ``results.csv`` and ``train_state.json`` are stored every ``checkpoint_every`` epochs.
* A rerun after a crash (no manifest) resumes from the stored ``last.pt``: the epoch count,
  optimizer, EMA, best fitness and ``results.csv`` continue; nothing restarts from 0.
* A rerun of a finished training with more ``epochs`` extends it from the same checkpoint
  (ultralytics' own ``resume`` keeps the checkpoint's epoch count and refuses finished
  runs). The old manifest is removed first: until the extension finishes, the prefix
  holds no manifest, so nothing reads a half-extended run as finished. The learning-rate
  schedule is recomputed for the new total (ultralytics' linear/cosine decay over
  ``epochs``), so the rate rises again for the added epochs.
* Any other config change at the same prefix is refused: use a new run id.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from tasks.core.config import Config
from tasks.core.errors import ConfigError, MissingKeyError, VisionflowsError
from tasks.core.log import get_logger, redact
from tasks.core.runtime import (
    Manifest,
    PrefixConflictError,
    TaskRun,
    find_manifest,
    identity_changes,
    identity_of,
    manifest_key,
    read_verified,
    require_intact,
    reuse,
    set_aside,
    set_aside_object,
)
from tasks.core.store import Store
from tasks.inputs.weights import WeightsError, WeightsSpec
from tasks.inputs.weights import resolve_weights as resolve
from tasks.q4.data import materialize

ULTRALYTICS_RELEASE = "v8.4.0"  # the assets release ultralytics 8.4 downloads weights from
WEIGHTS_URL = "https://github.com/ultralytics/assets/releases/download/{release}/{name}"
# Fields a rerun may change without invalidating the stored training.
RERUN_MUTABLE = {"epochs", "device", "workers", "checkpoint_every", "plots", "weights"}


class YoloTaskError(VisionflowsError):
    """The ultralytics worker failed; the message carries its last log lines."""


class YoloTrainOptions(Config):
    """How a model trains (ultralytics arguments and our checkpointing); the Q4 flow config
    inherits them, so each default lives here once."""

    epochs: int = Field(100, gt=0)
    imgsz: int = Field(416, ge=32)
    batch: int = Field(16, gt=0)
    nbs: int = Field(64, gt=0, description="nominal batch: gradients accumulate to this size")
    optimizer: Literal["auto", "SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp"] = "auto"
    lr0: float = Field(0.01, gt=0)
    warmup_epochs: float = Field(3.0, ge=0)
    mosaic: float = Field(1.0, ge=0, le=1)
    close_mosaic: int = Field(10, ge=0)
    patience: int = Field(100, gt=0)
    cache: Literal[False, "ram", "disk"] = False
    workers: int = Field(8, ge=0)
    device: str = "auto"
    seed: int = 0
    deterministic: bool = True
    amp: bool = True
    plots: bool = True
    val: bool = True
    checkpoint_every: int = Field(5, gt=0, description="store last.pt every N epochs")
    train_args: dict[str, Any] = Field(default_factory=dict,
                                       description="any other ultralytics train argument")

    @field_validator("train_args")
    @classmethod
    def _no_managed(cls, v: dict[str, Any]) -> dict[str, Any]:
        managed = {"data", "model", "resume", "project", "name", "save_dir", "exist_ok",
                   "pretrained", "save", "save_period"}
        if clash := sorted(managed & set(v)):
            raise ValueError(f"train_args may not set {', '.join(clash)} (the task manages them)")
        return v


class YoloTrainConfig(YoloTrainOptions):
    """One ultralytics detection training (one model)."""

    out: str = Field(description="store prefix for this run's outputs and manifest")
    data: str = Field(description="store prefix of the yolo-export.fetch dataset")
    model: str = Field("yolov5s.pt", description="ultralytics model: a .yaml trains from scratch "
                       "(e.g. yolov5n.yaml), a .pt name or path starts from pretrained weights")
    weights: str | None = Field(None, description="weights mirror: a .pt file or a folder, "
                                "local or store:KEY, tried before the cache and the download")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty model name")
        return v.strip()


class YoloEvalConfig(Config):
    """ultralytics val of a trained model, predictions on sample images, curves."""

    out: str
    train: str = Field(description="store prefix of the yolo.train run")
    checkpoint: Literal["best", "last"] = "best"
    split: Literal["val", "test"] = "val"
    imgsz: int | None = Field(None, ge=32, description="default: the training's imgsz")
    batch: int = Field(16, gt=0)
    conf: float = Field(0.25, gt=0, lt=1, description="confidence for the drawn predictions")
    samples: int = Field(6, ge=0, le=32)
    device: str = "auto"
    plots: bool = True


def model_label(model: str) -> str:
    """A display name: ``yolov5s.pt`` -> ``yolov5s``, ``yolov5n.yaml`` -> ``yolov5n (scratch)``."""
    name = Path(model).name
    if name.endswith((".yaml", ".yml")):
        return f"{Path(name).stem} (scratch)"
    return Path(name).stem if name.endswith(".pt") else name


def model_slug(model: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", Path(model).name.lower()).strip("-")


def reference_key(model: str) -> str | None:
    """The SPEC's reference row a model corresponds to (``yolov5s``/``yolov5x``), if any."""
    m = re.search(r"yolov5([nsmlx])", Path(model).name.lower())
    return f"yolov5{m.group(1)}" if m else None


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- weights

def weights_name(model: str) -> str:
    """ultralytics' file name for a weights model: ``yolov5s`` / ``yolov5s.pt`` -> ``yolov5su.pt``
    (ultralytics 8 ships the anchor-free 'u' versions of YOLOv5)."""
    name = Path(model).name
    if not name.endswith(".pt"):
        name += ".pt"
    return re.sub(r"^(yolov[35][nsmlx]?6?)\.pt$", r"\1u.pt", name) if "u.pt" not in name else name


def weights_spec(model: str) -> WeightsSpec:
    """The published ultralytics file of a weights model (``yolov5s.pt`` -> ``yolov5su.pt``)."""
    name = weights_name(model)
    aliases = (Path(model).name,) if Path(model).name != name else ()
    return WeightsSpec(f"ultralytics {name}", WEIGHTS_URL.format(release=ULTRALYTICS_RELEASE,
                                                                 name=name),
                       "ultralytics", ("q4-yolo",), aliases)


def resolve_weights(model: str, mirror: str | None, store: Store, log) -> tuple[Path, str]:
    """A local file of pretrained weights: a path given as the model itself, else the one
    resolver's order (``weights_mirror``, the store's mirror index, the cache, a download).

    Returns ``(path, "<source>:<location>")`` and never falls back to random weights.
    """
    direct = Path(model).expanduser()
    if model.endswith(".pt") and (direct.is_absolute() or "/" in model) and direct.is_file():
        return direct, f"path:{direct}"
    try:
        found = resolve(weights_spec(model), mirror, store, log)
    except WeightsError as exc:
        raise WeightsError(f"{exc} To train from scratch use a .yaml model (e.g. "
                           "yolov5s.yaml): training never falls back to random weights.",
                           transient=exc.transient) from None
    return Path(found.path), f"{found.source}:{found.location}"


# ---------------------------------------------------------------- worker process

def _clean(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).strip()


_EPOCH = re.compile(r"^\[worker\] epoch (\d+)/(\d+)")


def run_worker(spec: dict[str, Any], run_dir: Path, label: str, log,
               on_epoch=None) -> dict[str, Any]:
    """Start ``python -m tasks.q4.worker`` on ``spec``; relay its log; return its result.

    ``on_epoch(done, total)`` hears of each finished training epoch (progress).
    """
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "YOLO_CONFIG_DIR": str(run_dir / "ultralytics-config"),
           "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "MPLBACKEND": "Agg",
           "PYTHONUNBUFFERED": "1",
           "VF_PARENT_PID": str(os.getpid())}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen([sys.executable, "-P", "-m", "tasks.q4.worker", str(spec_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=run_dir)
    tail: deque[str] = deque(maxlen=40)
    buf = b""
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(1 << 16):
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for raw in parts:
                line = _clean(raw.decode(errors="replace"))
                if not line or "━" in line or "─" in line:  # progress-bar frames
                    continue
                tail.append(line)
                log.info("[%s] %s", label, redact(line))
                if on_epoch is not None and (m := _EPOCH.match(line)):
                    on_epoch(int(m.group(1)), int(m.group(2)))
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        err = {}
        if (run_dir / "error.json").is_file():
            err = json.loads((run_dir / "error.json").read_text())
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        lines = "\n  ".join(redact(x) for x in list(tail)[-12:])
        if err.get("kind") == "config":
            raise ConfigError(f"ultralytics rejected the {label} config: {err['message']}")
        raise YoloTaskError(f"ultralytics worker for {label} failed ({how}): "
                            f"{err.get('message', 'no error report')}\n  {lines}")
    return json.loads((run_dir / "result.json").read_text())


# ---------------------------------------------------------------- results.csv

def read_results(text: str) -> list[dict[str, float]]:
    """ultralytics' results.csv as rows of floats (column names stripped)."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        out = {}
        for k, v in row.items():
            if k is None:
                continue
            try:
                out[k.strip()] = float(v)
            except (TypeError, ValueError):
                continue
        if "epoch" in out:
            out["epoch"] = int(out["epoch"])
            rows.append(out)
    return rows


# ---------------------------------------------------------------- train

def _intact_checkpoint(store: Store, key: str, workdir: Path) -> bool:
    """Whether the stored checkpoint reads back whole: a torch checkpoint is a zip archive
    whose every member carries a CRC (checked without unpickling it)."""
    import zipfile

    path = store.get_file(key, workdir / "check" / Path(key).name)
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
    finally:
        path.unlink(missing_ok=True)


def _compatible(old: YoloTrainConfig, new: YoloTrainConfig, where: str) -> None:
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    diff = sorted(k for k in a if a[k] != b.get(k) and k not in RERUN_MUTABLE)
    if diff:
        raise PrefixConflictError(f"{where} was trained with a different config "
                                  f"({', '.join(diff)} differ); use a new run id instead of "
                                  "rerunning at this prefix, or --refresh to start it over")
    if new.epochs < old.epochs:
        raise ConfigError(f"{where} already trained for {old.epochs} epochs; cannot shrink to "
                          f"{new.epochs}: use a new run id")


def _train_args(cfg: YoloTrainConfig, device: str) -> dict[str, Any]:
    args = {"epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch, "nbs": cfg.nbs,
            "optimizer": cfg.optimizer, "lr0": cfg.lr0, "warmup_epochs": cfg.warmup_epochs,
            "mosaic": cfg.mosaic, "close_mosaic": cfg.close_mosaic, "patience": cfg.patience,
            "cache": cfg.cache, "workers": cfg.workers, "device": device, "seed": cfg.seed,
            "deterministic": cfg.deterministic, "amp": cfg.amp and device != "cpu",
            "plots": cfg.plots, "val": cfg.val, "save": True, "save_period": -1,
            "verbose": True}
    return {**args, **cfg.train_args}


def train(cfg: YoloTrainConfig, store: Store) -> Manifest:
    """Train one model; checkpoint to the store; resume or extend from a stored checkpoint."""
    log = get_logger("yolo.train")
    label = model_label(cfg.model)
    existing = find_manifest(store, cfg.out)
    if existing is not None and (changed := identity_changes(
            existing.identity, existing.config, identity_of("yolo.train", cfg, store))):
        set_aside(store, cfg.out, "computed under another identity, training from scratch: "
                  + "; ".join(changed))
        existing = None
    if existing is not None:
        old = YoloTrainConfig.model_validate(existing.config)
        _compatible(old, cfg, store.url(cfg.out))
        require_intact(store, existing)  # a damaged result is neither reused nor extended
        if cfg.epochs == old.epochs:
            return existing
        log.info("%s: extending a finished %d-epoch training to %d epochs", label, old.epochs,
                 cfg.epochs)
        store.delete(manifest_key(cfg.out))  # unfinished until the extension is done
    device = resolve_device(cfg.device)
    data_yaml = materialize(store, cfg.data)
    with TaskRun("yolo.train", cfg, store, cfg.out, inputs={"data": store.url(cfg.data)}) as run:
        state_key, last_key = run.key("train_state.json"), run.key("last.pt")
        state: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "sessions": []}
        spec: dict[str, Any] = {"mode": "train", "store": store.uri, "out": cfg.out,
                                "data": str(data_yaml), "checkpoint_every": cfg.checkpoint_every,
                                "amp": cfg.amp and device != "cpu",
                                "args": _train_args(cfg, device)}
        weights_from = "none (from yaml, random init)"
        if store.exists(last_key) and not _intact_checkpoint(store, last_key, run.workdir):
            set_aside_object(store, last_key, "damaged checkpoint, not resumed from: the "
                             "training starts over")
            for rel in ("train_state.json", "results.csv", "best.pt"):
                if store.exists(run.key(rel)):
                    store.delete(run.key(rel))
        if store.exists(last_key):
            if store.exists(state_key):
                prev = store.get_json(state_key)
                _compatible(YoloTrainConfig.model_validate(prev["config"]), cfg,
                            store.url(cfg.out))
                state = {**prev, "config": cfg.model_dump(mode="json")}
            ckpt = store.get_file(last_key, run.workdir / "resume" / "last.pt")
            spec["resume"] = str(ckpt)
            if store.exists(run.key("results.csv")):
                spec["results_csv"] = str(store.get_file(
                    run.key("results.csv"), run.workdir / "resume" / "results.csv"))
            weights_from = state.get("weights_from", weights_from)
            spec["resumed_from"] = store.url(last_key)
            log.info("%s: found a stored checkpoint (state says epoch %s): resuming from it, "
                     "not restarting", label, state.get("epoch", "?"))
        elif cfg.model.endswith((".yaml", ".yml")):
            spec["model"] = cfg.model
        else:
            path, weights_from = resolve_weights(cfg.model, cfg.weights, store, log)
            spec["model"] = str(path)
            log.info("%s: pretrained weights from %s", label, weights_from)
        state.setdefault("weights_from", weights_from)  # where the first session started
        spec["state"] = state
        work = run.workdir / "worker"
        work.mkdir()
        run.claim()  # the worker writes checkpoints here: they belong to this identity
        result = run_worker(spec, work, label, log, on_epoch=run.progress)
        # outputs: the worker stored last.pt / best.pt / results.csv / train_state.json
        state = store.get_json(state_key)
        for name, rel in (("last", "last.pt"), ("best", "best.pt"), ("results", "results.csv"),
                          ("state", "train_state.json")):
            if store.exists(run.key(rel)):
                run.outputs[name] = run.key(rel)
        save_dir = Path(result["save_dir"]) if result.get("save_dir") else None
        if save_dir is not None:
            if (save_dir / "weights" / "best.pt").is_file():  # final, optimizer stripped
                run.put_file("best", save_dir / "weights" / "best.pt", "best.pt")
            if (save_dir / "args.yaml").is_file():
                run.put_file("args", save_dir / "args.yaml", "args.yaml")
            for png in sorted(save_dir.glob("*.png")) + sorted(save_dir.glob("*.jpg")):
                run.put_file(f"plot/{png.stem}", png, f"plots/{png.name}")
        history = read_results(store.get_text(run.outputs["results"])) \
            if "results" in run.outputs else []
        # ultralytics' 'time' column restarts at every resumed session: our train/time_s
        # (train_state.json) is the cumulative one
        history = [{k: v for k, v in h.items() if k != "time"} for h in history]
        final = history[-1] if history else {}
        epochs = int(state.get("epoch", 0))
        metrics = {
            "epochs": epochs,
            "train/time_s": float(state.get("time_at_epoch", {}).get(str(epochs), 0.0)),
            "session/start_epoch": int(result.get("start_epoch", 0)),
            "session/trained_epochs": int(result.get("trained_epochs", 0)),
            "resumed": int(result.get("start_epoch", 0)) > 0,
            **{f"val/{k.split('/', 1)[1].removesuffix('(B)')}": v for k, v in final.items()
               if k.startswith("metrics/")},
            **{k: v for k, v in final.items() if k.startswith(("train/", "val/"))},
            "device": device,
        }
        return run.finish(metrics, model=cfg.model, label=label, weights_from=weights_from,
                          resumed_from=spec.get("resumed_from"),
                          history=history, sessions=state.get("sessions", []),
                          reference=reference_key(cfg.model))


# ---------------------------------------------------------------- evaluate

def evaluate(cfg: YoloEvalConfig, store: Store) -> Manifest:
    """ultralytics val on the validation split: P, R, mAP50, mAP50-95 overall and per class,
    confusion matrix, predictions drawn on sample images, loss curves from results.csv."""
    from tasks.ml import plots

    log = get_logger("yolo.evaluate")
    train_m = read_verified(store, cfg.train)
    # an evaluation of a training that was extended since is set aside and done again
    existing = reuse(store, "yolo.evaluate", cfg, cfg.out)
    if existing is not None:
        return existing
    tcfg = YoloTrainConfig.model_validate(train_m.config)
    label = model_label(tcfg.model)
    device = resolve_device(cfg.device)
    data_yaml = materialize(store, tcfg.data)
    with TaskRun("yolo.evaluate", cfg, store, cfg.out,
                 inputs={"train": store.url(cfg.train), "data": store.url(tcfg.data)}) as run:
        try:
            ckpt_key = train_m.output_key(cfg.checkpoint)
        except MissingKeyError:
            ckpt_key = train_m.output_key("last")
        weights = store.get_file(ckpt_key, run.workdir / "model.pt")
        import yaml

        data = yaml.safe_load(data_yaml.read_text())
        if not data.get(cfg.split):
            raise ConfigError(f"the dataset has no {cfg.split!r} split")
        work = run.workdir / "worker"
        work.mkdir()
        spec = {"mode": "val", "weights": str(weights), "data": str(data_yaml),
                "split": cfg.split, "imgsz": cfg.imgsz or tcfg.imgsz, "batch": cfg.batch,
                "device": device, "plots": cfg.plots, "conf": cfg.conf, "samples": cfg.samples,
                "images_dir": str(Path(data["path"]) / data[cfg.split]), "amp": False}
        res = run_worker(spec, work, f"{label} val", log)
        names = res["names"]
        cm = res["confusion_pred_true"]
        metrics: dict[str, Any] = {
            "confusion_conf": cfg.conf,
            f"{cfg.split}/precision": res["precision"], f"{cfg.split}/recall": res["recall"],
            f"{cfg.split}/mAP50": res["mAP50"], f"{cfg.split}/mAP50-95": res["mAP50-95"],
            f"{cfg.split}/fitness": res["fitness"], f"{cfg.split}/per_class": res["per_class"],
            "train/time_s": train_m.metrics.get("train/time_s"),
            "epochs": train_m.metrics.get("epochs"), "eval/time_s": res["val_time_s"],
            "speed_ms": res["speed_ms"], "checkpoint": cfg.checkpoint,
        }
        if cm is not None:
            true_pred = [list(r) for r in zip(*cm, strict=True)]  # -> rows true, cols predicted
            metrics[f"{cfg.split}/confusion_matrix"] = true_pred
            run.put_bytes("confusion", plots.confusion(
                true_pred, [*names, "background"],
                f"{label}: confusion matrix ({cfg.split}, conf >= {cfg.conf:g})"),
                "confusion.png")
        history = train_m.model_extra.get("history", [])
        if history:
            run.put_bytes("curves", loss_curves({label: history}, f"{label}: training"),
                          "curves.png")
        if (work / "predictions.png").is_file():
            run.put_file("predictions", work / "predictions.png", "predictions.png")
        val_dir = Path(res["save_dir"])
        if cfg.plots and val_dir.is_dir():
            for f in sorted(val_dir.glob("*.png")) + sorted(val_dir.glob("*.jpg")):
                run.put_file(f"ultralytics/{f.stem}", f, f"ultralytics/{f.name}")
        run.put_json("metrics", metrics, "metrics.json")
        log.info("%s: %s P=%.3f R=%.3f mAP50=%.3f mAP50-95=%.3f", label, cfg.split,
                 res["precision"], res["recall"], res["mAP50"], res["mAP50-95"])
        return run.finish(metrics, label=label, model=tcfg.model, classes=names,
                          samples=res["samples"],
                          reference=reference_key(tcfg.model))


def loss_curves(histories: dict[str, list[dict]], title: str = "") -> bytes:
    """Train (solid) and validation (dashed) box/cls/dfl losses, and mAP per epoch."""
    from tasks.ml import plots

    rows = {}
    for name, hist in histories.items():
        rows[name] = [{**h, "val/mAP50": h.get("metrics/mAP50(B)"),
                       "val/mAP50-95": h.get("metrics/mAP50-95(B)")} for h in hist]
    return plots.curves(rows, metrics=("box_loss", "cls_loss", "dfl_loss", "mAP50"),
                        splits=("train", "val"), title=title)


__all__ = ["YoloTrainConfig", "YoloEvalConfig", "train", "evaluate", "resolve_weights",
           "weights_name", "model_label", "model_slug", "reference_key", "read_results",
           "loss_curves"]
