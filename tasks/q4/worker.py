"""The ultralytics side of ``yolo.train`` / ``yolo.evaluate``, run in a child process.

``python -m tasks.q4.worker SPEC.json`` — the parent task (:mod:`tasks.q4.yolo`) prepares
everything (local dataset copy, resolved weights, stored checkpoint) and starts this process
with a fresh environment, so that ultralytics' import-time settings are ours:

How ultralytics is kept fully offline (each line names what would otherwise reach out):

* ``YOLO_CONFIG_DIR=<run dir>/ultralytics-config`` — ultralytics reads it once, at import,
  for ``settings.json``, ``weights_dir``, ``runs_dir`` and fonts. A child process per run is
  the only way to give each run its own settings dir (an in-process import would keep the
  first run's dir for the rest of the process), and nothing lands in ``~/.config``.
* ``YOLO_OFFLINE=1`` — ``is_online()`` answers False without DNS probes, so the PyPI update
  check (``check_pip_update_available``), telemetry events and hub calls never run;
  ``YOLO_AUTOINSTALL=false`` — ``check_requirements`` never pip-installs a missing package.
* ``settings.json`` is written with ``sync: false`` and every integration (clearml, comet,
  dvc, mlflow, raytune, tensorboard, wandb) off, so no integration callback is registered.
* Fonts: ``check_det_dataset`` always calls ``check_font("Arial.ttf")`` and plotting calls it
  too; it looks in the settings dir first and otherwise sends a HEAD request and downloads
  the font. We put matplotlib's bundled DejaVuSans.ttf there as ``Arial.ttf`` (and
  ``Arial.Unicode.ttf``), so the lookup succeeds locally and plots work.
* AMP: ``check_amp`` returns False on CPU without downloading, but on CUDA it downloads
  ``yolo26n.pt`` to compare FP32 and AMP outputs. We replace the trainer's ``check_amp``
  with the config's ``amp`` flag (default on for GPUs).
* Weights and data: the parent passes a local ``.pt`` (resolved mirror -> cache ->
  download) or a packaged model ``.yaml``, and a data.yaml without a ``download:`` key whose
  ``path`` is the local copy, so ultralytics never resolves a remote asset.
* Tripwire: ultralytics' ``safe_download`` is replaced by a function that raises, naming
  the URL, so any download attempt we did not foresee fails loudly instead of hanging.

The worker uploads ``last.pt`` (with optimizer state), ``best.pt``, ``results.csv`` and
``train_state.json`` to the store every ``checkpoint_every`` epochs and at the end, from
inside the training loop (``on_model_save``), before ultralytics strips the optimizer from
its final files. That stored ``last.pt`` is what a rerun resumes or extends from.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
EXIT_USER_ERROR = 2


def _die_with_parent() -> None:
    """Exit when the parent task dies, so a killed task never leaves a training running."""
    from tasks.core.settings import setting

    parent = setting("VF_PARENT_PID")
    with contextlib.suppress(OSError, AttributeError):  # Linux: SIGKILL when the parent exits
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:
        os._exit(137)

    def watch() -> None:  # portable fallback
        while True:
            time.sleep(1.0)
            if parent and os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, daemon=True, name="vf-parent-watch").start()


def prepare_config_dir(config_dir: Path) -> Path:
    """Settings and fonts for ultralytics inside the run dir (call before importing it)."""
    udir = config_dir / "Ultralytics"
    udir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (udir / name).exists() and font.is_file():
            shutil.copyfile(font, udir / name)
    return udir


def _offline_ultralytics(amp: bool) -> None:
    """Settings, AMP check and the download tripwire (after the import, before any work)."""
    from ultralytics.data import utils as data_utils
    from ultralytics.engine import trainer as trainer_mod
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR, downloads

    SETTINGS.update({"sync": False, **dict.fromkeys(INTEGRATIONS, False),
                     "weights_dir": str(USER_CONFIG_DIR / "weights"),
                     "runs_dir": str(USER_CONFIG_DIR / "runs"),
                     "datasets_dir": str(USER_CONFIG_DIR / "datasets")})

    def no_download(url="", *args, **kwargs):
        raise ConnectionError(f"visionflows keeps ultralytics offline: it tried to download "
                              f"{url}; provide the file locally (weights mirror or cache)")

    downloads.safe_download = no_download
    data_utils.safe_download = no_download
    trainer_mod.check_amp = lambda model: bool(amp)


def _log(msg: str) -> None:
    print(f"[worker] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- training

class Checkpointer:
    """Uploads the resumable state from inside the training loop."""

    def __init__(self, spec: dict[str, Any]):
        from tasks.core.store import open_store

        self.store = open_store(spec["store"])
        self.out = spec["out"].strip("/")
        self.every = int(spec["checkpoint_every"])
        self.state = dict(spec["state"])
        self.time_before = float(spec.get("time_before", 0.0))
        self.session_start = time.time()
        self.best_mtime = 0.0
        self.uploads = 0

    def key(self, name: str) -> str:
        return f"{self.out}/{name}"

    def elapsed(self) -> float:
        return self.time_before + time.time() - self.session_start

    def on_model_save(self, trainer) -> None:
        done = trainer.epoch + 1
        if not (done % self.every == 0 or trainer.stop or done >= trainer.epochs):
            return
        # train_state.json first: whenever a last.pt is stored, the config it belongs to is
        # too. A crash between the uploads leaves the state one checkpoint ahead; a resume
        # trusts the epoch inside last.pt and trims the rest (see train()).
        self.state["epoch"] = done
        self.state["target_epochs"] = trainer.epochs
        self.state.setdefault("time_at_epoch", {})[str(done)] = round(self.elapsed(), 3)
        self.state["sessions"][-1]["end_epoch"] = done
        self.store.put_json(self.key("train_state.json"), self.state)
        if Path(trainer.csv).is_file():
            self.store.put_file(self.key("results.csv"), trainer.csv)
        best = Path(trainer.best)
        if best.is_file() and best.stat().st_mtime != self.best_mtime:
            self.store.put_file(self.key("best.pt"), best)
            self.best_mtime = best.stat().st_mtime
        self.store.put_file(self.key("last.pt"), trainer.last)
        self.uploads += 1
        _log(f"checkpoint: epoch {done}/{trainer.epochs} -> {self.store.url(self.key('last.pt'))}")


def _truncate_results(path: Path, max_epoch: int) -> None:
    """Keep results.csv rows up to ``max_epoch`` (the csv is stored just before last.pt)."""
    lines = path.read_text().splitlines()
    keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and
                        int(float(ln.split(",")[0])) <= max_epoch]
    path.write_text("\n".join(keep) + "\n")


def _epoch_logger(trainer) -> None:
    if trainer.epoch + 1 > trainer.epochs:  # ultralytics' final validation of best.pt
        return
    m = trainer.metrics or {}
    loss = trainer.label_loss_items(trainer.tloss) if trainer.tloss is not None else {}
    shown = {**{k: v for k, v in loss.items()},
             **{k: m[k] for k in ("metrics/mAP50(B)", "metrics/mAP50-95(B)") if k in m}}
    _log(f"epoch {trainer.epoch + 1}/{trainer.epochs} " +
         " ".join(f"{k}={float(v):.4f}" for k, v in shown.items()))


def _extendable_trainer():
    from ultralytics.models.yolo.detect import DetectionTrainer

    class ExtendableTrainer(DetectionTrainer):
        """ultralytics' resume restores every argument from the checkpoint, epochs included,
        and refuses a finished run. This one keeps the requested ``epochs``, so a rerun with
        more epochs continues the same optimizer, EMA and epoch count."""

        def check_resume(self, overrides):
            epochs = overrides.get("epochs")
            super().check_resume({k: v for k, v in overrides.items() if k != "epochs"})
            if self.resume and epochs:
                self.args.epochs = int(epochs)

    return ExtendableTrainer


def _checkpoint_epochs(path: Path) -> int:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
        raise RuntimeError(f"{path} is not a resumable checkpoint (no optimizer state/epoch)")
    return int(ckpt["epoch"]) + 1


def train(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from ultralytics import YOLO

    save_dir = run_dir / "train"
    args = dict(spec["args"])
    resume = spec.get("resume")
    ckpt = Checkpointer(spec)
    state = ckpt.state
    start_epoch = 0
    if resume:
        start_epoch = _checkpoint_epochs(Path(resume))
        times = {int(k): v for k, v in state.get("time_at_epoch", {}).items()
                 if int(k) <= start_epoch}
        state["time_at_epoch"] = {str(k): v for k, v in sorted(times.items())}
        state["epoch"] = start_epoch
        ckpt.time_before = times[max(times)] if times else 0.0
        for s in state.get("sessions", []):
            s["end_epoch"] = min(s.get("end_epoch", start_epoch), start_epoch)
        if start_epoch >= args["epochs"]:
            _log(f"stored checkpoint already at epoch {start_epoch} >= {args['epochs']}: "
                 "nothing to train")
            ckpt.store.put_json(ckpt.key("train_state.json"), state)
            return {"trained_epochs": 0, "start_epoch": start_epoch, "save_dir": None}
        if spec.get("results_csv"):
            save_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(spec["results_csv"], save_dir / "results.csv")
            _truncate_results(save_dir / "results.csv", start_epoch)
    state.setdefault("sessions", []).append(
        {"start_epoch": start_epoch, "end_epoch": start_epoch, "started": time.time()})
    model = YOLO(resume or spec["model"], task="detect")
    model.add_callback("on_model_save", ckpt.on_model_save)
    model.add_callback("on_fit_epoch_end", _epoch_logger)
    kwargs = {**args, "data": spec["data"], "save_dir": str(save_dir), "exist_ok": True}
    if resume:
        kwargs["resume"] = str(resume)
        _log(f"resuming from epoch {start_epoch} to {args['epochs']} (checkpoint {resume})")
    t0 = time.time()
    model.train(trainer=_extendable_trainer(), **kwargs)
    trainer = model.trainer
    return {"trained_epochs": int(trainer.epoch) + 1 - start_epoch, "start_epoch": start_epoch,
            "session_time_s": time.time() - t0, "save_dir": str(trainer.save_dir),
            "epochs": int(trainer.epochs), "best_fitness": _num(trainer.best_fitness)}


def _num(x) -> float | None:
    try:
        return None if x is None else float(x)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- evaluation

def _confusion_validator(conf: float):
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ConfusionMatrix

    class ConfusionValidator(DetectionValidator):
        """Our own confusion matrix at the report's confidence threshold. ultralytics fills
        its matrix only when plotting, and at the validation conf (0.001), where every
        low-score box counts as a false positive."""

        def init_metrics(self, model):
            super().init_metrics(model)
            self.vf_confusion = ConfusionMatrix(names=self.names)

        def _process_batch(self, preds, batch):
            self.vf_confusion.process_batch(preds, batch, conf=conf)
            return super()._process_batch(preds, batch)

        def finalize_metrics(self):
            super().finalize_metrics()
            self.metrics.vf_confusion = self.vf_confusion.matrix

    return ConfusionValidator


def evaluate(spec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    import numpy as np
    from ultralytics import YOLO

    model = YOLO(spec["weights"], task="detect")
    names = [model.names[i] for i in sorted(model.names)]
    t0 = time.time()
    m = model.val(validator=_confusion_validator(spec["conf"]), data=spec["data"],
                  split=spec["split"], imgsz=spec["imgsz"], batch=spec["batch"],
                  device=spec["device"], plots=spec["plots"],
                  project=str(run_dir), name="val", exist_ok=True, verbose=True,
                  workers=spec.get("workers", 0))
    val_time = time.time() - t0
    p, r, map50, map5095 = (float(x) for x in m.box.mean_results())
    per_class = {}
    index = [int(i) for i in m.box.ap_class_index]
    counts = m.nt_per_class if m.nt_per_class is not None else np.zeros(len(names))
    for c, name in enumerate(names):
        row = {"instances": int(counts[c]) if c < len(counts) else 0, "precision": None,
               "recall": None, "mAP50": None, "mAP50-95": None}
        if c in index:
            cp, cr, c50, c5095 = m.box.class_result(index.index(c))
            row.update(precision=float(cp), recall=float(cr), mAP50=float(c50),
                       **{"mAP50-95": float(c5095)})
        per_class[name] = row
    cm = getattr(m, "vf_confusion", None)
    samples = _draw_predictions(model, spec, run_dir, names)
    return {"precision": p, "recall": r, "mAP50": map50, "mAP50-95": map5095,
            "fitness": float(m.fitness), "per_class": per_class, "names": names,
            # ultralytics stores [predicted, true] with a last 'background' row/column
            "confusion_pred_true": cm.astype(int).tolist() if cm is not None else None,
            "speed_ms": {k: float(v) for k, v in m.speed.items()}, "val_time_s": val_time,
            "save_dir": str(m.save_dir) if hasattr(m, "save_dir") else str(run_dir / "val"),
            "samples": samples}


def _read_labels(path: Path) -> list[tuple[int, float, float, float, float]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) == 5:
                rows.append((int(float(f[0])), *map(float, f[1:])))
    return rows


def _draw_boxes(img, boxes, colour, names: list[str]):
    """Outline ``boxes`` ``(x0, y0, x1, y1, cls, conf|None)`` with a small label on ``img``."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=max(10, img.width // 28))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for x0, y0, x1, y1, c, conf in boxes:
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=max(1, img.width // 160))
        text = names[c] if c < len(names) else str(c)
        if conf is not None:
            text += f" {conf:.2f}"
        tx, ty = x0, max(0, y0 - font.size - 2) if hasattr(font, "size") else y0
        bbox = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle(bbox, fill=colour)
        draw.text((tx, ty), text, fill=(0, 0, 0), font=font)
    return img


def _draw_predictions(model, spec: dict[str, Any], run_dir: Path, names: list[str]) -> list[str]:
    """Ground truth (left) beside predictions (right) for a few fixed images; one PNG grid."""
    import numpy as np
    from PIL import Image

    from tasks.q4.data import IMAGE_SUFFIXES, label_path

    images_dir = Path(spec["images_dir"])
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    labelled = [p for p in images if _read_labels(label_path(p))] or images
    n = min(spec["samples"], len(labelled))
    if n == 0:
        return []
    pick = [labelled[int(i)] for i in np.linspace(0, len(labelled) - 1, n).round()]
    results = model.predict([str(p) for p in pick], imgsz=spec["imgsz"], conf=spec["conf"],
                            device=spec["device"], verbose=False)
    tiles = []
    for path, res in zip(pick, results, strict=True):
        src = Image.open(path).convert("RGB")
        w, h = src.size
        scale = max(1.0, 320 / max(w, h))  # small images are drawn larger, labels stay legible
        size = (round(w * scale), round(h * scale))
        gt = [((cx - bw / 2) * size[0], (cy - bh / 2) * size[1], (cx + bw / 2) * size[0],
               (cy + bh / 2) * size[1], c, None)
              for c, cx, cy, bw, bh in _read_labels(label_path(path))]
        xyxy = res.boxes.xyxy.cpu().numpy() * scale if len(res.boxes) else np.zeros((0, 4))
        pred = [(*map(float, b), int(c), float(p)) for b, c, p in
                zip(xyxy, res.boxes.cls.cpu().numpy(), res.boxes.conf.cpu().numpy(),
                    strict=True)]
        left = _draw_boxes(src.resize(size, Image.BILINEAR), gt, (255, 0, 255), names)
        right = _draw_boxes(src.resize(size, Image.BILINEAR), pred, (255, 160, 0), names)
        pair = Image.new("RGB", (2 * size[0] + 4, size[1]), (255, 255, 255))
        pair.paste(left, (0, 0))
        pair.paste(right, (size[0] + 4, 0))
        tiles.append(pair)
    cols = 2 if len(tiles) > 1 else 1
    rows = (len(tiles) + cols - 1) // cols
    tw, th = tiles[0].size
    grid = Image.new("RGB", (cols * tw + (cols - 1) * 12, rows * th + (rows - 1) * 12),
                     (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * (tw + 12), (i // cols) * (th + 12)))
    grid.save(run_dir / "predictions.png")
    return [p.name for p in pick]


# ---------------------------------------------------------------- entrypoint

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tasks.q4.worker SPEC.json", file=sys.stderr)
        return EXIT_USER_ERROR
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    run_dir = spec_path.parent
    _die_with_parent()
    if "ultralytics" in sys.modules:  # cannot happen in a fresh interpreter; be explicit
        raise RuntimeError("ultralytics was imported before its offline settings were applied")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(run_dir / "ultralytics-config"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    prepare_config_dir(Path(os.environ["YOLO_CONFIG_DIR"]))
    result_path = run_dir / "result.json"
    try:
        _offline_ultralytics(spec.get("amp", False))
        result = train(spec, run_dir) if spec["mode"] == "train" else evaluate(spec, run_dir)
    except SyntaxError as exc:  # ultralytics reports bad arguments as SyntaxError
        (run_dir / "error.json").write_text(json.dumps({"kind": "config", "message": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:
        traceback.print_exc()
        (run_dir / "error.json").write_text(json.dumps(
            {"kind": "crash", "message": f"{type(exc).__name__}: {exc}"}))
        return 1
    result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
