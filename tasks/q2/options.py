"""The configs of Q2's transfer tasks (``transfer.explore``, ``transfer.weights``,
``transfer.train``, ``transfer.finetune``), the options the flow config inherits, and the
architectures' table. Apart from :mod:`tasks.q2.transfer` so that a flow's config is
checked without importing torch (a typo in ``--set`` is answered at once).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tasks.core.config import Config, like
from tasks.inputs.weights import torchvision_spec

Arch = Literal["resnet18", "vgg16"]
NUM_CLASSES = 10
ARCHS: dict[str, dict[str, Any]] = {
    "resnet18": {"weights": "ResNet18_Weights.IMAGENET1K_V1", "head": "fc", "in": 512,
                 "total_params": 11_689_512, "label": "ResNet18"},
    "vgg16": {"weights": "VGG16_Weights.IMAGENET1K_V1", "head": "classifier.6", "in": 4096,
              "total_params": 138_357_544, "label": "VGG16"},
}


def head_params(arch: str, num_classes: int = NUM_CLASSES) -> int:
    """Parameters of the new last layer: in_features * classes + classes."""
    return ARCHS[arch]["in"] * num_classes + num_classes


def weights_spec(arch: str):
    """The published ImageNet checkpoint of ``arch`` (torchvision's URL and file name)."""
    return torchvision_spec(ARCHS[arch]["weights"], questions=("q2-transfer",))


# ---------------------------------------------------------------- configs

class ExploreConfig(Config):
    """Normalisation statistics, histogram and labelled sample grid of the training set."""

    out: str
    data: str = Field(description="store prefix of the stl10.fetch run")
    samples: int = Field(16, ge=1, le=100)
    seed: int = 0
    bins: int = Field(100, ge=10, le=1000)


class TrainOptions(Config):
    """How a head is trained on a frozen backbone; the Q2 flow config inherits these."""

    pretrained: bool = Field(True, description="false: random init, said in every manifest")
    weights_mirror: str | None = Field(
        None, description="a .pth file, or a local folder or store prefix holding "
                          "torchvision's .pth files")
    image_size: int = Field(96, ge=48, le=512,
                            description="images are resized to this (STL10 is 96x96)")
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(32, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    augment: bool = Field(False, description="random horizontal flip of training images; "
                                             "features are then recomputed every epoch")
    feature_batch_size: int = Field(128, gt=0)
    seed: int = 0
    device: str = "auto"
    train_limit: int | None = Field(None, gt=0)
    test_limit: int | None = Field(None, gt=0)


class TrainConfig(TrainOptions):
    """One frozen-backbone transfer run (one architecture)."""

    out: str
    data: str = Field(description="store prefix of the stl10.fetch run")
    arch: Arch


class WeightsConfig(Config):
    """Resolve the ImageNet checkpoints of ``archs`` (or record that none are used)."""

    out: str
    archs: list[Arch] = Field(["resnet18", "vgg16"], min_length=1)
    pretrained: bool = like(TrainOptions, "pretrained")
    weights_mirror: str | None = like(TrainOptions, "weights_mirror")


class FinetuneConfig(Config):
    """The 5x5 prediction grid and the fine-tuning of every layer on its misclassified images."""

    out: str
    train: str = Field(description="store prefix of the transfer.train run")
    grid_size: int = Field(25, ge=1, le=100)
    grid_seed: int = 0
    epochs: int = Field(5, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    eval_test: bool = Field(True, description="also report test accuracy after fine-tuning")
    device: str = "auto"
