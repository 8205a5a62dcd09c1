"""Deployments: one per flow, named ``nightly``, with staggered cron schedules in UTC (each
question's from its descriptor, ``tasks.core.descriptor.Nightly``).

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
from typing import Any

from tasks.questions import question_flows

DEPLOYMENT = "nightly"
RAY_DEPLOYMENT = "nightly-ray"  # `visionflows serve --ray-address ADDRESS`: steps on that Ray
TIMEZONE = "UTC"


@dataclass(frozen=True)
class Nightly:
    flow: str
    cron: str
    description: str
    overrides: dict = field(default_factory=dict)  # the flow's `overrides` parameter


# The final report comes last, after every question's run.
REPORT_NIGHTLY = Nightly("report", "0 6 * * *", "Final comparison report across every question")


def nightly() -> dict[str, Nightly]:
    """Every flow's nightly deployment, the questions' (staggered so that runs on one GPU
    box do not overlap) then the report's."""
    out = {name: Nightly(name, f.nightly.cron, f.nightly.description, dict(f.nightly.overrides))
           for name, f in question_flows().items()}
    return {**out, "report": REPORT_NIGHTLY}


def __getattr__(name: str) -> Any:
    if name == "NIGHTLY":
        return nightly()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    table = nightly()
    for name in flows:
        spec = table[name]
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
