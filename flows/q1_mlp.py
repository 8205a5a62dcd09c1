"""Flow ``q1-mlp``: fetch Fashion-MNIST -> train each sweep cell -> evaluate -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.classifier_sweep import run_classifier_sweep
from tasks.plans import resolve_config
from tasks.q1 import plan
from tasks.q1.plan import Q1MlpConfig, q1_mlp_cells

FLOW = "q1-mlp"


@flow(name=FLOW, log_prints=True)
def q1_mlp(profile: str = "smoke", store: str | None = None,
           overrides: dict[str, Any] | None = None, launcher: str = "local",
           run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q1-MLP on Fashion-MNIST: batch-size, activation and loss sweeps, metrics and report."""
    cfg: Q1MlpConfig = resolve_config(FLOW, profile, overrides)  # type: ignore[assignment]
    cells, groups = q1_mlp_cells(cfg)
    intro = [f"Network: 784 -> {' -> '.join(map(str, cfg.hidden))} -> 10, {cfg.optimizer} "
             f"(lr {cfg.learning_rate}), {cfg.epochs} epochs, seed {cfg.seed}. The activation "
             f"and loss sweeps hold batch size {cfg.batch_size}; the batch sweep holds "
             f"{cfg.activation} + {cfg.loss}. MSE is computed between softmax(logits) and "
             "one-hot targets; CrossEntropy on the logits. Compute time is the wall-clock "
             "time of the training epochs (evaluation excluded)."]
    return run_classifier_sweep(
        FLOW, cfg, cells, groups, profile=profile, store=store, launcher=launcher,
        run_id=run_id, title="Q1-MLP: fully connected classifier on Fashion-MNIST",
        intro=intro, eval_fields=plan.eval_fields(cfg), primary="test/accuracy", refresh=refresh)
