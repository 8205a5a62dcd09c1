"""Flow ``q1-cnn``: (c) no pooling, (d) max-pooling + BatchNorm, (e) dropout sweep."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.classifier_sweep import run_classifier_sweep
from tasks.plans import resolve_config
from tasks.q1 import plan
from tasks.q1.plan import Q1CnnConfig, q1_cnn_cells

FLOW = "q1-cnn"


@flow(name=FLOW, log_prints=True)
def q1_cnn(profile: str = "smoke", store: str | None = None,
           overrides: dict[str, Any] | None = None, launcher: str = "local",
           run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q1-CNN on Fashion-MNIST with a 6,000 dev / 4,000 test split of the test set."""
    cfg: Q1CnnConfig = resolve_config(FLOW, profile, overrides)  # type: ignore[assignment]
    cells, groups = q1_cnn_cells(cfg)
    intro = [
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
    return run_classifier_sweep(
        FLOW, cfg, cells, groups, profile=profile, store=store, launcher=launcher,
        run_id=run_id, title="Q1-CNN: convolutional classifiers on Fashion-MNIST",
        intro=intro, eval_fields=plan.eval_fields(cfg), primary="dev/accuracy", refresh=refresh)
