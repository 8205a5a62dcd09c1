"""Deployments: one per flow, named ``nightly``, with staggered cron schedules in UTC.

``prefect.yaml`` declares the same deployments for workers (``prefect deploy --all``);
``visionflows serve`` serves them from one process with no worker setup. A test keeps the
two in step.

Nightly runs of the questions with a champion set ``fail_on_regression``: a run worse than
the champion it was measured against (by more than ``regression_tolerance``) ends Failed,
with the comparison's location in the message, so Prefect notifications and automations
can fire on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEPLOYMENT = "nightly"
RAY_DEPLOYMENT = "nightly-ray"  # `visionflows serve --ray-address ADDRESS`: steps on that Ray
TIMEZONE = "UTC"


@dataclass(frozen=True)
class Nightly:
    flow: str
    cron: str
    description: str
    overrides: dict = field(default_factory=dict)  # the flow's `overrides` parameter


# Every nightly question run fails when it regresses against its champion (Q3 has none).
REGRESSION_SWITCH = {"fail_on_regression": True}


# Staggered so that runs on one GPU box do not overlap; the report comes last.
NIGHTLY: dict[str, Nightly] = {n.flow: n for n in (
    Nightly("q1-mlp", "0 1 * * *", "Q1-MLP sweeps on Fashion-MNIST", REGRESSION_SWITCH),
    Nightly("q1-cnn", "30 1 * * *", "Q1-CNN pooling/BN and dropout sweep on Fashion-MNIST",
            REGRESSION_SWITCH),
    Nightly("q2-transfer", "0 2 * * *", "Q2 transfer learning on STL10 (ResNet18, VGG16)",
            REGRESSION_SWITCH),
    Nightly("q3-segmentation", "0 3 * * *", "Q3 DeepLabV3 segmentation of the given images"),
    Nightly("q4-yolo", "30 3 * * *", "Q4 YOLOv5s vs YOLOv5x detection (ultralytics)",
            REGRESSION_SWITCH),
    Nightly("report", "0 6 * * *", "Final comparison report across every question"),
)}


def build_deployments(flows: list[str], parameters: dict, paused: bool = False,
                      ray_address: str | None = None):
    """``RunnerDeployment`` objects for ``prefect.serve``: ``nightly`` for each flow; with
    ``ray_address`` also ``nightly-ray`` for each question, its flow runs with the Ray task
    runner on that cluster (same schedule, started paused: one of the two should run)."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.registry import load_flow

    if ray_address:
        from flows.runners import address_host, require_ray

        address_host(ray_address)  # its form: ray://HOST:10001, HOST:6379 or auto
        require_ray()
        # the served runs (processes of this one) find their cluster here (flows.ray_runner)
        os.environ["VF_RAY_ADDRESS"] = ray_address
    out = []
    for name in flows:
        spec = NIGHTLY[name]
        params = parameters if name != "report" else {
            k: v for k, v in parameters.items() if k == "store"}
        if spec.overrides:
            params = {**params, "overrides": {**spec.overrides,
                                              **(params.get("overrides") or {})}}
        schedule = CronSchedule(cron=spec.cron, timezone=TIMEZONE)
        out.append(load_flow(name).to_deployment(
            name=DEPLOYMENT, description=spec.description, parameters=params,
            schedules=[schedule], paused=paused, tags=["visionflows", name]))
        if ray_address and name != "report":
            from prefect.deployments.runner import RunnerDeployment

            from flows.ray_runner import entrypoint

            out.append(RunnerDeployment.from_entrypoint(
                entrypoint(name), name=RAY_DEPLOYMENT, description=f"{spec.description}, "
                f"steps on the Ray cluster at {ray_address}", parameters=params,
                schedules=[schedule], paused=True, tags=["visionflows", name, "ray"]))
    return out
