"""Ray on Kubernetes, offline: the KubeRay RayCluster of ``infra/k8s/ray/`` (written from the
resource tables; its pod templates against Kubernetes 1.30's PodTemplateSpec, its own fields
against our schema of KubeRay v1.7.0's) and the Ray-ready task image's build files (no
Docker engine: ``images/build.sh`` against a stand-in ``docker`` that records its call)."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.kuberay import OBJECT_STORE, RAY_VERSION, raycluster, render
from tasks.core.limits import parse_size
from tasks.core.resources import KINDS
from tasks.plans import FLOW_CONFIGS, resolve_config

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
RAY_DIR = ROOT / "infra" / "k8s" / "ray"
K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((RAY_DIR / "raycluster.yaml").read_text())


def templates(obj: dict) -> dict[str, dict]:
    spec = obj["spec"]
    return {"head": spec["headGroupSpec"]["template"],
            **{g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}}


def test_the_committed_manifest_is_the_one_the_resource_tables_give(cluster):
    assert (RAY_DIR / "raycluster.yaml").read_text() == render({}), \
        "infra/k8s/ray/raycluster.yaml is stale: python -m flows.kuberay > it"
    kust = yaml.safe_load((RAY_DIR / "kustomization.yaml").read_text())
    assert kust["resources"] == ["raycluster.yaml"]


def test_every_pod_template_is_a_valid_kubernetes_pod_template(cluster):
    for role, template in templates(cluster).items():
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": f"ray-{role}"},
                                      "template": template}, K8S_VERSION, strict=True)
    broken = copy.deepcopy(templates(cluster)["gpu"])
    broken["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"n": 8}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": "x"}, "template": broken},
                                     K8S_VERSION, strict=True)


def test_the_raycluster_fields_follow_kuberay(cluster):
    schema = json.loads((RAY_DIR / "raycluster.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(cluster, schema)
    spec = cluster["spec"]
    wrong = [("a misspelt field", lambda s: s["workerGroupSpecs"][0].update(maxReplica=3)),
             ("a string count", lambda s: s["workerGroupSpecs"][0].update(minReplicas="0")),
             ("no group name", lambda s: s["workerGroupSpecs"][1].pop("groupName")),
             ("no head template", lambda s: s["headGroupSpec"].pop("template")),
             ("an unknown mode", lambda s: s["authOptions"].update(mode="password")),
             ("a numeric start flag", lambda s: s["headGroupSpec"]["rayStartParams"].update(
                 {"num-cpus": 0}))]
    for what, change in wrong:
        bad = copy.deepcopy(cluster)
        change(bad["spec"])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
            pytest.fail(what)
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"] == {"mode": "token"}


def _container(template: dict) -> dict:
    (c,) = template["spec"]["containers"]
    return c


def test_every_step_of_every_question_fits_a_worker_group(cluster):
    """Sized from the tables: each step kind of each question (full profile) fits the CPUs,
    GPUs and memory Ray is told a group's node has, and its /dev/shm."""
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu_steps = []
    for flow in FLOW_CONFIGS:
        table = resolve_config(flow, "full").resources
        for kind in KINDS:
            res = table.for_kind(kind)
            g = groups["gpu" if res.gpus else "cpu"]
            c = _container(g["template"])
            limits = c["resources"]["limits"]
            assert float(limits["cpu"]) >= res.cpus, (flow, kind)
            assert int(g["rayStartParams"]["memory"]) >= res.memory_bytes, (flow, kind)
            assert limits.get("nvidia.com/gpu", 0) >= math.ceil(res.gpus), (flow, kind)
            shm = g["template"]["spec"]["volumes"][0]["emptyDir"]
            assert parse_size(shm["sizeLimit"].replace("Mi", "m")) >= \
                res.shm_bytes + OBJECT_STORE, (flow, kind)
            if res.gpus:
                gpu_steps.append(res)
    # and no bigger than the largest step (q4's training: 8 CPUs, 32g, a GPU, 8g shm)
    gpu = groups["gpu"]
    limits = _container(gpu["template"])["resources"]["limits"]
    assert float(limits["cpu"]) == max(r.cpus for r in gpu_steps) == 8
    assert int(gpu["rayStartParams"]["memory"]) == max(r.memory_bytes for r in gpu_steps)
    assert limits["nvidia.com/gpu"] == 1
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 4)


def test_pods_run_the_ray_image_with_the_store_secret(cluster):
    for role, template in templates(cluster).items():
        c = _container(template)
        assert c["image"] == "visionflows-tasks-ray:latest", role
        assert c["envFrom"] == [{"secretRef": {"name": "visionflows-store"}}], role
        assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert not any(re.search("KEY|SECRET|TOKEN", e["name"]) for e in c.get("env", []))
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    custom = raycluster(image="reg.example/vf-ray:abc", gpu_bounds=(1, 8))
    assert custom["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 8
    with pytest.raises(ValueError, match="bounds 3..2"):
        raycluster(gpu_bounds=(3, 2))


def test_ray_version_is_the_installed_one():
    pytest.importorskip("ray")
    import ray

    assert ray.__version__ == RAY_VERSION, "update flows/kuberay.py RAY_VERSION and rerender"


# ------------------------------------------------------------------ the Ray-ready image

def _heredocs(script: str) -> list[str]:
    return re.findall(r"<<'PY'\n(.*?)\nPY\n", script, re.DOTALL)


def test_build_local_base_pins_the_ray_extra_from_the_constraints(tmp_path):
    script = (ROOT / "images" / "build-local-base.sh").read_text()
    assert 'if [ "${VF_RAY_IMAGE:-0}" = 1 ]' in script
    extract, pins = [p for p in _heredocs(script) if "ray" in p]
    meta = tmp_path / "visionflows-0.1.0.dist-info" / "METADATA"
    meta.parent.mkdir()
    meta.write_text("Name: visionflows\nRequires-Dist: torch>=2.2\n"
                    'Requires-Dist: ray[default]<3,>=2.40; extra == "ray"\n'
                    'Requires-Dist: prefect-ray>=0.6; extra == "ray"\n'
                    'Requires-Dist: pytest>=8; extra == "dev"\n')
    import zipfile

    wheel = tmp_path / "vf.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(meta, "visionflows-0.1.0.dist-info/METADATA")
    reqs = subprocess.run([sys.executable, "-c", extract, str(wheel)], capture_output=True,
                          text=True, check=True).stdout
    assert reqs.split("\n")[:2] == ["ray[default]<3,>=2.40", "prefect-ray>=0.6"]
    (tmp_path / "req.txt").write_text(reqs)
    (tmp_path / "c.txt").write_text("Ray==2.60.0\nprefect_ray==0.6.0\ntorch==2.9.1\n")
    out = subprocess.run([sys.executable, "-c", pins, str(tmp_path / "req.txt"),
                          str(tmp_path / "c.txt")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ray[default]==2.60.0 prefect-ray==0.6.0"
    (tmp_path / "c.txt").write_text("torch==2.9.1\n")
    out = subprocess.run([sys.executable, "-c", pins, str(tmp_path / "req.txt"),
                          str(tmp_path / "c.txt")], capture_output=True, text=True)
    assert out.returncode != 0 and "ray (the [ray] extra) is not in the constraints" in out.stderr


def test_build_sh_makes_the_ray_variant_on_the_same_base(tmp_path):
    """``images/build.sh`` with ``VF_EXTRAS=ray``: the Dockerfile gets the extra and its pins
    as build arguments, on the BASE_IMAGE given, under its own repository name."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "docker").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1 $2" = "image inspect" ] && exit 1\nexit 0\n')
    (fake / "docker").chmod(0o755)
    # a copy of the checkout's files: the build writes dist/ and build/ where it runs
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "VF_EXTRAS": "ray",
           "VF_EXTRA_PINS": "ray[default]==2.60.0 prefect-ray==0.6.0",
           "BASE_IMAGE": "visionflows-base:0.1.0-abc", "PYTHON": sys.executable,
           "PYTHONPATH": str(repo)}
    res = subprocess.run([str(repo / "images" / "build.sh")], capture_output=True, text=True,
                         env=env, cwd=repo, timeout=300)
    assert res.returncode == 0, res.stderr
    image = res.stdout.strip().splitlines()[-1]
    assert image.startswith("visionflows-tasks-ray:0.1.0-")
    build = next(line for line in calls.read_text().splitlines() if line.startswith("build"))
    for arg in ("VF_EXTRAS=[ray]", "VF_EXTRA_PINS=ray[default]==2.60.0 prefect-ray==0.6.0",
                "BASE_IMAGE=visionflows-base:0.1.0-abc", "-f images/tasks.Dockerfile"):
        assert arg in build, (arg, build)
    dockerfile = (ROOT / "images" / "tasks.Dockerfile").read_text()
    assert '"/tmp/vf/visionflows-${VF_VERSION}-py3-none-any.whl${VF_EXTRAS}" ' \
           "${VF_EXTRA_PINS}" in dockerfile
    assert "import ray, prefect_ray, flows.submit" in dockerfile  # the image checks itself
