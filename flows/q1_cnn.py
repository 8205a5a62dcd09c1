"""Flow ``q1-cnn``: (c) no pooling, (d) max-pooling + BatchNorm, (e) dropout sweep."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.classifier_sweep import run_classifier_sweep
from tasks.q1 import plan

FLOW = "q1-cnn"


@flow(name=FLOW, log_prints=True)
def q1_cnn(profile: str = "smoke", store: str | None = None,
           overrides: dict[str, Any] | None = None, launcher: str = "local",
           run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q1-CNN on Fashion-MNIST with a 6,000 dev / 4,000 test split of the test set."""
    return run_classifier_sweep(FLOW, profile, store, overrides, launcher, run_id, refresh,
                                cells_of=plan.q1_cnn_cells, intro_of=plan.cnn_intro)
