"""Flow ``q1-mlp``: fetch Fashion-MNIST -> train each sweep cell -> evaluate -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.classifier_sweep import run_classifier_sweep
from tasks.q1 import plan

FLOW = "q1-mlp"


@flow(name=FLOW, log_prints=True)
def q1_mlp(profile: str = "smoke", store: str | None = None,
           overrides: dict[str, Any] | None = None, launcher: str = "local",
           run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q1-MLP on Fashion-MNIST: batch-size, activation and loss sweeps, metrics and report."""
    return run_classifier_sweep(FLOW, profile, store, overrides, launcher, run_id, refresh,
                                cells_of=plan.q1_mlp_cells, intro_of=plan.mlp_intro)
