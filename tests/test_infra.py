"""The compose stack, the image files and ``visionflows doctor`` (no engine needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "infra" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "infra" / ".env.example"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_use_loopback_host_networking(compose):
    services = compose["services"]
    assert set(services) == {"minio", "minio-init", "postgres", "prefect-server",
                             "prefect-setup", "prefect-process-worker", "prefect-worker"}
    for name, svc in services.items():
        assert svc["network_mode"] == "host", name
        assert "ports" not in svc, name  # host networking: nothing published
    assert "127.0.0.1:9000" in services["minio"]["command"]
    assert "127.0.0.1:9001" in services["minio"]["command"]
    cmd = services["prefect-server"]["command"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    worker = services["prefect-worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert worker["command"][worker["command"].index("--type") + 1] == "docker"
    # prefect-docker is in the worker image (images/worker.Dockerfile), not installed at start
    assert "EXTRA_PIP_PACKAGES" not in worker["environment"]
    assert "prefect-docker" in (ROOT / "images" / "worker.Dockerfile").read_text()
    assert worker["environment"]["PREFECT_WORKER_WEBSERVER_HOST"] == "127.0.0.1"
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "listen_addresses=127.0.0.1" in services["postgres"]["command"]


def test_compose_server_runs_on_postgres_with_auth_and_every_client_passes_it(compose):
    services = compose["services"]
    server = services["prefect-server"]
    env = server["environment"]
    # PostgreSQL, by parts: the password is its own variable, never inside a URL
    assert env["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert env["PREFECT_SERVER_DATABASE_HOST"] == "127.0.0.1"
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env
    assert env["PREFECT_SERVER_DATABASE_PASSWORD"].startswith("${PREFECT_DB_PASSWORD:?")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${PREFECT_DB_PASSWORD:?")
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "volumes" not in server  # no SQLite file any more
    auth = env["PREFECT_SERVER_API_AUTH_STRING"]
    assert auth.startswith("${PREFECT_AUTH_STRING:?")
    clients = [n for n, svc in services.items() if "PREFECT_API_URL" in
               (svc.get("environment") or {})]
    assert set(clients) == {"prefect-setup", "prefect-process-worker", "prefect-worker"}
    for name in clients:
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == auth, name
    # the Prefect image is pinned to the version the worker image builds on
    worker_df = (ROOT / "images" / "worker.Dockerfile").read_text()
    version = re.search(r"^ARG PREFECT_VERSION=(\S+)$", worker_df, re.MULTILINE).group(1)
    assert server["image"] == f"prefecthq/prefect:${{PREFECT_TAG:-{version}-python3.11}}"
    example = ENV_EXAMPLE.read_text()
    assert f"PREFECT_TAG={version}-python3.11" in example
    assert "PREFECT_DB_PASSWORD=change-me" in example and "PREFECT_AUTH_STRING=" in example


def test_compose_secrets_come_from_env_file_only(compose):
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert {"MINIO_ROOT_PASSWORD", "VF_TASKS_SECRET_KEY"} <= required
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert required <= set(example)
    for value in example.values():  # no secret from the example is baked into the file
        if "change-me" in value:
            assert value not in text
    assert "infra/.env" in (ROOT / ".gitignore").read_text()


def test_bucket_init_grants_the_tasks_key_only_its_bucket(compose):
    init = compose["services"]["minio-init"]
    # the script compose and the Kubernetes Job share (tests/test_work_pools.py runs it)
    assert init["entrypoint"] == ["/bin/sh", "/etc/visionflows/init.sh"]
    assert "./minio/init.sh:/etc/visionflows/init.sh:ro" in init["volumes"]
    script = (ROOT / "infra" / "minio" / "init.sh").read_text()
    for step in ("mc mb --ignore-existing", "mc admin policy create", "mc admin user add",
                 "mc admin policy attach"):
        assert step in script
    # the policy file is the one mounted, its BUCKET placeholder becomes the real bucket,
    # and it is attached to the tasks' key (not the root user)
    assert "./minio/tasks-policy.json:/etc/visionflows/tasks-policy.json:ro" in init["volumes"]
    assert 's/BUCKET/$VF_BUCKET/g' in script
    assert re.search(r"policy attach local visionflows-tasks --user \"\$VF_TASKS_ACCESS_KEY\"",
                     script)
    policy = json.loads((ROOT / "infra" / "minio" / "tasks-policy.json").read_text())
    grants: dict[str, set[str]] = {}
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st
        assert "Principal" not in st and "Condition" not in st
        for r in st["Resource"]:
            grants.setdefault(r, set()).update(st["Action"])
    # the bucket itself: list it, nothing else (no policy, ACL, lifecycle or delete)
    assert grants["arn:aws:s3:::BUCKET"] == {"s3:GetBucketLocation", "s3:ListBucket",
                                              "s3:ListBucketMultipartUploads"}
    # its objects: read, write, delete, multipart housekeeping; no ACLs, retention, tagging
    assert grants["arn:aws:s3:::BUCKET/*"] == {"s3:GetObject", "s3:PutObject",
                                                "s3:DeleteObject", "s3:AbortMultipartUpload",
                                                "s3:ListMultipartUploadParts"}
    assert set(grants) == {"arn:aws:s3:::BUCKET", "arn:aws:s3:::BUCKET/*"}  # no other bucket


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def test_compose_file_validates_with_compose_cli(tmp_path):
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    res = subprocess.run([*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config",
                          "--quiet"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    # without the .env values compose refuses to start, naming the missing variable
    empty = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "VF_TASKS_"))}
    (tmp_path / "empty.env").write_text("")
    res = subprocess.run([*cli, "--env-file", str(tmp_path / "empty.env"), "-f", str(COMPOSE),
                          "config",
                          "--quiet"], capture_output=True, text=True, timeout=60, env=empty)
    assert res.returncode != 0 and "MINIO_ROOT_USER" in res.stderr + res.stdout


def test_task_image_files():
    dockerfile = (ROOT / "images" / "tasks.Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:\S+-cuda\S+-runtime$", dockerfile,
                     re.MULTILINE)
    assert re.search(r"^USER vf$", dockerfile, re.MULTILINE)
    # -P: the task never imports from the working directory (a mounted tasks/ folder)
    assert 'ENTRYPOINT ["python", "-P", "-m", "tasks"]' in dockerfile
    assert "RUN --mount" not in dockerfile  # the legacy builder must build it
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*"):] == ["*", "!dist/visionflows-*-py3-none-any.whl"]


def _doctor(*args, **env):
    full = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock", **env}
    return subprocess.run([sys.executable, "-m", "flows.cli", "doctor", *args],
                          capture_output=True, text=True, timeout=120, env=full, cwd=ROOT)


def test_doctor_reports_what_to_fix(tmp_path, s3_endpoint):
    res = _doctor("--store", f"file://{tmp_path}/store", PREFECT_API_URL="")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^ok\s+store: file://.*/store is writable", res.stdout, re.MULTILINE)
    assert re.search(r"^warn docker: engine not reachable", res.stdout, re.MULTILINE)
    assert "fix: start it" in res.stdout
    res = _doctor("--store", "s3://no-such-bucket-vf/x", "--no-docker",
                  PREFECT_API_URL="http://127.0.0.1:9/api")
    assert res.returncode == 1
    assert re.search(r"^FAIL prefect: API http://127.0.0.1:9/api is unreachable", res.stdout,
                     re.MULTILINE)
    assert re.search(r"^FAIL store: bucket 'no-such-bucket-vf' does not exist", res.stdout,
                     re.MULTILINE)
    assert "2 failed (prefect, store)" in res.stdout
    assert not re.search(r"^\w+\s+docker", res.stdout, re.MULTILINE)  # --no-docker


def _ci_run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """``.ci/run`` on this checkout with stubs: a non-root ``id`` (so nothing is installed),
    a ``make`` that only records its arguments, a ``docker`` with no engine."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name, body in {"id": "echo 1000", "make": f'echo "$@" >> {tmp_path}/make.log',
                       "docker": "exit 1", "chromium": "exit 0"}.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    path = f"{stubs}:/usr/bin:/bin"  # no dockerd, no debootstrap (not in /usr/bin here)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VF_CI_", "CI"))}
    return subprocess.run([str(ROOT / ".ci" / "run")], capture_output=True, text=True,
                          timeout=120, env={**base, "PATH": path, **env})


@pytest.mark.skipif(shutil.which("dockerd", path="/usr/bin:/bin") is not None
                    or shutil.which("debootstrap", path="/usr/bin:/bin") is not None,
                    reason="this machine has dockerd/debootstrap in /usr/bin: the stub engine "
                    "cannot stand in for a missing one")
def test_ci_fails_loudly_when_a_stage_cannot_run(tmp_path):
    # CI=true: the Ray stage without root is an error, not a skip
    res = _ci_run(tmp_path, CI="true")
    assert res.returncode == 1 and "ci: error: Ray stage needs root" in res.stderr
    assert "VF_CI_RAY=0 turns it off" in res.stderr
    # ... and so is the container stage without an engine
    res = _ci_run(tmp_path, CI="true", VF_CI_RAY="0", VF_CI_OPS="0")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "ci: error: no Docker engine (or no debootstrap): container stage cannot run" in \
        res.stderr
    # turned off by name, it is skipped and CI passes
    res = _ci_run(tmp_path, CI="true", VF_CI_RAY="0", VF_CI_OPS="0", VF_CI_DOCKER="0")
    assert res.returncode == 0, res.stderr
    assert "container stage skipped (VF_CI_DOCKER=0)" in res.stdout
    # outside CI a missing engine is a skip with the fix
    res = _ci_run(tmp_path, VF_CI_RAY="0", VF_CI_OPS="0")
    assert res.returncode == 0 and "apt-get install -y docker.io debootstrap" in res.stdout
    assert "operations stage skipped (VF_CI_OPS=0)" in res.stdout
    # the suite ran each time, before the stages, without the ops tests (their own stage)
    log = (tmp_path / "make.log").read_text()
    assert log.count("test PYTEST_ARGS=-m 'not docker and not ray and not ops'") == 4, log
    text = (ROOT / ".ci" / "run").read_text()
    for package in ("chromium", "postgresql", "docker-compose", "docker.io", "debootstrap"):
        assert f"missing+=({package})" in text
