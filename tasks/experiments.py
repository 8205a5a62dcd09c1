"""Flow-level configs, profiles and sweep planning for each question (pure data, no Prefect).

A profile picks sizes, not code paths: ``smoke`` (generated data, tiny epochs, CPU) and
``full`` (the SPEC's hyperparameters on the real data). Users override any key with
``--set key=value`` (dotted for nested keys); unknown keys are rejected by name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tasks.config import Config, deep_merge, validate
from tasks.data.fashion_mnist import FetchConfig
from tasks.data.yolo_export import YoloDataConfig
from tasks.errors import ConfigError

Activation = Literal["relu", "tanh", "sigmoid"]
Loss = Literal["cross_entropy", "mse"]


class Q1MlpConfig(Config):
    """Q1-MLP: batch-size, activation and loss sweeps of one fully connected net.

    Each sweep varies one key and holds the others at ``batch_size`` / ``activation`` /
    ``loss``; a cell shared by two sweeps is trained once.
    """

    data: FetchConfig = FetchConfig()
    batch_sizes: list[int] = Field([32, 64, 256], min_length=1)
    activations: list[Activation] = Field(["relu", "tanh", "sigmoid"], min_length=1)
    losses: list[Loss] = Field(["cross_entropy", "mse"], min_length=1)
    batch_size: int = Field(64, gt=0, description="batch size of the activation and loss sweeps")
    activation: Activation = "relu"
    loss: Loss = "cross_entropy"
    hidden: list[int] = Field([256, 128], min_length=1,
                              description="hidden widths: 784 -> 256 -> 128 -> 10")
    epochs: int = Field(10, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    seed: int = 0
    device: str = "auto"
    train_limit: int | None = Field(None, gt=0)

    @field_validator("batch_sizes", "hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x <= 0 for x in v):
            raise ValueError(f"every value must be > 0 (got {v})")
        return v


Q4_EXPORT_KEY = "uploads/q4-yolo/roboflow-export.zip"


class Q4YoloConfig(Config):
    """Q4: ultralytics YOLO detection, one training per model, evaluated on the valid split.

    ``full`` is the SPEC's setup (pretrained YOLOv5s and YOLOv5x, 100 epochs at 416 px on
    the Roboflow export given as ``data.location``); ``smoke`` trains small models from their
    yaml on generated shapes. Any ultralytics model name works in ``models`` (a ``.yaml``
    trains from scratch, a ``.pt`` starts from pretrained weights found via
    ``weights_mirror``, the cache, or a download).
    """

    data: YoloDataConfig = Field(default_factory=lambda: YoloDataConfig(source="generate"))
    models: list[str] = Field(["yolov5s.pt", "yolov5x.pt"], min_length=1)
    weights_mirror: str | None = Field(None, description="folder or store:PREFIX holding .pt files")
    epochs: int = Field(100, gt=0)
    imgsz: int = Field(416, ge=32)
    batch: int = Field(16, gt=0)
    nbs: int = Field(64, gt=0)
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
    amp: bool = True
    plots: bool = True
    checkpoint_every: int = Field(5, gt=0)
    train_args: dict[str, Any] = Field(default_factory=dict)
    eval_batch: int = Field(16, gt=0)
    conf: float = Field(0.25, gt=0, lt=1)
    samples: int = Field(6, ge=0, le=32)

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"models must be distinct (got {v})")
        return v


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "q1-mlp": {
        "smoke": {"data": {"source": "generate", "n_train": 3000, "n_test": 1000},
                  "epochs": 3, "device": "cpu"},
        "full": {"data": {"source": "download"}, "epochs": 10},
    },
    "q4-yolo": {
        # Sized to learn the generated shapes in about a minute of CPU per model: 96 px
        # images, no mosaic (it shrinks objects), an optimizer step every batch (nbs=batch).
        "smoke": {"data": {"source": "generate", "n_train": 160, "n_valid": 30,
                           "image_size": 96, "max_objects": 3},
                  "models": ["yolov5n.yaml", "yolov5s.yaml"], "epochs": 6, "imgsz": 96,
                  "batch": 8, "nbs": 8, "optimizer": "AdamW", "lr0": 0.003,
                  "warmup_epochs": 0.5, "mosaic": 0.0, "close_mosaic": 0, "device": "cpu",
                  "workers": 0, "plots": False, "checkpoint_every": 3, "samples": 4},
        # full: the Roboflow export, by default from this store key (upload it there, or
        # pass --set data.location=PATH|URL|store:KEY)
        "full": {"data": {"source": "export", "location": "store:" + Q4_EXPORT_KEY},
                 "models": ["yolov5s.pt", "yolov5x.pt"], "epochs": 100, "imgsz": 416},
    },
}

FLOW_CONFIGS: dict[str, type[Config]] = {"q1-mlp": Q1MlpConfig, "q4-yolo": Q4YoloConfig}


def resolve_config(flow: str, profile: str, overrides: dict[str, Any] | None = None) -> Config:
    """Class defaults, then the profile, then the user's overrides; validated."""
    if flow not in FLOW_CONFIGS:
        raise ConfigError(f"unknown flow {flow!r}; known: {', '.join(sorted(FLOW_CONFIGS))}")
    profiles = PROFILES[flow]
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r} for {flow}; use one of: "
                          f"{', '.join(profiles)}")
    merged = deep_merge(profiles[profile], overrides or {})
    return validate(FLOW_CONFIGS[flow], merged, what=f"{flow} ({profile} profile)")


def q1_mlp_cells(cfg: Q1MlpConfig) -> tuple[dict[str, dict], list[dict]]:
    """Plan the Q1-MLP sweeps: unique training cells and the groups that show them.

    Returns ``(cells, groups)``: ``cells`` maps a cell id (``b64-relu-cross_entropy``) to the
    train-config fields that define it; each group is ``{"key", "title", "runs": [(name,
    value, cell_id)]}``.
    """
    common = {"model": "mlp", "hidden": list(cfg.hidden), "epochs": cfg.epochs,
              "learning_rate": cfg.learning_rate, "optimizer": cfg.optimizer, "seed": cfg.seed,
              "device": cfg.device, "train_limit": cfg.train_limit}
    cells: dict[str, dict] = {}

    def cell(bs: int, act: str, loss: str) -> str:
        cid = f"b{bs}-{act}-{loss}"
        cells.setdefault(cid, {**common, "batch_size": bs, "activation": act, "loss": loss})
        return cid

    groups = [
        {"key": "batch_size", "title": "(a) Mini-batch size sweep",
         "runs": [(f"batch {b}", b, cell(b, cfg.activation, cfg.loss)) for b in cfg.batch_sizes]},
        {"key": "activation", "title": "(b) Activation sweep",
         "runs": [(a, a, cell(cfg.batch_size, a, cfg.loss)) for a in cfg.activations]},
        {"key": "loss", "title": "(b) Loss sweep",
         "runs": [(lo, lo, cell(cfg.batch_size, cfg.activation, lo)) for lo in cfg.losses]},
    ]
    return cells, groups
