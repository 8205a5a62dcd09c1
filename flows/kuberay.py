"""The KubeRay ``RayCluster`` of ``infra/k8s/ray/raycluster.yaml``, sized from the questions'
resource tables (``tasks/q<N>/plan.py``, full profile), so a step the table describes always
fits a node of it:

- the head runs drivers only (``num-cpus: 0``: the submitted flows' drivers, the dashboard
  and the Jobs API on port 8265, Ray Client on 10001);
- worker group ``gpu``: pods as large as the largest GPU step (CPUs, memory, whole GPUs,
  ``/dev/shm``), scaled by the autoscaler between ``VF_RAY_GPU_MIN``/``VF_RAY_GPU_MAX``;
- worker group ``cpu``: pods as large as the largest CPU-only step (fetches, reports).

Every pod runs the Ray-ready task image (``images/build-local-base.sh`` with
``VF_RAY_IMAGE=1``), reads the store's Secret (``visionflows-store``: what ``flows.k8s``
writes) and gets ``/dev/shm`` as a memory ``emptyDir`` of the step's ``shm`` plus Ray's object
store. Fields follow KubeRay v1.7.0's ``ray.io/v1`` RayCluster (docs/ray.md).

    python -m flows.kuberay > infra/k8s/ray/raycluster.yaml   # after a resource-table change
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import yaml

from flows.work_pools import STORE_SECRET
from tasks.core.resources import KINDS, Resources
from tasks.core.settings import default, setting

KUBERAY_RELEASE = "v1.7.0"  # the ray.io/v1 RayCluster fields used here follow this release
NAME = "visionflows"
NAMESPACE = "visionflows"
IMAGE = default("VF_RAY_IMAGE_REF")  # images/build-local-base.sh with VF_RAY_IMAGE=1
OBJECT_STORE = 2 * 2**30  # Ray's object store per node, in /dev/shm
HEADROOM = 1 * 2**30  # Ray's own processes on a node
HEAD = Resources(cpus=2, memory="8g", shm="1g")
# the Ray the image carries (the [ray] extra at the tests' version; a test checks it against
# the installed one): KubeRay's rayVersion
RAY_VERSION = "2.60.0"


def largest_steps() -> tuple[Resources, Resources]:
    """The largest GPU step and the largest CPU-only step over every question's full-profile
    resource table: per field the maximum (so one pod holds any of them)."""
    from tasks.plans import resolve_config
    from tasks.questions import question_flows

    gpu: list[Resources] = []
    cpu: list[Resources] = []
    for flow in question_flows():
        table = resolve_config(flow, "full").resources
        for kind in KINDS:
            res = table.for_kind(kind)
            (gpu if res.gpus else cpu).append(res)

    def biggest(rs: list[Resources]) -> Resources:
        return Resources(cpus=max(r.cpus for r in rs),
                         memory=_mi(max(r.memory_bytes for r in rs)),
                         gpus=float(math.ceil(max(r.gpus for r in rs))),
                         shm=_mi(max(r.shm_bytes for r in rs)))

    return biggest(gpu), biggest(cpu)


def _mi(n: int) -> str:
    return f"{math.ceil(n / 2**20)}Mi"


def _cpu(n: float) -> str:
    return str(int(n)) if n == int(n) else f"{int(n * 1000)}m"


def pod_template(role: str, res: Resources, image: str, ray_ports: bool = False
                 ) -> dict[str, Any]:
    """A Ray node's pod: the Ray container with ``res`` (the container's memory holds the
    step, ``/dev/shm`` and Ray's own processes), the store's Secret, ``/dev/shm``."""
    shm = res.shm_bytes + OBJECT_STORE
    memory = res.memory_bytes + shm + HEADROOM
    limits: dict[str, Any] = {"cpu": _cpu(res.cpus), "memory": _mi(memory)}
    if res.gpus:
        limits["nvidia.com/gpu"] = int(res.gpus)
    container: dict[str, Any] = {
        "name": "ray-head" if role == "head" else "ray-worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": _cpu(res.cpus), "memory": _mi(memory)},
                      "limits": limits},
        "envFrom": [{"secretRef": {"name": STORE_SECRET}}],
        "env": [{"name": "VF_NO_PROGRESS", "value": "1"},
                {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}],
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
        # Ray stops its node cleanly before the pod goes
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
    }
    if ray_ports:
        container["ports"] = [{"containerPort": 6379, "name": "gcs"},
                              {"containerPort": 8265, "name": "dashboard"},
                              {"containerPort": 10001, "name": "client"}]
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": _mi(shm)}}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
    }
    if res.gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"}]
    return {"metadata": {"labels": {"app.kubernetes.io/part-of": "visionflows",
                                    "app.kubernetes.io/component": f"ray-{role}"}},
            "spec": spec}


def start_params(res: Resources, head: bool = False) -> dict[str, str]:
    """``ray start`` flags: Ray schedules steps on ``res``'s memory, not the shm part."""
    params = {"object-store-memory": str(OBJECT_STORE), "memory": str(res.memory_bytes)}
    if head:
        params.update({"num-cpus": "0", "dashboard-host": "0.0.0.0"})
    return params


def raycluster(image: str = IMAGE, namespace: str = NAMESPACE, gpu_bounds: tuple[int, int] =
               (0, 4), cpu_bounds: tuple[int, int] = (1, 4), idle_s: int = 600,
               ray_version: str = RAY_VERSION) -> dict[str, Any]:
    """The RayCluster object."""
    gpu, cpu = largest_steps()

    def group(name: str, res: Resources, bounds: tuple[int, int]) -> dict[str, Any]:
        lo, hi = bounds
        if not 0 <= lo <= hi or hi < 1:
            raise ValueError(f"worker group {name}: bounds {lo}..{hi} must be 0 <= min <= "
                             "max, max >= 1")
        return {"groupName": name, "replicas": lo, "minReplicas": lo, "maxReplicas": hi,
                "idleTimeoutSeconds": idle_s, "rayStartParams": start_params(res),
                "template": pod_template(name, res, image)}

    return {
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": {"name": NAME, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "visionflows"}},
        "spec": {
            "rayVersion": ray_version,
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": idle_s},
            # Ray's token authentication: KubeRay keeps the token in a Secret named after
            # the cluster and gives it to every Ray container (RAY_AUTH_TOKEN)
            "authOptions": {"mode": "token"},
            "headGroupSpec": {"serviceType": "ClusterIP",
                              "rayStartParams": start_params(HEAD, head=True),
                              "template": pod_template("head", HEAD, image, ray_ports=True)},
            "workerGroupSpecs": [group("gpu", gpu, gpu_bounds), group("cpu", cpu, cpu_bounds)],
        },
    }


def render(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ if env is None else env)
    obj = raycluster(image=setting("VF_RAY_IMAGE_REF", env),
                     gpu_bounds=(setting("VF_RAY_GPU_MIN", env), setting("VF_RAY_GPU_MAX", env)),
                     cpu_bounds=(setting("VF_RAY_CPU_MIN", env), setting("VF_RAY_CPU_MAX", env)))
    return (f"# Written by `python -m flows.kuberay` from the resource tables (do not edit by "
            f"hand);\n# KubeRay {KUBERAY_RELEASE} ray.io/v1 fields. See docs/ray.md.\n"
            + yaml.safe_dump(obj, sort_keys=False))


if __name__ == "__main__":
    sys.stdout.write(render())
    sys.exit(0)
