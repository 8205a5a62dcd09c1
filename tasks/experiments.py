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
from tasks.data.stl10 import FetchConfig as Stl10FetchConfig
from tasks.data.yolo_export import YoloDataConfig
from tasks.errors import ConfigError
from tasks.images import PACKAGED_IMAGES
from tasks.segment import SegmentOptions

Activation = Literal["relu", "tanh", "sigmoid"]
Loss = Literal["cross_entropy", "mse"]
PARALLEL_HELP = ("sweep packing: train up to N cells at once on the device, each in its own "
                 "process with 1/N of the CPU threads (1: one after another)")


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
    repeats: int = Field(1, ge=1, le=20, description="seeds per cell (seed, seed+1, ...)")
    amp: Literal["off", "bf16"] = "off"
    compile: bool = False
    pin_memory: bool = False
    parallel: int = Field(1, ge=1, le=32, description=PARALLEL_HELP)

    @field_validator("batch_sizes", "hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x <= 0 for x in v):
            raise ValueError(f"every value must be > 0 (got {v})")
        return v


class Q1CnnConfig(Config):
    """Q1-CNN: (c) no pooling vs (d) max-pooling + BatchNorm, and (e) a dropout sweep on (d).

    The architecture comparison uses ``dropout`` (default 0); the sweep varies it over
    ``dropouts``. A cell shared by both (same dropout) is trained once.
    """

    data: FetchConfig = FetchConfig()
    dropouts: list[float] = Field([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], min_length=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout of (c) and (d)")
    batch_size: int = Field(32, gt=0)
    epochs: int = Field(10, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    seed: int = 0
    device: str = "auto"
    dev_fraction: float = Field(0.6, gt=0.0, lt=1.0,
                                description="share of the 10k test set used as dev (6,000)")
    split_seed: int = 42
    hflip: bool = True
    normalize: bool = True
    # speed options, measured by bench/q1_options.py (bench/README.md). channels_last: one
    # (d) epoch 0.78x, (c) 1.07x on CPU; the sweep is 6 (d) cells to 1 (c): 0.86x overall.
    # bf16 is faster (0.73x) but costs accuracy on (c), compile does not pay on CPU: off.
    channels_last: bool = True
    amp: Literal["off", "bf16"] = "off"
    compile: bool = False
    pin_memory: bool = False
    cudnn_benchmark: bool = False
    train_limit: int | None = Field(None, gt=0)
    repeats: int = Field(1, ge=1, le=20, description="seeds per cell (seed, seed+1, ...)")
    parallel: int = Field(1, ge=1, le=32, description=PARALLEL_HELP)

    @field_validator("dropouts")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x < 1.0 for x in v):
            raise ValueError(f"every dropout rate must be in [0, 1) (got {v})")
        return v


class Q3SegmentationConfig(SegmentOptions):
    """Q3: DeepLabV3 on any images (local paths, http(s) URLs, store keys, package files).

    The default inputs are real photos shipped inside installed packages. A rejected input
    (missing, not an image, truncated, too small ...) never loses the others' results; the
    run still fails at the end (CLI exit code 3) unless ``allow_rejected`` is true.
    """

    images: list[str] = Field(default_factory=lambda: list(PACKAGED_IMAGES), min_length=1)
    allow_rejected: bool = Field(False, description="true: rejected inputs do not fail the run")
    timeout_s: float = Field(30.0, gt=0, description="per-URL download time-out")
    max_download_mb: float = Field(50.0, gt=0, description="size cap of one input")

    @field_validator("images", mode="before")
    @classmethod
    def _one_image(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Q2TransferConfig(Config):
    """Q2: ResNet18 and VGG16 with frozen ImageNet backbones and a new 10-class head on STL10.

    ``pretrained`` must be said: ``true`` resolves the ImageNet weights (``weights_mirror``,
    then the torch hub cache, then a download) and fails if it cannot; ``false`` trains on a
    random backbone and every manifest and the report say so.
    """

    data: Stl10FetchConfig = Stl10FetchConfig()
    models: list[Literal["resnet18", "vgg16"]] = Field(["resnet18", "vgg16"], min_length=1)
    pretrained: bool = True
    weights_mirror: str | None = Field(
        None, description="a .pth file, or a local folder or store prefix holding "
                          "torchvision's .pth files")
    image_size: int = Field(96, ge=48, le=512, description="STL10 is 96x96; smaller is faster")
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(32, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    augment: bool = Field(False, description="random horizontal flips (features per epoch)")
    feature_batch_size: int = Field(128, gt=0)
    samples: int = Field(16, ge=1, le=100, description="images in the labelled sample grid")
    grid_size: int = Field(25, ge=1, le=100, description="test images in the prediction grid")
    grid_seed: int = 0
    finetune_epochs: int = Field(5, gt=0)
    finetune_lr: float = Field(1e-4, gt=0)
    finetune_eval_test: bool = Field(True, description="test accuracy after fine-tuning too")
    seed: int = 0
    device: str = "auto"

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each model at most once (got {v})")
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
        "full": {"data": {"source": "download"}, "epochs": 10, "repeats": 3},
    },
    "q1-cnn": {
        "smoke": {"data": {"source": "generate", "n_train": 2000, "n_test": 1000},
                  "epochs": 2, "batch_size": 64, "device": "cpu"},
        "full": {"data": {"source": "download"}, "epochs": 10, "repeats": 3},
    },
    "q3-segmentation": {
        # random weights at a small input size: the whole pipeline on CPU in seconds
        "smoke": {"pretrained": False, "resize_size": 64, "device": "cpu"},
        "full": {"pretrained": True},
    },
    "q2-transfer": {
        # small images and few samples keep VGG16 fast on a CPU; a random backbone, said so;
        # its features are weak, so the head takes larger steps to show learning in 3 epochs
        "smoke": {"data": {"source": "generate", "n_train": 200, "n_test": 100},
                  "pretrained": False, "image_size": 48, "epochs": 3, "learning_rate": 0.01,
                  "finetune_eval_test": False, "device": "cpu"},
        "full": {"data": {"source": "download"}, "pretrained": True, "image_size": 96,
                 "epochs": 10, "batch_size": 32},
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

FLOW_CONFIGS: dict[str, type[Config]] = {"q1-mlp": Q1MlpConfig, "q1-cnn": Q1CnnConfig,
                                         "q2-transfer": Q2TransferConfig,
                                         "q3-segmentation": Q3SegmentationConfig,
                                         "q4-yolo": Q4YoloConfig}


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
              "device": cfg.device, "train_limit": cfg.train_limit, "amp": cfg.amp,
              "compile": cfg.compile, "pin_memory": cfg.pin_memory}
    cells: dict[str, dict] = {}

    def cell(bs: int, act: str, loss: str) -> str:
        cid = f"b{bs}-{act}-{loss}"
        cells.setdefault(cid, {**common, "batch_size": bs, "activation": act, "loss": loss})
        return cid

    groups = [
        {"key": "batch_size", "title": "(a) Mini-batch size sweep", "select_by": "test/accuracy",
         "runs": [(f"batch {b}", b, cell(b, cfg.activation, cfg.loss)) for b in cfg.batch_sizes]},
        {"key": "activation", "title": "(b) Activation sweep", "select_by": "test/accuracy",
         "runs": [(a, a, cell(cfg.batch_size, a, cfg.loss)) for a in cfg.activations]},
        {"key": "loss", "title": "(b) Loss sweep", "select_by": "test/accuracy",
         "runs": [(lo, lo, cell(cfg.batch_size, cfg.activation, lo)) for lo in cfg.losses]},
    ]
    add_repeats(cells, groups, cfg.repeats)
    return cells, groups


def add_repeats(cells: dict[str, dict], groups: list[dict], repeats: int) -> None:
    """Add ``repeats - 1`` more seeds of every cell (``<cell>-seed<k>``, seed + k); each
    group gets ``repeats``: cell id -> the ids of its other seeds."""
    for cid in list(cells):
        for k in range(1, repeats):
            cells[f"{cid}-seed{k}"] = {**cells[cid], "seed": cells[cid]["seed"] + k}
    for g in groups:
        g["repeats"] = {cid: [f"{cid}-seed{k}" for k in range(1, repeats)]
                        for _, _, cid in g["runs"]}


def q1_cnn_cells(cfg: Q1CnnConfig) -> tuple[dict[str, dict], list[dict]]:
    """Plan Q1-CNN: (c) and (d) at ``dropout``, then (d) at every rate in ``dropouts``.

    Same return shape as ``q1_mlp_cells``. Both groups select by dev accuracy.
    """
    common = {"epochs": cfg.epochs, "learning_rate": cfg.learning_rate,
              "optimizer": cfg.optimizer, "seed": cfg.seed, "device": cfg.device,
              "batch_size": cfg.batch_size, "dev_fraction": cfg.dev_fraction,
              "split_seed": cfg.split_seed, "hflip": cfg.hflip, "normalize": cfg.normalize,
              "channels_last": cfg.channels_last, "amp": cfg.amp, "compile": cfg.compile,
              "pin_memory": cfg.pin_memory, "cudnn_benchmark": cfg.cudnn_benchmark,
              "train_limit": cfg.train_limit}
    cells: dict[str, dict] = {}

    def cell(model: str, dropout: float) -> str:
        cid = f"{model}-d{dropout:g}"
        cells.setdefault(cid, {**common, "model": model, "dropout": dropout})
        return cid

    groups = [
        {"key": "model", "title": "(c) No pooling vs (d) max-pooling + BatchNorm",
         "select_by": "dev/accuracy",
         "runs": [("(c) no pooling", "cnn", cell("cnn", cfg.dropout)),
                  ("(d) max-pool + BN", "cnn_pool_bn", cell("cnn_pool_bn", cfg.dropout))]},
        {"key": "dropout", "title": "(e) Dropout sweep on the fully connected layers of (d)",
         "select_by": "dev/accuracy", "numeric": True,
         "runs": [(f"dropout {d:g}", d, cell("cnn_pool_bn", d)) for d in cfg.dropouts]},
    ]
    add_repeats(cells, groups, cfg.repeats)
    return cells, groups
