"""One definition per work pool (``infra/work-pools.yaml``): the compose stack, the setup
script and ``prefect.yaml`` agree with it; the worker image has the workers built in;
``minio-init`` refuses the example passwords; the docker pool's flow-run container as
prefect-docker creates it; and, against a real Prefect server, the pools are created with
their templates, ``prefect deploy --all`` runs the build step, and a ``nightly-k8s`` run
resolves to the Job the worker would start."""

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

from flows.deployments import NIGHTLY
from flows.launchers.container import SCRATCH, WRITABLE_ENV
from flows.launchers.images import default_image
from flows.registry import FLOWS, REPORT_FLOW
from flows.work_pools import RUN_CLIENT_ENV, job_needs, load_pools
from tasks.core.errors import ConfigError
from tests.k8s_support import ROOT, STORE_BLOCK, deployed, flow_name, prefect_yaml, resolve

COMPOSE = ROOT / "infra" / "docker-compose.yml"
SETUP = ROOT / "infra" / "setup-work-pools.sh"
INIT = ROOT / "infra" / "minio" / "init.sh"


@pytest.fixture(scope="module")
def pools():
    return load_pools()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_the_definition(pools):
    assert {p.name: p.type for p in pools.pools.values()} == {
        "visionflows-process": "process", "visionflows-docker": "docker",
        "visionflows-k8s": "kubernetes"}
    for p in pools.pools.values():
        if p.flow_run_image:  # container pools: a template of their worker type
            template = p.template()
            assert template and set(template) == {"job_configuration", "variables"}
    assert pools.get("visionflows-k8s").namespace == "visionflows"
    with pytest.raises(ConfigError, match="unknown work pool 'nope'"):
        pools.get("nope")


def test_definition_errors_are_named(tmp_path):
    (tmp_path / "infra").mkdir()
    bad = tmp_path / "infra" / "work-pools.yaml"
    bad.write_text("worker_image: w:1\npools:\n  - {name: a, type: lambda, deployment: x}\n")
    with pytest.raises(ConfigError, match="type 'lambda' is not one of"):
        load_pools(tmp_path)
    bad.write_text("worker_image: w:1\npools:\n  - {name: a, type: docker, deployment: x, "
                   "gpus: 1}\n")
    with pytest.raises(ConfigError, match="unknown keys gpus"):
        load_pools(tmp_path)


def test_compose_runs_the_docker_pools_worker(compose, pools):
    docker = next(p for p in pools.pools.values() if p.type == "docker")
    worker = compose["services"]["prefect-worker"]
    cmd = worker["command"]
    assert cmd[cmd.index("--pool") + 1] == docker.name
    assert cmd[cmd.index("--type") + 1] == docker.type
    assert "--with-healthcheck" in cmd
    assert worker["image"] == pools.worker_image
    assert worker["build"]["dockerfile"] == "images/worker.Dockerfile"
    assert "EXTRA_PIP_PACKAGES" not in worker.get("environment", {})  # nothing installed
    assert "$" not in json.dumps(cmd)  # the pool is fixed, not an overridable variable
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for name, svc in compose["services"].items():  # a health check on every service
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", name
    port = worker["environment"]["PREFECT_WORKER_WEBSERVER_PORT"]
    assert f"127.0.0.1:{port}/health" in worker["healthcheck"]["test"][-1]


def test_every_worker_retries_what_a_restarting_database_answers(compose):
    """compose's services and the Kubernetes worker (which hands its settings to each flow-run
    pod) run with RUN_CLIENT_ENV; the ops tests' process worker too (tests/ops_support.py)."""
    from prefect.settings import Settings

    for name in ("prefect-worker", "prefect-process-worker"):
        env = compose["services"][name]["environment"]
        assert {k: str(env.get(k)) for k in RUN_CLIENT_ENV} == RUN_CLIENT_ENV, name
    (worker,) = [d for d in yaml.safe_load_all((ROOT / "infra/k8s/core/worker.yaml").read_text())
                 if d and d.get("kind") == "Deployment"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {k: env.get(k) for k in RUN_CLIENT_ENV} == RUN_CLIENT_ENV
    # and Prefect reads them as meant: 500 among the codes retried
    settings = Settings(client={"retry_extra_codes": RUN_CLIENT_ENV[
        "PREFECT_CLIENT_RETRY_EXTRA_CODES"], "max_retries": RUN_CLIENT_ENV[
        "PREFECT_CLIENT_MAX_RETRIES"]})
    assert 500 in settings.client.retry_extra_codes and settings.client.max_retries == 6


def test_compose_serves_the_pool_the_nightly_deployments_target(compose, pools):
    """`prefect deployment run q4-yolo/nightly` runs on `docker compose up`: `nightly` targets
    the process pool, and compose has a process worker for it, in the task image with the
    checkout where the deployments' pull step looks (VF_PROJECT_DIR at deploy time, which the
    compose setup service runs)."""
    services = compose["services"]
    targeted = {d["work_pool"]["name"] for d in prefect_yaml()["deployments"]
                if d["name"] in ("nightly", "nightly-docker")}
    served = {}
    for name, svc in services.items():
        cmd = svc.get("command") or svc.get("entrypoint") or []
        if "worker" in cmd and "start" in cmd:
            served[cmd[cmd.index("--pool") + 1]] = (name, cmd[cmd.index("--type") + 1])
    assert targeted <= set(served)
    for pool, (_, kind) in served.items():
        assert pools.get(pool).type == kind
    process = services[served[pools.get("visionflows-process").name][0]]
    setup = services["prefect-setup"]
    assert setup["entrypoint"] == ["/bin/bash", "infra/setup-work-pools.sh"]
    for svc in (process, setup):
        assert svc["image"] == "${VF_TASK_IMAGE:-visionflows-tasks:latest}"
        assert svc["environment"]["VF_PROJECT_DIR"] == svc["working_dir"] == "/opt/visionflows"
        assert "..:/opt/visionflows:ro" in svc["volumes"]
    assert process["depends_on"]["prefect-setup"]["condition"] == \
        "service_completed_successfully"
    # the pull step of the process deployments is that folder
    pull = prefect_yaml()["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ $VF_PROJECT_DIR }}"
    assert "docker tag \"$IMAGE\" \"$REPO:latest\"" in (ROOT / "images" / "build.sh").read_text()


def test_setup_refuses_example_server_secrets():
    """Compose's setup service runs it before anything else: the example auth or database
    password of infra/.env.example stops the stack (no worker starts after a failed
    setup)."""
    from flows.work_pools import check_server_secrets

    example = dict(line.split("=", 1) for line in
                   (ROOT / "infra" / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    with pytest.raises(ConfigError, match="PREFECT_AUTH_STRING's password is still the"):
        check_server_secrets({"PREFECT_API_AUTH_STRING": example["PREFECT_AUTH_STRING"]})
    with pytest.raises(ConfigError, match="PREFECT_DB_PASSWORD is still the example"):
        check_server_secrets({"PREFECT_DB_PASSWORD": example["PREFECT_DB_PASSWORD"]})
    with pytest.raises(ConfigError, match="must be user:password"):
        check_server_secrets({"PREFECT_API_AUTH_STRING": "just-a-long-password-42"})
    check_server_secrets({"PREFECT_API_AUTH_STRING": "vf:a-real-password-4242",
                          "PREFECT_DB_PASSWORD": "a-real-db-password-42"})
    check_server_secrets({})  # a server without auth: nothing to check
    code = SETUP.read_text()
    assert code.index("check-server-secrets") < code.index("work_pools create")
    setup = yaml.safe_load(COMPOSE.read_text())["services"]["prefect-setup"]
    assert setup["environment"]["PREFECT_DB_PASSWORD"].startswith("${PREFECT_DB_PASSWORD:?")
    assert setup["environment"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")


def test_setup_script_creates_the_defined_pools_only(pools):
    text = SETUP.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r'"\$PYTHON" -m flows\.work_pools create\n', code)
    assert "work-pool create" not in code and "--type" not in code  # no second definition
    assert set(re.findall(r"visionflows-[a-z0-9]+", text)) <= set(pools.pools)
    assert re.search(r"-m prefect --no-prompt deploy --all", code)


def test_prefect_yaml_puts_each_deployment_on_a_defined_pool(pools):
    spec = prefect_yaml()
    by_pool: dict[str, set[str]] = {}
    for dep in spec["deployments"]:
        pool = pools.get(dep["work_pool"]["name"])
        assert dep["name"] == pool.deployment, (dep["name"], pool.name)
        flow = flow_name(dep["entrypoint"])
        by_pool.setdefault(pool.name, set()).add(flow)
        job_vars = dep["work_pool"].get("job_variables") or {}
        if pool.flow_run_image:  # the task image of this code, the flows from it
            assert job_vars["image"] == "{{ vf.image }}", dep["name"]
            assert dep["pull"] == [] and ":" not in dep["entrypoint"]
            target = {**FLOWS, "report": REPORT_FLOW}[flow]
            assert dep["entrypoint"] == target.replace(":", ".")
            for key, value in job_vars.items():  # every value computed, none typed
                assert re.fullmatch(r"\{\{ vf\.[\w.-]+ \}\}", str(value)), (dep["name"], key)
            if flow != "report":
                assert dep["parameters"]["launcher"] == "local"
            assert dep["schedules"][0]["active"] is False
        else:
            assert not job_vars and ":" in dep["entrypoint"]
    assert by_pool == {name: set(NIGHTLY) for name in pools.pools}  # every flow, every pool
    assert {d["name"] for d in spec["definitions"]["pools"].values()} == set(pools.pools)


def test_prefect_yaml_comments_say_how_q1_packs():
    text = (ROOT / "prefect.yaml").read_text()
    for flow in ("q1_mlp", "q1_cnn"):
        n = job_needs(flow.replace("_", "-"))
        block = text[text.index(f"entrypoint: flows.{flow}.{flow}\n    description: Q1"):]
        block = block[block.index("nightly-k8s") - 10:][:900]
        assert f"ask for {n.gpu_share:g} GPU each" in block
        assert f"packs {n.pack} cells on it at once" in block


def test_worker_image_builds_the_workers_in(pools):
    dockerfile = (ROOT / "images" / "worker.Dockerfile").read_text()
    prefect_version = prefect_yaml()["prefect-version"]
    assert pools.worker_image == f"visionflows-worker:{prefect_version}"
    assert f"ARG PREFECT_VERSION={prefect_version}" in dockerfile
    assert re.search(r"^FROM prefecthq/prefect:\$\{PREFECT_VERSION\}-python", dockerfile,
                     re.MULTILINE)
    for pkg in ("prefect-docker", "prefect-kubernetes"):
        assert re.search(rf'"{pkg}==\$\{{\w+\}}"', dockerfile), pkg
        version = re.search(rf"ARG {pkg.upper().replace('-', '_')}_VERSION=(\S+)",
                            dockerfile).group(1)
        from importlib.metadata import version as installed

        assert version == installed(pkg), pkg  # the versions the tests render with
    assert re.search(r"^USER 1000$", dockerfile, re.MULTILINE)
    k8s_worker = next(d for d in yaml.safe_load_all(
        (ROOT / "infra/k8s/core/worker.yaml").read_text()) if d["kind"] == "Deployment")
    c = k8s_worker["spec"]["template"]["spec"]["containers"][0]
    k8s = pools.get("visionflows-k8s")
    assert c["image"] == pools.worker_image
    assert c["args"][c["args"].index("--pool") + 1] == k8s.name
    assert c["args"][c["args"].index("--type") + 1] == k8s.type


def test_docker_template_keeps_prefect_docker_defaults():
    pytest.importorskip("prefect_docker")
    from prefect_docker.worker import DockerWorker

    default = DockerWorker.get_default_base_job_template()
    ours = load_pools().get("visionflows-docker").template()
    assert ours["job_configuration"] == default["job_configuration"]
    mine, theirs = ours["variables"]["properties"], default["variables"]["properties"]
    assert set(mine) == set(theirs)
    changed = {"env", "network_mode", "container_create_kwargs"}  # defaults, descriptions
    for name, schema in theirs.items():
        strip = ("default", "description") if name in changed else ()
        assert ({k: v for k, v in mine[name].items() if k not in strip}
                == {k: v for k, v in schema.items() if k not in strip}), name
    env = mine["env"]["default"]
    assert {k: env[k] for k in WRITABLE_ENV} == WRITABLE_ENV
    for key in STORE_BLOCK:  # references, resolved by the worker; never a value
        assert env[key] == f"{{{{ prefect.blocks.secret.visionflows-store.{key} }}}}"


# -- minio-init ---------------------------------------------------------------------------


def run_init(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    """infra/minio/init.sh with a fake `mc` that records its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "mc.log"
    mc = bindir / "mc"
    mc.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    mc.chmod(0o755)
    (tmp_path / "etc").mkdir(exist_ok=True)
    policy = tmp_path / "etc" / "tasks-policy.json"
    policy.write_text((ROOT / "infra/minio/tasks-policy.json").read_text())
    full = {"PATH": f"{bindir}:{os.environ['PATH']}", "POLICY_FILE": str(policy),
            "TMPDIR": str(tmp_path), **env}
    res = subprocess.run(["/bin/sh", str(INIT)], capture_output=True, text=True, timeout=60,
                         env=full)
    return res, log.read_text().splitlines() if log.exists() else []


def example_env() -> dict[str, str]:
    return dict(line.split("=", 1) for line in
                (ROOT / "infra/.env.example").read_text().splitlines()
                if line and not line.startswith("#"))


def test_minio_init_refuses_the_example_passwords(tmp_path):
    example = example_env()
    keys = ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "VF_BUCKET", "VF_TASKS_ACCESS_KEY",
            "VF_TASKS_SECRET_KEY")
    env = {k: example[k] for k in keys}
    res, calls = run_init(tmp_path, **env)
    assert res.returncode == 2 and calls == []  # nothing touched
    assert "MINIO_ROOT_PASSWORD is still the example value" in res.stderr
    env["MINIO_ROOT_PASSWORD"] = "a-real-admin-password-42"
    res, calls = run_init(tmp_path, **env)
    assert res.returncode == 2 and calls == []
    assert "VF_TASKS_SECRET_KEY is still the example value" in res.stderr
    for bad, why in (("MinioAdmin", "example value"), ("short-one", "shorter than 12"),
                     ("", "is not set")):
        res, calls = run_init(tmp_path, **{**env, "VF_TASKS_SECRET_KEY": bad})
        assert res.returncode == 2 and why in res.stderr and calls == [], bad


def test_minio_init_creates_bucket_policy_and_key(tmp_path):
    env = {"MINIO_ROOT_USER": "vf-admin", "MINIO_ROOT_PASSWORD": "a-real-admin-password-42",
           "VF_TASKS_ACCESS_KEY": "vf-tasks", "VF_TASKS_SECRET_KEY": "a-real-tasks-secret-42",
           "VF_STORE": "s3://from-store-uri/prefix", "MINIO_URL": "http://minio:9000"}
    res, calls = run_init(tmp_path, **env)
    assert res.returncode == 0, res.stderr
    assert calls[0] == "alias set local http://minio:9000 vf-admin a-real-admin-password-42"
    assert calls[1] == "ready local"
    assert "mb --ignore-existing local/from-store-uri" in calls  # bucket from VF_STORE
    assert "admin user add local vf-tasks a-real-tasks-secret-42" in calls
    assert "admin policy attach local visionflows-tasks --user vf-tasks" in calls
    # the policy it creates: the project's, limited to this bucket
    assert f"admin policy create local visionflows-tasks {tmp_path}/tasks-policy.json" in calls
    written = json.loads((tmp_path / "tasks-policy.json").read_text())
    source = (ROOT / "infra/minio/tasks-policy.json").read_text()
    assert written == json.loads(source.replace("BUCKET", "from-store-uri"))
    assert {r for st in written["Statement"] for r in st["Resource"]} == {
        "arn:aws:s3:::from-store-uri", "arn:aws:s3:::from-store-uri/*"}
    # the tasks' key may not be the root account
    res, calls = run_init(tmp_path, **{**env, "VF_TASKS_ACCESS_KEY": "vf-admin"})
    assert res.returncode == 2 and "must differ" in res.stderr


# -- the docker pool's flow-run container ---------------------------------------------------


def test_docker_deployments_create_locked_down_gpu_containers():
    """Each nightly-docker deployment as prefect-docker's worker turns it into
    containers.create arguments, fed through docker-py's own argument checks."""
    pytest.importorskip("prefect_docker")
    from docker.models.containers import _create_container_args
    from docker.types import HostConfig
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    class Engine:  # what the worker asks the engine: its version
        def version(self):
            return {"Version": "28.2.2"}

    pool = load_pools().get("visionflows-docker")
    template = pool.template()
    worker = DockerWorker(work_pool_name=pool.name, test_mode=True)
    deps = deployed(pool.name)
    assert {flow_name(d["entrypoint"]) for d in deps} == set(NIGHTLY)
    for dep in deps:
        flow = flow_name(dep["entrypoint"])
        cfg = resolve(DockerWorkerJobConfiguration, template, dep, "docker",
                      blocks={("secret", "visionflows-store"): STORE_BLOCK})
        settings = worker._build_container_settings(Engine(), cfg)
        args = _create_container_args({**settings, "version": "1.44"})
        host = args.pop("host_config")
        assert isinstance(host, HostConfig)
        n = job_needs(flow)
        assert args["image"] == default_image()
        assert args["entrypoint"] == ["/usr/bin/env"]
        assert args["command"] == "prefect flow-run execute"
        assert args["working_dir"] == SCRATCH
        env = args["environment"]
        # the store settings, read from the Secret block at run time: never in the deployment
        assert {k: env[k] for k in STORE_BLOCK} == STORE_BLOCK
        assert not set(STORE_BLOCK.values()) & set(json.dumps(dep).split('"'))
        assert {k: env[k] for k in WRITABLE_ENV} == WRITABLE_ENV
        assert host["NetworkMode"] == "host"
        assert host["ReadonlyRootfs"] is True and host["Init"] is True
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Tmpfs"] == {SCRATCH: "rw,exec,nosuid,nodev,mode=1777"}
        assert host["Memory"] == host["MemorySwap"] == n.memory
        assert host["ShmSize"] == n.shm and host["NanoCpus"] == int(n.cpus * 1e9)
        gpus = [r["Count"] for r in host.get("DeviceRequests") or []]
        assert gpus == ([n.gpus] if n.gpus else []), flow
        if flow.startswith("q1-"):
            assert dep["parameters"]["overrides"] == {"parallel": 4, "fail_on_regression": True}


# -- against a real Prefect server ---------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    import httpx

    from tests.test_deployments import free_port, wait_for

    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"vf-pools-{os.getpid()}"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 180,
                 "the Prefect server")
        yield {"api": api, "env": {**env, "PREFECT_API_URL": api, "PYTHONPATH": str(ROOT)}}
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def on_server(server, coro_fn):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server["api"]}):
        return asyncio.run(coro_fn())


@pytest.mark.slow
def test_pools_created_deployed_and_resolved_on_a_real_server(server):
    pytest.importorskip("prefect_kubernetes")
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    from flows.work_pools import create_pools

    pools = load_pools()

    async def wrong_type():  # what users hit: the docker pool created as a process pool
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="visionflows-docker",
                                                         type="process"))
        await create_pools(list(pools.pools.values()))

    with pytest.raises(ConfigError, match=r"exists with type 'process', but .* defines it as "
                       r"'docker': delete it \(prefect work-pool delete visionflows-docker\)"):
        on_server(server, wrong_type)

    async def fix_and_create():
        async with get_client() as client:
            await client.delete_work_pool("visionflows-docker")
        await create_pools(list(pools.pools.values()), echo=lambda *_: None)
        async with get_client() as client:
            return {p.name: await client.read_work_pool(p.name) for p in pools.pools.values()}

    created = on_server(server, fix_and_create)
    for p in pools.pools.values():  # the server accepted our templates as they are
        assert created[p.name].type == p.type
        if p.base_job_template:
            assert created[p.name].base_job_template == p.template()

    # the real `prefect deploy`: its build step, its templating, its validation
    res = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
                         cwd=ROOT, env={**server["env"], "VF_PROJECT_DIR": str(ROOT)},
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    async def run_q4_on_k8s():
        async with get_client() as client:
            dep = await client.read_deployment_by_name("q4-yolo/nightly-k8s")
            flow_run = await client.create_flow_run_from_deployment(dep.id)
            pool = await client.read_work_pool("visionflows-k8s")
            cfg = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                flow_run, client=client, work_pool=pool, worker_name="vf-test-worker")
            return dep, cfg

    dep, cfg = on_server(server, run_q4_on_k8s)
    assert dep.job_variables["gpu_count"] == 1 and dep.job_variables["image"] == \
        default_image()
    assert dep.pull_steps == [] and dep.entrypoint == "flows.q4_yolo.q4_yolo"
    c = cfg.job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "40Gi", "nvidia.com/gpu": 1,
                                        "ephemeral-storage": "21Gi"}
    assert c["image"] == default_image()
    assert cfg.job_manifest["spec"]["backoffLimit"] == 0
    # the deadline deployed with it: Q4's 30 h flow limit plus the 30 min margin
    assert cfg.job_manifest["spec"]["activeDeadlineSeconds"] == 30 * 3600 + 1800
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PREFECT_API_URL"] == server["api"]
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"
    secret_env = [e for e in c["env"] if e["name"] == "AWS_SECRET_ACCESS_KEY"]
    assert secret_env == [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {
        "name": "visionflows-store", "key": "AWS_SECRET_ACCESS_KEY"}}}]
    # the docker pool's store settings: a Secret block, read by its worker at run time
    from flows.work_pools import save_store_block, store_settings

    settings = store_settings({"VF_BUCKET": "b1", "VF_TASKS_ACCESS_KEY": "vf-tasks",
                               "VF_TASKS_SECRET_KEY": "a-real-tasks-secret-42"})
    on_server(server, lambda: save_store_block(settings))

    async def read_block():
        from prefect.blocks.system import Secret

        return (await Secret.aload("visionflows-store")).get()

    assert on_server(server, read_block) == {
        "VF_STORE": "s3://b1/vf", "VF_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "vf-tasks", "AWS_SECRET_ACCESS_KEY": "a-real-tasks-secret-42"}
    q1 = on_server(server, lambda: _read("q1-mlp/nightly-k8s"))
    assert q1.parameters["overrides"] == {"parallel": 4, "fail_on_regression": True}
    assert on_server(server, lambda: _read("q1-mlp/nightly")).work_pool_name == \
        "visionflows-process"


async def _read(name: str):
    from prefect import get_client

    async with get_client() as client:
        return await client.read_deployment_by_name(name)
