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
    assert set(services) == {"minio", "minio-init", "prefect-server", "prefect-worker"}
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
    assert "prefect-data:/var/lib/prefect" in services["prefect-server"]["volumes"]


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
    empty = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "VF_TASKS"))}
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
