"""The configs of Q1's classifier tasks (``classifier.train``, ``classifier.evaluate``) and
the training options every sweep cell shares. Apart from :mod:`tasks.q1.train` so that a
flow's config is checked without importing torch: a typo in ``--set`` is answered in a
fraction of a second, and the parent of ``subprocess`` or container tasks never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tasks.core.config import Config

if TYPE_CHECKING:
    import torch

DEFAULT_HIDDEN = (256, 128)


class TrainOptions(Config):
    """Training settings every cell of a sweep shares; the Q1 flow configs inherit them, so
    each default lives here once (a flow may state its own experiment's value)."""

    epochs: int = Field(10, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    seed: int = 0
    device: str = "auto"
    normalize: bool = Field(False, description="Normalize(0.5, 0.5) after scaling to [0, 1]")
    hflip: bool = Field(False, description="random horizontal flip (p=0.5) on training batches")
    dev_fraction: float = Field(0.0, ge=0.0, lt=1.0,
                                description="share of the test set held out as dev (Q1-CNN: 0.6)")
    split_seed: int = 42
    train_limit: int | None = Field(None, gt=0, description="use only the first N train samples")
    checkpoint_every: int = Field(1, gt=0, description="store last.pt every N epochs")
    channels_last: bool = Field(False, description="NHWC memory format for CNNs")
    amp: Literal["off", "bf16"] = Field("off", description="bf16 autocast (GPU or CPU)")
    compile: bool = Field(False, description="torch.compile the model (CPU: did not pay)")
    pin_memory: bool = Field(False, description="CUDA: copy the uint8 splits to the device "
                             "from pinned memory, non-blocking")
    cudnn_benchmark: bool = Field(False, description="CUDA: cudnn autotuning of convolutions")
    cuda_graphs: bool = Field(False, description="CUDA: capture a training step as a CUDA "
                              "graph and replay it per batch (Adam becomes capturable); "
                              "ignored on CPU")


class TrainConfig(TrainOptions):
    """One classifier training run (one sweep cell)."""

    out: str = Field(description="store prefix for this run's outputs and manifest")
    data: str = Field(description="store prefix of the fetched dataset (its manifest)")
    model: Literal["mlp", "cnn", "cnn_pool_bn", "cnn_pool_first"] = "mlp"
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_size: int = Field(64, gt=0)

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype for ``torch.autocast`` (None: off); imports torch only when asked."""
        import torch

        return torch.bfloat16 if self.amp == "bf16" else None


class EvalConfig(Config):
    """Final evaluation of a trained classifier on one split."""

    out: str
    train: str = Field(description="store prefix of the classifier.train run")
    split: Literal["test", "dev"] = "test"
    checkpoint: Literal["last", "best"] = "last"
    batch_size: int = Field(1000, gt=0)
    device: str = "auto"
