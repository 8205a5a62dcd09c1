"""Q4's flow-level plan: the ``q4-yolo`` config, its profiles, and the task configs the flow
sends (pure data, no Prefect).

The flow config inherits :class:`tasks.q4.yolo.YoloTrainOptions` (how each model trains)
and states the evaluation's settings with the task's own defaults and checks (``like``),
so each default lives once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from tasks.core.config import distinct, like
from tasks.core.promote import RegressionOptions
from tasks.core.resources import Resources, ResourceTable, on_cpu, parallel_field, resources_field
from tasks.inputs.mirror_index import Entry
from tasks.q4.data import EXPORT_MIRROR_NAME, YoloDataConfig
from tasks.q4.yolo import (
    YoloEvalConfig,
    YoloTrainOptions,
    model_label,
    reference_key,
    weights_spec,
)

QUESTIONS = ("q4-yolo",)
# The full profile's default data.location: the export uploaded to this store key
EXPORT_KEY = "uploads/q4-yolo/roboflow-export.zip"
WIRED = {"yolo.train": {"out", "data", "model"}, "yolo.evaluate": {"out", "train"}}
RENAMED = {"yolo.train": {"weights": "weights_mirror"},
           "yolo.evaluate": {"batch": "eval_batch", "checkpoint": "eval_checkpoint",
                             "split": "eval_split", "imgsz": "eval_imgsz"}}


# What each step needs (tasks.core.resources): a YOLOv5x training wants a whole GPU.
RESOURCES = ResourceTable(
    fetch=Resources(cpus=2, memory="4g", scratch="20g", time_limit_s=3600),
    train=Resources(cpus=8, memory="32g", gpus=1, shm="8g", scratch="20g",
                    time_limit_s=12 * 3600),
    evaluate=Resources(cpus=4, memory="16g", gpus=1, shm="4g", scratch="10g",
                       time_limit_s=3600),
    # two models trained one after the other (12 h each at most), fetch and evaluations
    flow_time_limit_s=30 * 3600)
STEP_KINDS = {"yolo-export.fetch": "fetch", "yolo.train": "train", "yolo.evaluate": "evaluate",
              "yolo.report": "report", "model.promote": "report",
              "report.compare": "report"}


class Q4YoloConfig(YoloTrainOptions, RegressionOptions):
    """Q4: ultralytics YOLO detection, one training per model, evaluated on the valid split.

    ``full`` is the SPEC's setup (pretrained YOLOv5s and YOLOv5x, 100 epochs at 416 px on
    the Roboflow export given as ``data.location``); ``smoke`` trains small models from their
    yaml on generated shapes. Any ultralytics model name works in ``models`` (a ``.yaml``
    trains from scratch, a ``.pt`` starts from pretrained weights found via
    ``weights_mirror``, the store's mirror index, the cache, or a download).
    """

    data: YoloDataConfig = Field(default_factory=lambda: YoloDataConfig(source="generate"))
    models: Annotated[list[str], AfterValidator(distinct)] = Field(
        ["yolov5s.pt", "yolov5x.pt"], min_length=1)
    weights_mirror: str | None = Field(None, description="folder or store:PREFIX holding .pt files")
    eval_batch: int = like(YoloEvalConfig, "batch")
    eval_checkpoint: Literal["best", "last"] = like(YoloEvalConfig, "checkpoint")
    eval_split: Literal["val", "test"] = like(YoloEvalConfig, "split")
    eval_imgsz: int | None = like(YoloEvalConfig, "imgsz")
    conf: float = like(YoloEvalConfig, "conf")
    samples: int = like(YoloEvalConfig, "samples")
    parallel: int = parallel_field("models")
    resources: ResourceTable = resources_field(RESOURCES)


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "q4-yolo": {
        # Sized to learn the generated shapes in about a minute of CPU per model: 96 px
        # images, no mosaic (it shrinks objects), an optimizer step every batch (nbs=batch).
        "smoke": {"data": {"source": "generate", "n_train": 160, "n_valid": 30,
                           "image_size": 96, "max_objects": 3},
                  "models": ["yolov5n.yaml", "yolov5s.yaml"], "epochs": 6, "imgsz": 96,
                  "batch": 8, "nbs": 8, "optimizer": "AdamW", "lr0": 0.003,
                  "warmup_epochs": 0.5, "mosaic": 0.0, "close_mosaic": 0, "device": "cpu",
                  "workers": 0, "plots": False, "checkpoint_every": 3, "samples": 4,
                  "resources": on_cpu(RESOURCES)},
        # full: the Roboflow export, by default from this store key (upload it there, or
        # pass --set data.location=PATH|URL|store:KEY)
        "full": {"data": {"source": "export", "location": "store:" + EXPORT_KEY},
                 "models": ["yolov5s.pt", "yolov5x.pt"], "epochs": 100, "imgsz": 416},
    },
}


def train_config(cfg: Q4YoloConfig, model: str, out: str, data: str) -> dict[str, Any]:
    """The ``yolo.train`` config of one model: the flow's training options as they are."""
    return {**cfg.model_dump(mode="json", include=set(YoloTrainOptions.model_fields)),
            "out": out, "data": data, "model": model, "weights": cfg.weights_mirror}


def eval_config(cfg: Q4YoloConfig, out: str, train: str) -> dict[str, Any]:
    """The ``yolo.evaluate`` config of one trained model."""
    return {"out": out, "train": train, "checkpoint": cfg.eval_checkpoint,
            "split": cfg.eval_split, "imgsz": cfg.eval_imgsz, "batch": cfg.eval_batch,
            "conf": cfg.conf, "samples": cfg.samples, "device": cfg.device, "plots": cfg.plots}


def mirror_entries(export_url: str | None = None) -> list[Entry]:
    """What ``visionflows mirror`` stores for Q4: the full profile's pretrained weights, and
    the Roboflow export when its URL is given."""
    from tasks.inputs.download import public_url

    full = Q4YoloConfig.model_validate(PROFILES["q4-yolo"]["full"])
    entries = [weights_spec(m).mirror_entry() for m in full.models if m.endswith(".pt")]
    if export_url:
        entries.append(Entry(EXPORT_MIRROR_NAME, export_url, QUESTIONS,
                             f"Q4 Roboflow export {public_url(export_url)}", check="zip"))
    return entries


# --- what the flow reports: the report's prose, the summary rows and their metric names

METRICS = ("precision", "recall", "mAP50", "mAP50-95")  # each as val/<name>


def report_models(cfg: Q4YoloConfig, trained: dict[str, dict],
                  evaluated: dict[str, dict]) -> list[dict[str, Any]]:
    """The report task's ``models``: each model's label, reference key and steps."""
    return [{"label": model_label(m), "model": m, "reference": reference_key(m),
             "train": trained[m]["prefix"], "eval": evaluated[m]["prefix"]}
            for m in cfg.models]


def report_intro(cfg: Q4YoloConfig, data: dict[str, Any]) -> list[str]:
    """The report's opening paragraph: the setup of this run, from its config."""
    return [f"Models: {', '.join(cfg.models)}; {cfg.epochs} epochs at {cfg.imgsz} px, "
            f"batch {cfg.batch}, optimizer {cfg.optimizer}, seed {cfg.seed}. Dataset: "
            f"{data['prefix']} ({data['inputs'].get('source', '?')}, classes "
            f"{', '.join(data.get('classes', []))}). Metrics: ultralytics val on the "
            "validation split."]


def summary_rows(cfg: Q4YoloConfig, trained: dict[str, dict],
                 evaluated: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per model (ours), then the reference's (the flow's metrics table)."""
    from tasks.q4.reference import REFERENCE

    rows = []
    for m in cfg.models:
        em, tm = evaluated[m]["metrics"], trained[m]["metrics"]
        rows.append({"model": model_label(m), "source": "ours",
                     **{k: round(em[f"val/{k}"], 4) for k in METRICS},
                     "train_time_s": round(tm.get("train/time_s") or 0.0, 1),
                     "epochs": tm.get("epochs")})
    for key, ref in REFERENCE.items():
        rows.append({"model": key, "source": "reference", **{k: ref[k] for k in METRICS},
                     "train_time_s": ref["train_time_s"], "epochs": 100})
    return rows


def per_class_rows(cfg: Q4YoloConfig, evaluated: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per model and class: the validation metrics per class."""
    return [{"model": model_label(m), "class": c, **{
        k: (round(v[k], 4) if v.get(k) is not None else None)
        for k in ("instances", *METRICS)}}
        for m in cfg.models for c, v in evaluated[m]["metrics"]["val/per_class"].items()]


def summary_md(groups: list[dict[str, Any]]) -> str:
    return "\n".join(f"- best model by {g['select_by']}: {g['best']} ({g['best_score']:.4f})"
                     for g in groups)
