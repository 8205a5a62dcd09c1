"""Real containers: the docker launcher against a real engine and the task image.

Marked ``docker``; skipped (with the reason) when no engine is reachable or the image for
this exact code is not built (``images/build-local-base.sh`` builds it without a registry).
Stores are moto's S3 server on 127.0.0.1 (or a real MinIO via VF_TEST_S3_ENDPOINT):
containers share the host network, so they reach it at the same address.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import pytest

from tasks.core.store import open_store

pytestmark = pytest.mark.docker

# One sweep cell keeps this to four containers per flow run.
ONE_CELL = {"data": {"n_train": 600, "n_test": 200}, "epochs": 2, "batch_sizes": [64],
            "activations": ["relu"], "losses": ["cross_entropy"]}


@pytest.fixture(scope="module")
def engine(docker_engine):
    return docker_engine


def _bucket(endpoint: str) -> str:
    from tests.conftest import make_bucket

    return f"s3://{make_bucket(endpoint)}/vf"


def _flow_logs(flow_run_id) -> list[str]:
    """Every log line the Prefect API holds for a flow run (after flushing our handlers)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in getattr(logger, "handlers", []):
            if isinstance(h, APILogHandler):
                h.flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [log.message for log in logs]


@pytest.fixture(scope="module")
def q1_both(engine, prefect_harness, s3_endpoint):
    """q1-mlp (one cell) run in-process and with --launcher docker, each in its own bucket."""
    from flows.common import new_run_id
    from flows.q1_mlp import q1_mlp

    local_uri, docker_uri = _bucket(s3_endpoint), _bucket(s3_endpoint)
    run_id = new_run_id()  # the same in both buckets, so every config is the same
    local = q1_mlp(profile="smoke", store=local_uri, overrides=ONE_CELL, launcher="local",
                   run_id=run_id)
    start = time.perf_counter()
    in_docker = q1_mlp(profile="smoke", store=docker_uri, overrides=ONE_CELL,
                       launcher="docker", run_id=run_id)
    print(f"q1-mlp with --launcher docker: {time.perf_counter() - start:.1f}s")
    return (local_uri, local), (docker_uri, in_docker)


def _task_manifests(uri: str, result: dict) -> dict[str, dict]:
    st = open_store(uri)
    prefixes = {"fetch": result["data"], **{f"train-{k}": v for k, v in result["train"].items()},
                **{f"eval-{k}": v for k, v in result["eval"].items()},
                "report": result["report"]["report.html"].rsplit("/", 1)[0]}
    return {name: st.get_json(p + "/manifest.json") for name, p in prefixes.items()}


def test_q1_mlp_in_containers_matches_in_process(q1_both, engine):
    (local_uri, local), (docker_uri, in_docker) = q1_both
    _, image = engine
    lm, dm = _task_manifests(local_uri, local), _task_manifests(docker_uri, in_docker)
    assert set(lm) == set(dm) and len(dm) == 4
    for name in lm:
        assert set(lm[name]) == set(dm[name]), name            # same manifest keys
        assert set(lm[name]["outputs"]) == set(dm[name]["outputs"]), name
        assert lm[name]["config"] == dm[name]["config"], name
        assert dm[name]["provenance"]["image_tag"] == image, name
        assert lm[name]["provenance"]["image_tag"] == "none (in-process)"
    for name in lm:
        if name.startswith(("train-", "eval-")):
            for key, value in lm[name]["metrics"].items():
                if key.endswith("time_s"):
                    continue
                got = dm[name]["metrics"][key]
                if isinstance(value, float):
                    assert math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-9), (name, key)
                else:
                    assert got == value, (name, key)
    st = open_store(docker_uri)
    assert st.exists(in_docker["manifest"])
    assert st.get_text(in_docker["report"]["report.html"]).startswith("<!DOCTYPE html>")


def test_the_key_names_the_image_two_images_two_keys(q1_both, engine, monkeypatch):
    """Under the docker launcher a step's identity is the image's real id: the manifests
    record it, a run on another image (same tag scheme, other id) recomputes, and going
    back to the first image hits its cache again."""
    import io

    from flows.q1_mlp import q1_mlp

    client, image = engine
    (_, _), (docker_uri, in_docker) = q1_both
    first_id = client.images.get(image).id
    st = open_store(docker_uri)
    train = in_docker["train"]["b64-relu-cross_entropy"]
    ident = st.get_json(f"{train}/manifest.json")["identity"]
    assert ident["parts"]["environment"] == {"image": first_id}
    assert "code" not in ident["parts"]  # the image holds the code
    other_tag = "visionflows-tasks:identity-test"
    dockerfile = f"FROM {image}\nLABEL visionflows.test=identity\n".encode()
    other, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=other_tag,
                                   network_mode="host", rm=True)
    try:
        assert other.id != first_id
        monkeypatch.setenv("VF_IMAGE", other_tag)
        again = q1_mlp(profile="smoke", store=docker_uri, overrides=ONE_CELL,
                       launcher="docker")
        moved = again["train"]["b64-relu-cross_entropy"]
        assert moved != train  # recomputed under the other image, not the cached result
        assert st.get_json(f"{moved}/manifest.json")["identity"]["parts"][
            "environment"] == {"image": other.id}
        slots = [k for k in st.list("cache/classifier.train/slots") if "b64-relu" in k]
        assert [st.get_json(k)["parts"]["environment"] for k in slots] == [{"image": other.id}]
        monkeypatch.setenv("VF_IMAGE", image)
        back = q1_mlp(profile="smoke", store=docker_uri, overrides=ONE_CELL,
                      launcher="docker")
        assert back["train"]["b64-relu-cross_entropy"] == train  # the first image's hit
    finally:
        client.images.remove(other_tag, force=True)


def _one_step_flow():
    from prefect import flow

    from flows.common import run_step

    @flow(name="one-docker-step")
    def one_step(task: str, cfg: dict, store: str) -> dict:
        return run_step(task, task, cfg, store, "docker")

    return one_step


def test_nonzero_exit_fails_the_prefect_task_with_the_tasks_own_error(engine, prefect_harness,
                                                                      s3_endpoint):
    """The container exits 2; the Prefect task fails with the task's error, its class kept
    across the container (as under every launcher: test_errors.py)."""
    from tasks.core.errors import TaskNotRunError

    uri = _bucket(s3_endpoint)
    state = _one_step_flow()("classifier.evaluate",
                             {"out": "runs/t/eval", "train": "runs/t/no-such-train",
                              "device": "cpu"}, uri, return_state=True)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, TaskNotRunError), repr(err)
    assert "no manifest at" in str(err) and "runs/t/no-such-train" in str(err)
    assert open_store(uri).list("runs/t") == []  # nothing written, no manifest


def test_timeout_kills_fails_the_task_and_leaves_no_manifest(engine, prefect_harness,
                                                             s3_endpoint, monkeypatch):
    from flows.launchers import launch

    uri = _bucket(s3_endpoint)
    data = launch("fashion-mnist.fetch", {"source": "generate", "n_train": 600, "n_test": 100},
                  uri, "local")
    monkeypatch.setenv("VF_DOCKER_TIMEOUT_S", "25")
    cfg = {"out": "runs/t/train", "data": data.prefix, "epochs": 100000, "device": "cpu",
           "checkpoint_every": 100000}
    state = _one_step_flow()("classifier.train", cfg, uri, return_state=True)
    assert state.is_failed()
    msg = str(state.result(raise_on_failure=False))
    assert "timed out after 25s" in msg and "killed" in msg
    assert "epoch" in msg  # the container's last log lines
    assert not open_store(uri).exists("runs/t/train/manifest.json")


def test_secret_stays_out_of_inspect_logs_and_manifest(engine, prefect_harness, s3_endpoint,
                                                       monkeypatch):
    client, _ = engine
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    uri = _bucket(s3_endpoint)
    monkeypatch.setenv("VF_DOCKER_KEEP", "1")  # keep the container to inspect it
    state = _one_step_flow()("fashion-mnist.fetch",
                             {"source": "generate", "n_train": 60, "n_test": 20}, uri,
                             return_state=True)
    assert state.is_completed()
    (container,) = client.containers.list(
        all=True, filters={"label": "org.visionflows.task=fashion-mnist.fetch"})
    try:
        attrs = container.attrs
        exposed = json.dumps([attrs["Path"], attrs["Args"], attrs["Config"]["Cmd"],
                              attrs["Config"]["Entrypoint"], attrs["Config"]["Labels"],
                              attrs["Name"]])
        assert secret not in exposed
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        assert f"AWS_SECRET_ACCESS_KEY={secret}" in attrs["Config"]["Env"]  # env only
    finally:
        container.remove(force=True, v=True)
    logs = _flow_logs(state.state_details.flow_run_id)
    assert any(line.startswith("[fashion-mnist.fetch]") for line in logs), logs
    assert not any(secret in line for line in logs)
    manifest = state.result()
    assert secret not in json.dumps(manifest)
    assert secret not in open_store(uri).get_text(manifest["prefix"] + "/manifest.json")

    # A task that prints the secret (here: inside an error message) is redacted.
    monkeypatch.delenv("VF_DOCKER_KEEP")
    state = _one_step_flow()("fashion-mnist.fetch",
                             {"source": "download", "mirror": f"/no/such/{secret}"}, uri,
                             return_state=True)
    assert state.is_failed()
    msg = str(state.result(raise_on_failure=False))
    assert "/no/such/***" in msg and secret not in msg
    logs = _flow_logs(state.state_details.flow_run_id)
    assert any("/no/such/***" in line for line in logs)
    assert not any(secret in line for line in logs)


PROBE = r"""
import json, os
out = {"uid": os.getuid()}
for name, path in [("root", "/opt/vf-probe"), ("tmp", "/tmp/vf-probe"),
                   ("io", "/vf-io/out/vf-probe")] + [
        (var, os.path.join(os.environ[var], "vf-probe")) for var in
        ("HOME", "XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR", "YOLO_CONFIG_DIR")]:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write("x")
        out[name] = "writable"
    except OSError as exc:
        out[name] = exc.strerror
print(json.dumps(out))
"""


def test_container_root_is_read_only_and_the_user_is_not_root(engine, s3_endpoint):
    """The launcher's own container spec, with a probe instead of the task: only the tmpfs
    and the /vf-io volume are writable, and the task runs as the image's non-root user."""
    import docker

    from flows.launchers.container import (
        CONFIG_DIR,
        CONFIG_NAME,
        DockerOptions,
        _tar_one,
        container_spec,
    )

    client, image = engine
    spec = container_spec("fashion-mnist.fetch", {}, _bucket(s3_endpoint), DockerOptions())
    spec.update(entrypoint=["python", "-c", PROBE], command=[], detach=True)
    container = client.containers.create(**spec)
    try:
        container.put_archive(CONFIG_DIR, _tar_one(CONFIG_NAME, b"{}", dirs=["out"]))  # as launch
        container.start()
        assert container.wait()["StatusCode"] == 0, container.logs().decode()
        probe = json.loads(container.logs().decode().strip().splitlines()[-1])
        attrs = container.attrs
    finally:
        container.remove(force=True, v=True)
    assert probe.pop("root") == "Read-only file system"
    assert probe.pop("uid") != 0
    assert set(probe.values()) == {"writable"}, probe
    assert attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert client.images.get(image).attrs["Config"]["User"] == "vf"
    (io_volume,) = [m["Name"] for m in attrs["Mounts"] if m["Destination"] == "/vf-io"]
    with pytest.raises(docker.errors.NotFound):  # removed with the container
        client.volumes.get(io_volume)


def test_container_out_of_memory_is_reported_and_leaves_no_manifest(engine, s3_endpoint):
    from flows.launchers.container import DockerOptions, LaunchError, launch_docker

    uri = _bucket(s3_endpoint)
    with pytest.raises(LaunchError, match=r"selftest.alloc was killed for memory .*limit 400m"):
        launch_docker("selftest.alloc", {"out": "runs/t/big", "mib": 3000}, uri,
                      options=DockerOptions(memory="400m"))
    st = open_store(uri)
    assert st.exists("runs/t/big/started.json")
    assert not st.exists("runs/t/big/manifest.json")
    # the same task within its limit, in a read-only container, finishes
    m = launch_docker("selftest.alloc", {"out": "runs/t/small", "mib": 32}, uri,
                      options=DockerOptions(memory="2g"))
    assert m.metrics == {"allocated_mib": 32} and st.exists("runs/t/small/manifest.json")
