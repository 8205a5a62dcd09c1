"""Q1's flow-level plan: the configs of ``q1-mlp`` and ``q1-cnn``, their profiles, the sweep
cells and groups, and the task configs the flows send (pure data, no Prefect).

Both flow configs inherit :class:`tasks.q1.options.TrainOptions`, so every training setting
a cell shares is a flow key with its default defined once; a flow states only its own
experiment's choices (Q1-CNN: batch 32, flips, normalisation, a dev split).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tasks.core.config import Config, like
from tasks.core.promote import RegressionOptions
from tasks.core.resources import Resources, ResourceTable, on_cpu, parallel_field, resources_field
from tasks.inputs.mirror_index import Entry, dataset_name
from tasks.q1 import data as fmnist
from tasks.q1.data import FetchConfig
from tasks.q1.options import DEFAULT_HIDDEN, EvalConfig, TrainConfig, TrainOptions

QUESTIONS = fmnist.QUESTIONS
Activation = Literal["relu", "tanh", "sigmoid"]
Loss = Literal["cross_entropy", "mse"]
# Task-config fields the plan sets itself (store prefixes and what the sweep varies).
WIRED = {"classifier.train": {"out", "data", "model", "hidden", "activation", "loss",
                              "dropout", "batch_size"},
         "classifier.evaluate": {"out", "train"}}
# What each step needs (tasks.core.resources): a Q1 cell is small, so four share a GPU.
RESOURCES = ResourceTable(
    fetch=Resources(cpus=1, memory="2g", scratch="2g", time_limit_s=3 * 3600),
    train=Resources(cpus=2, memory="4g", gpus=0.25, shm="1g", scratch="2g",
                    time_limit_s=2 * 3600),
    evaluate=Resources(cpus=1, memory="2g", gpus=0.25, shm="1g", scratch="2g",
                       time_limit_s=3600),
    flow_time_limit_s=12 * 3600)
STEP_KINDS = {"fashion-mnist.fetch": "fetch", "classifier.train": "train",
              "classifier.evaluate": "evaluate", "classifier.report": "report",
              "model.promote": "report", "report.compare": "report"}
# flow key -> task field where the names differ (nested keys dotted)
RENAMED = {"classifier.evaluate": {"split": "eval.split", "checkpoint": "eval.checkpoint",
                                   "batch_size": "eval.batch_size"}}


class EvalOptions(Config):
    """The final evaluation of each cell (``classifier.evaluate``); its device is the flow's.

    Evaluation runs on the last checkpoint, on the test split, in batches of 1000.
    """

    split: Literal["test", "dev"] = like(EvalConfig, "split")
    checkpoint: Literal["last", "best"] = like(EvalConfig, "checkpoint")
    batch_size: int = like(EvalConfig, "batch_size")


class Q1MlpConfig(TrainOptions, RegressionOptions):
    """Q1-MLP: batch-size, activation and loss sweeps of one fully connected net.

    Each sweep varies one key and holds the others at ``batch_size`` / ``activation`` /
    ``loss``; a cell shared by two sweeps is trained once.
    """

    data: FetchConfig = FetchConfig()
    batch_sizes: list[int] = Field([32, 64, 256], min_length=1)
    activations: list[Activation] = Field(["relu", "tanh", "sigmoid"], min_length=1)
    losses: list[Loss] = Field(["cross_entropy", "mse"], min_length=1)
    batch_size: int = like(TrainConfig, "batch_size",
                           description="batch size of the activation and loss sweeps")
    activation: Activation = like(TrainConfig, "activation")
    loss: Loss = like(TrainConfig, "loss")
    hidden: list[int] = Field(list(DEFAULT_HIDDEN), min_length=1,
                              description="hidden widths: 784 -> 256 -> 128 -> 10")
    dropout: float = like(TrainConfig, "dropout")
    repeats: int = Field(1, ge=1, le=20, description="seeds per cell (seed, seed+1, ...)")
    parallel: int = parallel_field("sweep cells")
    eval: EvalOptions = Field(default_factory=lambda: EvalOptions(),
                              description="the final evaluation of every cell")
    resources: ResourceTable = resources_field(RESOURCES)

    @field_validator("batch_sizes", "hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x <= 0 for x in v):
            raise ValueError(f"every value must be > 0 (got {v})")
        return v


class Q1CnnConfig(TrainOptions, RegressionOptions):
    """Q1-CNN: (c) no pooling vs (d) max-pooling + BatchNorm, and (e) a dropout sweep on (d).

    The architecture comparison uses ``dropout`` (default 0); the sweep varies it over
    ``dropouts``. A cell shared by both (same dropout) is trained once.
    """

    data: FetchConfig = FetchConfig()
    dropouts: list[float] = Field([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], min_length=1)
    dropout: float = like(TrainConfig, "dropout", description="dropout of (c) and (d)")
    batch_size: int = like(TrainConfig, "batch_size", default=32)
    # the CNN experiment's own choices (SPEC Q1 (c)-(e)): flips and normalisation of the
    # original report's transforms, a 6,000 / 4,000 dev/test split of the test set
    normalize: bool = like(TrainOptions, "normalize", default=True)
    hflip: bool = like(TrainOptions, "hflip", default=True)
    dev_fraction: float = like(TrainOptions, "dev_fraction", default=0.6,
                               description="share of the 10k test set used as dev (6,000)")
    # speed options, measured by bench/q1_options.py (bench/README.md). channels_last: one
    # (d) epoch 0.78x, (c) 1.07x on CPU; the sweep is 6 (d) cells to 1 (c): 0.86x overall.
    # bf16 is faster (0.73x) but costs accuracy on (c), compile does not pay on CPU: off.
    channels_last: bool = like(TrainOptions, "channels_last", default=True)
    repeats: int = Field(1, ge=1, le=20, description="seeds per cell (seed, seed+1, ...)")
    block_order: Literal["bn_relu_pool", "pool_bn_relu"] = Field(
        "bn_relu_pool", description="the blocks of (d) and the dropout sweep: conv, "
        "BatchNorm, ReLU, max-pool (SPEC.md; cells `cnn_pool_bn-d<rate>`) or conv, max-pool, "
        "BatchNorm, ReLU (the original report's; cells `cnn_pool_first-d<rate>`)")
    parallel: int = parallel_field("sweep cells")
    eval: EvalOptions = Field(default_factory=lambda: EvalOptions(),
                              description="the final evaluation of every cell")
    resources: ResourceTable = resources_field(RESOURCES)

    @field_validator("dropouts")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= x < 1.0 for x in v):
            raise ValueError(f"every dropout rate must be in [0, 1) (got {v})")
        return v


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "q1-mlp": {
        "smoke": {"data": {"source": "generate", "n_train": 3000, "n_test": 1000},
                  "epochs": 3, "device": "cpu", "resources": on_cpu(RESOURCES)},
        "full": {"data": {"source": "download"}, "epochs": 10, "repeats": 3},
    },
    "q1-cnn": {
        "smoke": {"data": {"source": "generate", "n_train": 2000, "n_test": 1000},
                  "epochs": 2, "batch_size": 64, "device": "cpu",
                  "resources": on_cpu(RESOURCES)},
        "full": {"data": {"source": "download"}, "epochs": 10, "repeats": 3},
    },
}


def _common(cfg: TrainOptions) -> dict[str, Any]:
    """The training fields every cell shares, straight from the flow config."""
    return cfg.model_dump(mode="json", include=set(TrainOptions.model_fields))


def q1_mlp_cells(cfg: Q1MlpConfig) -> tuple[dict[str, dict], list[dict]]:
    """Plan the Q1-MLP sweeps: unique training cells and the groups that show them.

    Returns ``(cells, groups)``: ``cells`` maps a cell id (``b64-relu-cross_entropy``) to the
    train-config fields that define it; each group is ``{"key", "title", "runs": [(name,
    value, cell_id)]}``.
    """
    common = {**_common(cfg), "model": "mlp", "hidden": list(cfg.hidden),
              "dropout": cfg.dropout}
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


# the model of (d) and the dropout sweep, by ``block_order``
POOLED_MODEL = {"bn_relu_pool": "cnn_pool_bn", "pool_bn_relu": "cnn_pool_first"}


def q1_cnn_cells(cfg: Q1CnnConfig) -> tuple[dict[str, dict], list[dict]]:
    """Plan Q1-CNN: (c) and (d) at ``dropout``, then (d) at every rate in ``dropouts``.

    Same return shape as ``q1_mlp_cells``. Both groups select by dev accuracy.
    """
    common = {**_common(cfg), "batch_size": cfg.batch_size}
    cells: dict[str, dict] = {}
    pooled = POOLED_MODEL[cfg.block_order]

    def cell(model: str, dropout: float) -> str:
        cid = f"{model}-d{dropout:g}"
        cells.setdefault(cid, {**common, "model": model, "dropout": dropout})
        return cid

    groups = [
        {"key": "model", "title": "(c) No pooling vs (d) max-pooling + BatchNorm",
         "select_by": "dev/accuracy",
         "runs": [("(c) no pooling", "cnn", cell("cnn", cfg.dropout)),
                  ("(d) max-pool + BN", pooled, cell(pooled, cfg.dropout))]},
        {"key": "dropout", "title": "(e) Dropout sweep on the fully connected layers of (d)",
         "select_by": "dev/accuracy", "numeric": True,
         "runs": [(f"dropout {d:g}", d, cell(pooled, d)) for d in cfg.dropouts]},
    ]
    add_repeats(cells, groups, cfg.repeats)
    return cells, groups


def eval_fields(cfg: Q1MlpConfig | Q1CnnConfig) -> dict[str, Any]:
    """The ``classifier.evaluate`` config of every cell, but its ``out`` and ``train``."""
    return {**cfg.eval.model_dump(mode="json"), "device": cfg.device}


def mirror_entries() -> list[Entry]:
    """What ``visionflows mirror`` stores for Q1: Fashion-MNIST's four published files."""
    import urllib.parse

    from torchvision.datasets import FashionMNIST

    base = FashionMNIST.mirrors[0]
    return [Entry(dataset_name(fmnist.DATASET, filename), urllib.parse.urljoin(base, filename),
                  QUESTIONS, f"Fashion-MNIST {filename}", md5=fmnist.MD5[filename])
            for filename in fmnist.FILES.values()]


# --- what the flows report: the report's prose, the summary rows and their metric names

PRIMARY = {"q1-mlp": "test/accuracy", "q1-cnn": "dev/accuracy"}  # picks the champion


def mlp_intro(cfg: Q1MlpConfig) -> list[str]:
    """Q1-MLP's report opening: the network and the sweeps' fixed settings."""
    return [f"Network: 784 -> {' -> '.join(map(str, cfg.hidden))} -> 10, {cfg.optimizer} "
            f"(lr {cfg.learning_rate}), {cfg.epochs} epochs, seed {cfg.seed}. The activation "
            f"and loss sweeps hold batch size {cfg.batch_size}; the batch sweep holds "
            f"{cfg.activation} + {cfg.loss}. MSE is computed between softmax(logits) and "
            "one-hot targets; CrossEntropy on the logits. Compute time is the wall-clock "
            "time of the training epochs (evaluation excluded)."]


def cnn_intro(cfg: Q1CnnConfig) -> list[str]:
    """Q1-CNN's report opening: transforms, the dev/test split and the training settings."""
    return [
        "Transforms: ToTensor, RandomHorizontalFlip(p=0.5) on training batches only (flipping "
        "evaluation images would only add noise to the measurement), Normalize(0.5, 0.5); "
        "applied to whole batches on the device.",
        f"The test set is split into dev ({cfg.dev_fraction:.0%}) and test with fixed seed "
        f"{cfg.split_seed}; the dropout rate is chosen by final dev accuracy and test accuracy "
        f"is reported for the chosen model. {cfg.optimizer} (lr {cfg.learning_rate}), batch "
        f"{cfg.batch_size}, {cfg.epochs} epochs, seed {cfg.seed}. Dropout applies to the fully "
        "connected layers only. (d) at dropout "
        f"{cfg.dropout:g} is the same training run as the sweep's cell at that rate.",
    ]


def summary_rows(cells: dict[str, dict], trained: dict[str, dict],
                 evaluated: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per cell (the flow's metrics table): its evaluation, dev and time metrics."""
    return [{"experiment": cid,
             **{k: round(v, 4) for k, v in evaluated[cid]["metrics"].items()
                if isinstance(v, float)},
             **{k: round(v, 4) for k, v in trained[cid]["metrics"].items()
                if k.startswith("dev/") or k == "best/dev/accuracy"},
             "train_time_s": round(trained[cid]["metrics"]["train/time_s"], 2)}
            for cid in cells]


def summary_md(groups: list[dict[str, Any]]) -> str:
    return "\n".join(f"- {g['key']}: best {g.get('best')!r} by {g['select_by']}"
                     for g in groups)
