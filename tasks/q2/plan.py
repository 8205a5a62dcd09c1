"""Q2's flow-level plan: the ``q2-transfer`` config, its profiles, and the task configs the
flow sends (pure data, no Prefect).

The flow config inherits :class:`tasks.q2.options.TrainOptions` (how each head trains) and
states the other steps' settings with their task fields' own defaults and checks
(``like``), so each default lives once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from tasks.core.config import distinct, like
from tasks.core.promote import RegressionOptions
from tasks.core.resources import Resources, ResourceTable, on_cpu, parallel_field, resources_field
from tasks.inputs.mirror_index import Entry, dataset_name
from tasks.q2 import data as stl10
from tasks.q2.data import FetchConfig
from tasks.q2.options import ExploreConfig, FinetuneConfig, TrainOptions, weights_spec

WIRED = {"transfer.weights": {"out", "archs"},
         "transfer.explore": {"out", "data"},
         "transfer.train": {"out", "data", "arch"},
         "transfer.finetune": {"out", "train"}}
# flow key -> task field, where the names differ
RENAMED = {"transfer.finetune": {"epochs": "finetune_epochs", "learning_rate": "finetune_lr",
                                 "eval_test": "finetune_eval_test"},
           "transfer.explore": {"bins": "histogram_bins"}}


# What each step needs (tasks.core.resources): VGG16 wants a GPU of its own.
RESOURCES = ResourceTable(
    # STL10's 2.6 GB archive and its extracted arrays, the VGG16/ResNet weights
    fetch=Resources(cpus=2, memory="8g", scratch="12g", time_limit_s=3 * 3600),
    train=Resources(cpus=4, memory="16g", gpus=1, shm="4g", scratch="8g",
                    time_limit_s=4 * 3600),
    evaluate=Resources(cpus=4, memory="16g", gpus=1, shm="4g", scratch="8g",
                       time_limit_s=3600),
    report=Resources(cpus=2, memory="8g", time_limit_s=3600))
STEP_KINDS = {"transfer.weights": "fetch", "stl10.fetch": "fetch", "transfer.explore": "report",
              "transfer.train": "train", "transfer.finetune": "train",
              "transfer.report": "report", "model.promote": "report",
              "report.compare": "report"}


class Q2TransferConfig(TrainOptions, RegressionOptions):
    """Q2: ResNet18 and VGG16 with frozen ImageNet backbones and a new 10-class head on STL10.

    ``pretrained`` must be said: ``true`` resolves the ImageNet weights (``weights_mirror``,
    then the store's mirror index, the torch hub cache, a download) and fails if it cannot;
    ``false`` trains on a random backbone and every manifest and the report say so.
    """

    data: FetchConfig = FetchConfig()
    models: Annotated[list[Literal["resnet18", "vgg16"]], AfterValidator(distinct)] = Field(
        ["resnet18", "vgg16"], min_length=1)
    samples: int = like(ExploreConfig, "samples",
                        description="images in the labelled sample grid")
    histogram_bins: int = like(ExploreConfig, "bins")
    grid_size: int = like(FinetuneConfig, "grid_size",
                          description="test images in the prediction grid")
    grid_seed: int = like(FinetuneConfig, "grid_seed")
    finetune_epochs: int = like(FinetuneConfig, "epochs")
    finetune_lr: float = like(FinetuneConfig, "learning_rate")
    finetune_eval_test: bool = like(FinetuneConfig, "eval_test")
    parallel: int = parallel_field("models")
    resources: ResourceTable = resources_field(RESOURCES)


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "q2-transfer": {
        # small images and few samples keep VGG16 fast on a CPU; a random backbone, said so;
        # its features are weak, so the head takes larger steps to show learning in 3 epochs
        "smoke": {"data": {"source": "generate", "n_train": 200, "n_test": 100},
                  "pretrained": False, "image_size": 48, "epochs": 3, "learning_rate": 0.01,
                  "finetune_eval_test": False, "device": "cpu",
                  "resources": on_cpu(RESOURCES)},
        "full": {"data": {"source": "download"}, "pretrained": True, "image_size": 96,
                 "epochs": 10, "batch_size": 32},
    },
}


def weights_config(cfg: Q2TransferConfig, out: str) -> dict[str, Any]:
    """``transfer.weights``: every model's checkpoint, resolved before anything expensive."""
    return {"out": out, "archs": list(cfg.models), "pretrained": cfg.pretrained,
            "weights_mirror": cfg.weights_mirror}


def explore_config(cfg: Q2TransferConfig, out: str, data: str) -> dict[str, Any]:
    return {"out": out, "data": data, "samples": cfg.samples, "seed": cfg.seed,
            "bins": cfg.histogram_bins}


def train_config(cfg: Q2TransferConfig, arch: str, out: str, data: str) -> dict[str, Any]:
    """``transfer.train`` of one architecture: the flow's training options as they are."""
    return {**cfg.model_dump(mode="json", include=set(TrainOptions.model_fields)),
            "out": out, "data": data, "arch": arch}


def finetune_config(cfg: Q2TransferConfig, out: str, train: str) -> dict[str, Any]:
    return {"out": out, "train": train, "grid_size": cfg.grid_size,
            "grid_seed": cfg.grid_seed, "epochs": cfg.finetune_epochs,
            "learning_rate": cfg.finetune_lr, "eval_test": cfg.finetune_eval_test,
            "device": cfg.device}


def mirror_entries() -> list[Entry]:
    """What ``visionflows mirror`` stores for Q2: the STL10 archive and the full profile's
    ImageNet weights."""
    from torchvision.datasets import STL10

    entries = [Entry(dataset_name(stl10.DATASET, stl10.TGZ), STL10.url, stl10.QUESTIONS,
                     "STL10 binary archive", md5=stl10.TGZ_MD5)]
    full = Q2TransferConfig.model_validate(PROFILES["q2-transfer"]["full"])
    for arch in full.models:
        entries.append(weights_spec(arch).mirror_entry())
    return entries


# --- what the flow reports: the report's prose, the summary rows and their metric names

PRIMARY = "test/accuracy"  # what picks the best model and the champion
FINETUNE_KEYS = ("misclassified", "fixed", "broken", "finetune/accuracy_per_epoch",
                 "test/accuracy_after")


def report_intro(cfg: Q2TransferConfig, data: dict[str, Any]) -> list[str]:
    """The report's opening paragraphs: the setup of this run, from its config."""
    weights_note = ("ImageNet weights (torchvision IMAGENET1K_V1)" if cfg.pretrained else
                    "**random initialisation (pretrained: false)**")
    return [
        f"Backbones: {weights_note}, every layer frozen and run in eval mode (BatchNorm "
        "keeps its stored statistics instead of batch ones), features computed without "
        "autograd. New head: "
        f"Linear(-> 10), {cfg.optimizer} (lr {cfg.learning_rate}), batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs, images at {cfg.image_size} px, horizontal flips "
        f"{'on' if cfg.augment else 'off'}, seed {cfg.seed}. Fine-tuning: every layer "
        f"unfrozen, {cfg.optimizer} (lr {cfg.finetune_lr}), {cfg.finetune_epochs} epochs "
        f"on the misclassified images of a {cfg.grid_size}-image grid (seed "
        f"{cfg.grid_seed}). The reference's optimiser and learning rate are not printed; "
        "these are our choices.",
        f"Dataset: {data['prefix']} ({data['inputs'].get('source', '?')})."]


def summary_rows(cfg: Q2TransferConfig, trained: dict[str, dict],
                 tuned: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per model (the flow's metrics table), from the train and fine-tune
    manifests."""
    rows = []
    for arch in cfg.models:
        m, f = trained[arch]["metrics"], tuned[arch]["metrics"]
        rows.append({"model": arch, "test_accuracy": round(m["test/accuracy"], 4),
                     "best_test_accuracy": round(m["best/test/accuracy"], 4),
                     "trainable_params": m["trainable_params"],
                     "total_params_imagenet": m["total_params_imagenet"],
                     "features_time_s": round(m["features/cache_time_s"], 2),
                     "head_time_s": round(m["train/time_s"], 2),
                     "misclassified": f["misclassified"], "fixed": f["fixed"]})
    return rows


def summary_md(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"- {r['model']}: test accuracy {r['test_accuracy']:.4f}, fine-tuning fixed "
        f"{r['fixed']} of {r['misclassified']}" for r in rows)
