"""Deployments: one per flow, named ``nightly``, with staggered cron schedules in UTC, and
what a flow run needs when it runs in a container or a Kubernetes pod of its own.

``prefect.yaml`` declares the same deployments for workers (``prefect deploy --all``):
``nightly`` on the process pool, ``nightly-docker`` on the docker pool and ``nightly-k8s``
on the Kubernetes pool, whose ``job_variables`` come from each question's resource table
(:func:`kubernetes_job_variables`, :func:`docker_job_variables`); ``visionflows serve``
serves the ``nightly`` ones from one process with no worker setup. Tests keep them in step.

    python -m flows.deployments job-variables q4-yolo --pool kubernetes   # print them
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

DEPLOYMENT = "nightly"
TIMEZONE = "UTC"
# The flow-run image of docker and Kubernetes deployments: the task image of the code being
# deployed, from the `image-ref` build step in prefect.yaml (python -m flows.launchers.images ref).
IMAGE_FROM_BUILD_STEP = "{{ image-ref.stdout }}"
GIB, MIB = 1 << 30, 1 << 20
# Tainted GPU nodes (GKE taints them so; many clusters do the same) admit GPU pods only.
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class Nightly:
    flow: str
    cron: str
    description: str


# Staggered so that runs on one GPU box do not overlap; the report comes last.
NIGHTLY: dict[str, Nightly] = {n.flow: n for n in (
    Nightly("q1-mlp", "0 1 * * *", "Q1-MLP sweeps on Fashion-MNIST"),
    Nightly("q1-cnn", "30 1 * * *", "Q1-CNN pooling/BN and dropout sweep on Fashion-MNIST"),
    Nightly("q2-transfer", "0 2 * * *", "Q2 transfer learning on STL10 (ResNet18, VGG16)"),
    Nightly("q3-segmentation", "0 3 * * *", "Q3 DeepLabV3 segmentation of the given images"),
    Nightly("q4-yolo", "30 3 * * *", "Q4 YOLOv5s vs YOLOv5x detection (ultralytics)"),
    Nightly("report", "0 6 * * *", "Final comparison report across every question"),
)}


def build_deployments(flows: list[str], parameters: dict, paused: bool = False):
    """``RunnerDeployment`` objects for ``prefect.serve``."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.registry import load_flow

    out = []
    for name in flows:
        spec = NIGHTLY[name]
        params = parameters if name != "report" else {
            k: v for k, v in parameters.items() if k == "store"}
        out.append(load_flow(name).to_deployment(
            name=DEPLOYMENT, description=spec.description, parameters=params,
            schedules=[CronSchedule(cron=spec.cron, timezone=TIMEZONE)], paused=paused,
            tags=["visionflows", name]))
    return out


@dataclass(frozen=True)
class FlowRunSize:
    """What one whole flow run needs in a pod or container of its own."""

    cpus: float
    memory_bytes: int
    gpus: int  # whole devices: a pod cannot ask for a share
    shm_bytes: int


def flow_run_size(flow: str, profile: str = "full") -> FlowRunSize:
    """The size of a pod (or container) that runs all of ``flow``'s steps, from its resource
    table under ``profile`` (``tasks/q<N>/plan.py``; ``report``: the default table's report
    kind).

    The steps run one after another, except a packed sweep (``parallel``: that many
    training or evaluation cells at once), so the pod needs the largest step kind, times
    ``parallel`` for ``train`` and ``evaluate``; GPU shares (Q1: a quarter of a GPU per cell)
    round up to whole devices.
    """
    from tasks.core.resources import KINDS, ResourceTable
    from tasks.plans import resolve_config

    if flow == "report":
        table, parallel, kinds = ResourceTable(), 1, ("report",)
    else:
        cfg = resolve_config(flow, profile)
        table, parallel, kinds = cfg.resources, getattr(cfg, "parallel", 1), KINDS
    steps = [(table.for_kind(k), parallel if k in ("train", "evaluate") else 1) for k in kinds]
    return FlowRunSize(
        cpus=max(r.cpus * n for r, n in steps),
        memory_bytes=max(r.memory_bytes * n for r, n in steps),
        gpus=math.ceil(round(max(r.gpus * n for r, n in steps), 6)),
        shm_bytes=max(r.shm_bytes * n for r, n in steps))


def cpu_quantity(cpus: float) -> str:
    """A Kubernetes CPU quantity: ``2`` or ``500m``."""
    return str(int(cpus)) if cpus == int(cpus) else f"{round(cpus * 1000)}m"


def memory_quantity(size: int) -> str:
    """A Kubernetes memory quantity in binary units: ``32Gi``, ``1536Mi``."""
    return f"{size // GIB}Gi" if size % GIB == 0 else f"{math.ceil(size / MIB)}Mi"


def docker_size(size: int) -> str:
    """A Docker size: ``32g``, ``1536m``."""
    return f"{size // GIB}g" if size % GIB == 0 else f"{math.ceil(size / MIB)}m"


def kubernetes_job_variables(flow: str) -> dict[str, Any]:
    """``job_variables`` of ``flow``'s ``nightly-k8s`` deployment (the variables of
    ``infra/k8s/base-job-template.json``): the task image of this code, and the pod's size
    from the resource table."""
    size = flow_run_size(flow)
    out: dict[str, Any] = {"image": IMAGE_FROM_BUILD_STEP, "cpu": cpu_quantity(size.cpus),
                           "memory": memory_quantity(size.memory_bytes),
                           "shm_size": memory_quantity(size.shm_bytes)}
    if size.gpus:
        out.update(gpu_count=size.gpus, tolerations=[GPU_TOLERATION])
    return out


def docker_job_variables(flow: str) -> dict[str, Any]:
    """``job_variables`` of ``flow``'s ``nightly-docker`` deployment (prefect-docker's
    variables): the task image of this code on the host network, its entrypoint replaced by
    the flow-run command, locked down as the docker launcher's task containers are (read-only
    root, ``/tmp`` tmpfs, no capabilities), sized from the resource table."""
    from flows.launchers.container import SCRATCH, WRITABLE_ENV

    size = flow_run_size(flow)
    create: dict[str, Any] = {
        "entrypoint": ["/usr/bin/env"],  # the image's own is `python -m tasks`
        "working_dir": SCRATCH, "init": True, "read_only": True,
        "tmpfs": {SCRATCH: "rw,exec,nosuid,nodev,mode=1777"},
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
        "shm_size": docker_size(size.shm_bytes), "nano_cpus": int(size.cpus * 1e9)}
    if size.gpus:
        create["device_requests"] = [{"Driver": "", "Count": size.gpus,
                                      "Capabilities": [["gpu"]]}]
    return {"image": IMAGE_FROM_BUILD_STEP, "network_mode": "host",
            "env": dict(WRITABLE_ENV), "mem_limit": docker_size(size.memory_bytes),
            "memswap_limit": docker_size(size.memory_bytes), "container_create_kwargs": create}


JOB_VARIABLES = {"kubernetes": kubernetes_job_variables, "docker": docker_job_variables}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments",
                                     description="print the job variables prefect.yaml holds")
    sub = parser.add_subparsers(dest="cmd", required=True)
    jv = sub.add_parser("job-variables", help="a deployment's job_variables, as JSON")
    jv.add_argument("flow", choices=sorted(NIGHTLY))
    jv.add_argument("--pool", choices=sorted(JOB_VARIABLES), default="kubernetes")
    args = parser.parse_args(argv)
    print(json.dumps(JOB_VARIABLES[args.pool](args.flow), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
