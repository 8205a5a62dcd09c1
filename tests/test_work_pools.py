"""One definition per work pool (prefect.yaml ``definitions.work_pools``): compose, the
Kubernetes worker, the setup script and the deployments agree with it; compose's services
have health checks and its minio-init refuses the example passwords; and, on a real local
Prefect server, ``infra/setup-work-pools.sh`` creates the pools and deploys, after which the
worker's own code resolves a ``prefect deployment run q4-yolo/nightly-k8s`` run into its Job
(and a ``nightly-docker`` run into its container)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import pools as wp
from flows.deployments import NIGHTLY
from flows.launchers import images
from tests.test_deployments import prefect_server  # noqa: F401  (a real local server)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "infra" / "docker-compose.yml"


@pytest.fixture()
def copy_root(tmp_path) -> Path:
    """The files the check reads, in a folder a test may edit."""
    for rel in ("prefect.yaml", wp.COMPOSE, wp.K8S_WORKER, "infra/k8s/base-job-template.json",
                "infra/docker/base-job-template.json"):
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, dest)
    return tmp_path


def test_pools_are_defined_once():
    pools = wp.load_pools()
    assert {k: (p.name, p.type) for k, p in pools.items()} == {
        "process": ("visionflows-process", "process"),
        "docker": ("visionflows-docker", "docker"),
        "kubernetes": ("visionflows-k8s", "kubernetes")}
    assert pools["docker"].worker_image == pools["kubernetes"].worker_image == \
        "visionflows-worker:3.9.1"
    text = "\n".join(line.split("#")[0] for line in
                     (ROOT / "prefect.yaml").read_text().splitlines())
    # each name appears once in prefect.yaml: at its definition (deployments use the anchor)
    for p in pools.values():
        assert len(re.findall(rf"\b{p.name}\b", text)) == 1, p.name
    # the setup script and the env example name no pool: they cannot disagree
    script = (ROOT / "infra" / "setup-work-pools.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.startswith("#"))
    assert "-m flows.pools apply" in code and "-m flows.pools deployments" in code
    for p in pools.values():
        assert p.name not in code
    assert "--type" not in code
    assert "WORK_POOL" not in (ROOT / "infra" / ".env.example").read_text()


def test_compose_k8s_worker_and_deployments_agree():
    assert wp.disagreements() == []
    res = subprocess.run([sys.executable, "-m", "flows.pools", "check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "all agree" in res.stdout, res.stdout + res.stderr


def test_every_deployment_is_on_its_pool():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = wp.load_pools()
    seen: dict[str, set[str]] = {}
    for dep in spec["deployments"]:
        flow = dep["tags"][1]
        seen.setdefault(dep["name"], set()).add(flow)
        assert dep["work_pool"]["name"] == pools[wp.DEPLOYMENT_POOL[dep["name"]]].name
        if dep["name"] != "nightly":
            assert dep["work_pool"]["job_variables"]["image"] == "{{ image-ref.stdout }}"
            assert dep["build"][0]["prefect.deployments.steps.run_shell_script"]["id"] == \
                "image-ref"
    assert seen["nightly"] == seen["nightly-k8s"] == set(NIGHTLY)
    assert seen["nightly-docker"] == set(NIGHTLY) - {"report"}


@pytest.mark.parametrize("edit, message", [
    (lambda r: _sub(r / wp.COMPOSE, "--pool\", \"visionflows-docker\"",
                    "--pool\", \"visionflows-dockr\""),
     "compose service prefect-worker: worker --pool 'visionflows-dockr'"),
    (lambda r: _sub(r / wp.COMPOSE, "\"--type\", \"docker\"", "\"--type\", \"process\""),
     "worker --type 'process', but prefect.yaml defines the docker pool's type as 'docker'"),
    (lambda r: _sub(r / wp.COMPOSE, "image: visionflows-worker:3.9.1",
                    "image: prefecthq/prefect:3-python3.11"),
     "image 'prefecthq/prefect:3-python3.11'"),
    (lambda r: _sub(r / wp.K8S_WORKER, "\"visionflows-k8s\"", "\"visionflows-kube\""),
     "infra/k8s/worker.yaml: worker --pool 'visionflows-kube'"),
    (lambda r: _sub(r / "prefect.yaml", "type: docker", "type: process"),
     "defines the docker pool's type as 'process'"),
    (lambda r: _sub(r / "prefect.yaml", "        image: '{{ image-ref.stdout }}'\n", "",
                    count=1),
     "sets none (job_variables.image)"),
])
def test_a_disagreement_is_reported(copy_root, edit, message):
    edit(copy_root)
    problems = wp.disagreements(copy_root)
    assert any(message in p for p in problems), problems
    res = subprocess.run([sys.executable, "-m", "flows.pools", "--prefect-yaml",
                          str(copy_root / "prefect.yaml"), "check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and message in res.stderr


def _sub(path: Path, old: str, new: str, count: int = 0) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count or -1))


def test_every_long_running_service_has_a_health_check():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, svc in services.items():
        if svc.get("restart") == "no":  # one-shot: its exit status is its health
            continue
        assert svc["healthcheck"]["test"], name
    assert services["minio-init"]["restart"] == "no"
    worker = services["prefect-worker"]
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert "--with-healthcheck" in worker["command"]
    port = worker["environment"]["PREFECT_WORKER_WEBSERVER_PORT"]
    assert f"127.0.0.1:{port}/health" in worker["healthcheck"]["test"][-1]
    # prefect-docker is in the image, not installed at every start
    assert "EXTRA_PIP_PACKAGES" not in worker["environment"]
    assert worker["build"]["dockerfile"] == "worker.Dockerfile"
    dockerfile = (ROOT / "images" / "worker.Dockerfile").read_text()
    assert re.search(r'"prefect-docker==\$\{PREFECT_DOCKER_VERSION\}"', dockerfile)
    assert re.search(r"^ARG PREFECT_VERSION=3\.9\.1$", dockerfile, re.MULTILINE)
    import prefect
    assert worker["image"] == f"visionflows-worker:{prefect.__version__}"


def _minio_init(tmp_path, **env):
    """Compose's minio-init script run by sh, as compose would (``$$`` is ``$``), with a
    recording ``mc`` and the example file where compose mounts it."""
    init = yaml.safe_load(COMPOSE.read_text())["services"]["minio-init"]
    script = init["command"][0].replace("$$", "$")
    script = script.replace("/etc/visionflows/env.example", str(ROOT / "infra" / ".env.example"))
    script = script.replace("/etc/visionflows/tasks-policy.json",
                            str(ROOT / "infra" / "minio" / "tasks-policy.json"))
    script = script.replace("/tmp/tasks-policy.json", str(tmp_path / "policy.json"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "mc").write_text('#!/bin/sh\necho "mc $*" >> "$MC_LOG"\n')
    (bin_dir / "mc").chmod(0o755)
    log = tmp_path / "mc.log"
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MC_LOG": str(log), "MINIO_ROOT_USER": "admin",
            "VF_BUCKET": "vf-bucket", "VF_TASKS_ACCESS_KEY": "vf-tasks", **env}
    res = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True, env=full,
                         timeout=60)
    return res, (log.read_text() if log.exists() else "")


def test_minio_init_refuses_the_example_passwords(tmp_path):
    example = dict(line.split("=", 1) for line in
                   (ROOT / "infra" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    res, calls = _minio_init(tmp_path, MINIO_ROOT_PASSWORD=example["MINIO_ROOT_PASSWORD"],
                             VF_TASKS_SECRET_KEY="a-real-secret-9f2")
    assert res.returncode == 2 and calls == ""
    assert "MINIO_ROOT_PASSWORD in infra/.env is the example value" in res.stderr
    res, calls = _minio_init(tmp_path, MINIO_ROOT_PASSWORD="a-real-password-9f2",
                             VF_TASKS_SECRET_KEY=example["VF_TASKS_SECRET_KEY"])
    assert res.returncode == 2 and "VF_TASKS_SECRET_KEY" in res.stderr and calls == ""
    res, calls = _minio_init(tmp_path, MINIO_ROOT_PASSWORD="a-real-password-9f2",
                             VF_TASKS_SECRET_KEY="a-real-secret-9f2")
    assert res.returncode == 0, res.stderr
    assert calls.splitlines()[1] == "mc mb --ignore-existing local/vf-bucket"
    assert "mc admin user add local vf-tasks a-real-secret-9f2" in calls
    assert json.loads((tmp_path / "policy.json").read_text())["Statement"][0]["Resource"] == [
        "arn:aws:s3:::vf-bucket"]


# --- a real Prefect server -------------------------------------------------------------


STORE_ENV = {"VF_STORE": "s3://vf-bucket/vf", "VF_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
             "VF_TASKS_ACCESS_KEY": "vf-tasks", "VF_TASKS_SECRET_KEY": "tasks-secret-4e1"}


@pytest.fixture(scope="module")
def set_up(prefect_server):  # noqa: F811
    """``infra/setup-work-pools.sh`` for every pool, run as a user would."""
    env = {**prefect_server["env"], **STORE_ENV, "PYTHONPATH": str(ROOT),
           "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:"
                                             f"{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(ROOT / "infra" / "setup-work-pools.sh")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {**prefect_server, "env": env, "out": res.stdout + res.stderr}


def _api(server, coro_fn):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        async with get_client() as client:
            return await coro_fn(client)

    with temporary_settings({PREFECT_API_URL: server["api"]}):
        return asyncio.run(go())


def test_setup_creates_the_defined_pools_and_deployments(set_up):
    async def read(client):
        pools = {p.name: p for p in await client.read_work_pools()}
        deps = await client.read_deployments()
        return pools, deps

    pools, deps = _api(set_up, read)
    for p in wp.load_pools().values():
        assert pools[p.name].type == p.type
        if p.base_job_template:
            assert pools[p.name].base_job_template == p.template()
    names = {(d.work_pool_name, d.name) for d in deps}
    assert len(deps) == 17 and names == {("visionflows-process", "nightly"),
                                         ("visionflows-docker", "nightly-docker"),
                                         ("visionflows-k8s", "nightly-k8s")}
    k8s = next(d for d in deps if d.name == "nightly-k8s" and d.job_variables["cpu"] == "8")
    assert k8s.job_variables["image"] == images.default_image()  # the build step ran
    assert k8s.job_variables["gpu_count"] == 1
    assert k8s.entrypoint == "flows.q4_yolo:q4_yolo"
    assert k8s.pull_steps == [{"prefect.deployments.steps.set_working_directory": {
        "directory": "/tmp"}}]
    # the store secrets are blocks, never in a deployment
    for d in deps:
        assert STORE_ENV["VF_TASKS_SECRET_KEY"] not in json.dumps(d.job_variables)
    # again: nothing to create, everything up to date
    res = subprocess.run([sys.executable, "-m", "flows.pools", "apply"], cwd=ROOT,
                         env=set_up["env"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.count("is up to date") == 3, res.stdout


def _flow_run_of(set_up, deployment: str):
    """``prefect deployment run FLOW/NAME``, the documented way, and that run."""
    res = subprocess.run([sys.executable, "-m", "prefect", "deployment", "run", deployment],
                         env=set_up["env"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout).group(1)

    async def read(client):
        run = await client.read_flow_run(run_id)
        dep = await client.read_deployment(run.deployment_id)
        pool = await client.read_work_pool(dep.work_pool_name)
        return run, pool

    return read


def test_worker_resolves_a_q4_run_into_its_gpu_job(set_up):
    import kubernetes_validate
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    read = _flow_run_of(set_up, "q4-yolo/nightly-k8s")

    async def resolve(client):
        run, pool = await read(client)
        cfg = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="test-worker")
        return cfg.job_manifest

    job = _api(set_up, resolve)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == images.default_image()
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1}
    assert job["spec"]["backoffLimit"] == 0
    env = {e["name"]: e for e in c["env"]}
    assert env["PREFECT_API_URL"]["value"] == set_up["api"]
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secret-key"
    for key in ("completions", "parallelism"):  # Prefect's own, see test_kubernetes.py
        job["spec"]["template"]["spec"].pop(key)
    kubernetes_validate.validate(job, "1.30.0", strict=True)


def test_worker_resolves_a_docker_run_with_store_settings_from_prefect(set_up):
    from prefect_docker.worker import DockerWorkerJobConfiguration

    read = _flow_run_of(set_up, "q2-transfer/nightly-docker")

    async def resolve(client):
        run, pool = await read(client)
        return await DockerWorkerJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="test-worker")

    cfg = _api(set_up, resolve)
    assert cfg.image == images.default_image()
    # resolved by the worker at run time from the variables and Secret blocks
    assert cfg.env["VF_STORE"] == STORE_ENV["VF_STORE"]
    assert cfg.env["VF_S3_ENDPOINT_URL"] == STORE_ENV["VF_S3_ENDPOINT_URL"]
    assert cfg.env["AWS_ACCESS_KEY_ID"] == STORE_ENV["VF_TASKS_ACCESS_KEY"]
    assert cfg.env["AWS_SECRET_ACCESS_KEY"] == STORE_ENV["VF_TASKS_SECRET_KEY"]
    assert cfg.env["HOME"] == "/tmp"  # the deployment's env added to the pool's
    assert cfg.network_mode == "host" and cfg.mem_limit == "16g"
    kw = cfg.container_create_kwargs
    assert kw["device_requests"] == [{"Driver": "", "Count": 1, "Capabilities": [["gpu"]]}]
    assert kw["entrypoint"] == ["/usr/bin/env"] and kw["read_only"] is True
    assert kw["shm_size"] == "4g"


def test_a_pool_of_another_type_is_refused(set_up):
    async def make(client):
        from prefect.client.schemas.actions import WorkPoolCreate

        await client.delete_work_pool("visionflows-process")
        await client.create_work_pool(WorkPoolCreate(name="visionflows-process", type="docker"))

    _api(set_up, make)
    res = subprocess.run([sys.executable, "-m", "flows.pools", "apply", "process"], cwd=ROOT,
                         env=set_up["env"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert ("work pool visionflows-process exists with type 'docker', but prefect.yaml defines "
            "it as 'process'") in res.stderr
    assert "prefect work-pool delete visionflows-process" in res.stderr


def test_compose_and_the_cluster_run_the_same_images():
    """The server, MinIO and mc versions are the same in compose and in infra/k8s, and the
    server is the Prefect the worker image is built on (and this project runs)."""
    import prefect

    services = yaml.safe_load(COMPOSE.read_text())["services"]
    k8s = {}
    for path in (ROOT / "infra" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in ("Deployment", "StatefulSet", "Job"):
                k8s[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]["containers"][0][
                    "image"]

    def compose_default(image: str) -> str:  # ${MINIO_TAG:-RELEASE...} -> RELEASE...
        return re.sub(r"\$\{\w+:-([^}]+)\}", r"\1", image)

    server = f"prefecthq/prefect:{prefect.__version__}-python3.11"
    assert services["prefect-server"]["image"] == k8s["prefect-server"] == server
    assert compose_default(services["minio"]["image"]) == k8s["minio"]
    assert compose_default(services["minio-init"]["image"]) == k8s["minio-init"]
    dockerfile = (ROOT / "images" / "worker.Dockerfile").read_text()
    assert f"ARG PREFECT_VERSION={prefect.__version__}\n" in dockerfile
    assert "FROM prefecthq/prefect:${PREFECT_VERSION}-python3.11" in dockerfile
