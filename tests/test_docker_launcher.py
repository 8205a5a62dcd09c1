"""The docker launcher's container spec and run loop, against a fake Docker client.

No engine needed: the fake stands in at the SDK boundary (``client.containers.create`` and
the container object), so these run in every CI. Real containers: test_docker_containers.py.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import threading
import time

import docker
import pytest

from flows.launchers import LAUNCHERS, images, launch
from flows.launchers.container import (
    CONFIG_PATH,
    ERROR_PATH,
    MANIFEST_PATH,
    DockerOptions,
    LaunchError,
    container_spec,
    gpu_requests,
    iter_lines,
    launch_docker,
    parse_gpus,
)
from tasks.core.errors import ConfigError, VisionflowsError

SECRET = "fake-secret-Zq81x"
ENV = {"AWS_ACCESS_KEY_ID": "fake-key-id", "AWS_SECRET_ACCESS_KEY": SECRET,
       "VF_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "us-east-1",
       "HOME": "/root", "PATH": "/usr/bin", "UNRELATED_TOKEN": "do-not-forward"}
FETCH = {"source": "generate", "n_train": 30, "n_test": 10}
TRAIN = {"out": "runs/x/train", "data": "data/d", "epochs": 1, "device": "cpu"}


def _flat(obj) -> str:
    return json.dumps(obj, default=str)


# -- the spec -------------------------------------------------------------------------------

def test_spec_puts_credentials_in_env_only():
    spec = container_spec("classifier.train", TRAIN, "s3://bucket/vf", DockerOptions(),
                          env=ENV, name="vf-test")
    assert spec["environment"]["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert spec["environment"]["AWS_ACCESS_KEY_ID"] == "fake-key-id"
    assert spec["environment"]["VF_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "UNRELATED_TOKEN" not in spec["environment"]
    # the host's HOME and PATH are not forwarded (HOME is the tmpfs, see the locked-down test)
    assert spec["environment"].get("HOME") == "/tmp" and "PATH" not in spec["environment"]
    for key in ("command", "labels", "name", "image", "volumes"):
        assert SECRET not in _flat(spec.get(key)), key
        assert "fake-key-id" not in _flat(spec.get(key)), key
    assert spec["command"] == ["classifier.train", "--config", CONFIG_PATH, "--store",
                               "s3://bucket/vf", "--manifest-out", MANIFEST_PATH,
                               "--error-out", ERROR_PATH]
    assert spec["labels"]["org.visionflows.task"] == "classifier.train"


def test_spec_host_network_init_and_default_image():
    spec = container_spec("classifier.train", TRAIN, "s3://b/p", DockerOptions(), env=ENV)
    assert spec["network_mode"] == "host"
    assert spec["init"] is True and spec["detach"] is True
    assert spec["image"] == images.default_image()
    assert spec["image"].startswith("visionflows-tasks:" + images.project_version() + "-")
    assert spec["environment"]["VF_IMAGE_TAG"] == spec["image"]
    assert "device_requests" not in spec  # device=cpu


def test_spec_limits():
    opts = DockerOptions(memory="6g", shm_size="1g", cpus=1.5)
    spec = container_spec("classifier.train", TRAIN, "s3://b/p", opts, env=ENV)
    assert spec["mem_limit"] == "6g" and spec["memswap_limit"] == "6g"
    assert spec["shm_size"] == "1g"
    assert spec["nano_cpus"] == 1_500_000_000
    default = container_spec("classifier.train", TRAIN, "s3://b/p", DockerOptions(), env=ENV)
    assert default["shm_size"] == "2g" and "mem_limit" not in default


def test_spec_file_store_is_mounted_at_the_same_path_as_its_owner(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    spec = container_spec("fashion-mnist.fetch", FETCH, f"file://{root}", DockerOptions(),
                          env=ENV)
    assert spec["volumes"] == {str(root): {"bind": str(root), "mode": "rw"}}
    st = root.stat()
    assert spec["user"] == f"{st.st_uid}:{st.st_gid}"
    assert spec["environment"]["HOME"] == "/tmp"
    assert spec["command"][4] == f"file://{root}"


def test_spec_cache_and_extra_mounts(tmp_path):
    opts = DockerOptions(cache_dir=str(tmp_path / "c"), mounts=[f"{tmp_path}/data:/data:ro"])
    spec = container_spec("fashion-mnist.fetch", FETCH, "s3://b/p", opts, env=ENV)
    assert spec["volumes"][str(tmp_path / "c")] == {"bind": "/vf-cache", "mode": "rw"}
    assert spec["volumes"][f"{tmp_path}/data"] == {"bind": "/data", "mode": "ro"}
    assert spec["environment"]["VF_CACHE_DIR"] == "/vf-cache"
    assert "user" not in spec  # s3 store: the image's own non-root user


def test_spec_is_locked_down_read_only_root_non_root_user_no_secrets(tmp_path):
    from docker.models.containers import _create_container_args

    spec = container_spec("yolo.train", {"device": "cpu"}, "s3://b/p", DockerOptions(),
                          env=ENV, name="vf-locked")
    assert spec["read_only"] is True
    assert spec["tmpfs"] == {"/tmp": "rw,exec,nosuid,nodev,mode=1777"}
    env = spec["environment"]
    for var in ("HOME", "XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR", "YOLO_CONFIG_DIR"):
        assert env[var] == "/tmp" or env[var].startswith("/tmp/"), var  # all on the tmpfs
    (io_mount,) = spec["mounts"]  # config in, manifest out: an anonymous volume
    assert (io_mount["Target"], io_mount["Type"], io_mount.get("Source")) == (
        "/vf-io", "volume", None)
    assert CONFIG_PATH.startswith("/vf-io/") and MANIFEST_PATH.startswith("/vf-io/out/")
    assert "user" not in spec  # s3 store: the image's own user (USER vf in the Dockerfile)
    assert spec["network_mode"] == "host"
    assert spec["cap_drop"] == ["ALL"] and spec["security_opt"] == ["no-new-privileges"]
    for key in ("command", "labels", "name", "mounts", "tmpfs", "volumes", "image"):
        assert SECRET not in _flat(spec.get(key)) and "fake-key-id" not in _flat(
            spec.get(key)), key
    # every keyword is one the SDK's containers.create accepts
    created = _create_container_args({**spec, "version": "1.41"})
    host = created["host_config"]
    assert host["ReadonlyRootfs"] is True and host["Tmpfs"] == spec["tmpfs"]
    assert host["CapDrop"] == ["ALL"] and host["NetworkMode"] == "host"
    assert host["Mounts"][0]["Target"] == "/vf-io"

    # a file store: its owner's uid, still read-only, the store the only writable bind mount
    root = tmp_path / "store"
    root.mkdir()
    spec = container_spec("fashion-mnist.fetch", FETCH, f"file://{root}", DockerOptions(),
                          env=ENV)
    st = root.stat()
    assert spec["user"] == f"{st.st_uid}:{st.st_gid}" and spec["read_only"] is True
    assert list(spec["volumes"]) == [str(root)]
    # configurable: a tmpfs size, or a writable root for images that need one
    opts = DockerOptions.from_env({"VF_DOCKER_TMPFS_SIZE": "8g"})
    spec = container_spec("fashion-mnist.fetch", FETCH, "s3://b/p", opts, env=ENV)
    assert spec["tmpfs"] == {"/tmp": "rw,exec,nosuid,nodev,mode=1777,size=8g"}
    spec = container_spec("fashion-mnist.fetch", FETCH, "s3://b/p",
                          DockerOptions.from_env({"VF_DOCKER_READ_ONLY": "0"}), env=ENV)
    assert spec["read_only"] is False and "tmpfs" not in spec and "HOME" not in spec[
        "environment"]


def test_image_by_family():
    opts = DockerOptions(image="all:1", images={"yolo": "yolo:2"})
    assert container_spec("yolo.train", {}, "s3://b/p", opts, env=ENV)["image"] == "yolo:2"
    assert container_spec("classifier.train", TRAIN, "s3://b/p", opts,
                          env=ENV)["image"] == "all:1"
    assert images.family("yolo.train") == "yolo"
    assert images.family("classifier.evaluate") == "torch"


# -- GPUs -----------------------------------------------------------------------------------

def _req(spec_list):
    return [dict(r) for r in spec_list]


@pytest.mark.parametrize("gpus, device, engine, expected", [
    ("auto", "cpu", True, []),
    ("auto", None, True, []),
    ("auto", "cuda", False, [{"Count": 1, "DeviceIDs": []}]),
    ("auto", "cuda:1", False, [{"Count": -1, "DeviceIDs": []}]),
    ("auto", "auto", True, [{"Count": 1, "DeviceIDs": []}]),
    ("auto", "auto", False, []),
    ("all", "cpu", False, [{"Count": -1, "DeviceIDs": []}]),
    (2, "cuda", False, [{"Count": 2, "DeviceIDs": []}]),
    (["0", "3"], "cuda", False, [{"Count": 0, "DeviceIDs": ["0", "3"]}]),
    ("none", "cuda", True, []),
    (0, "cuda", True, []),
])
def test_gpu_requests(gpus, device, engine, expected):
    got = _req(gpu_requests(gpus, device, engine))
    assert [{"Count": r["Count"], "DeviceIDs": r["DeviceIDs"]} for r in got] == expected
    for r in got:
        assert r["Capabilities"] == [["gpu"]] and r["Driver"] == ""


def test_spec_device_requests_from_config_and_options():
    cuda = {**TRAIN, "device": "cuda"}
    spec = container_spec("classifier.train", cuda, "s3://b/p", DockerOptions(), env=ENV)
    assert _req(spec["device_requests"])[0]["Count"] == 1
    spec = container_spec("classifier.train", cuda, "s3://b/p",
                          DockerOptions(gpus=["1"]), env=ENV)
    assert _req(spec["device_requests"])[0]["DeviceIDs"] == ["1"]
    # the SDK accepts what we build
    hc = docker.APIClient(version="1.41").create_host_config(
        device_requests=spec["device_requests"])
    assert hc["DeviceRequests"][0]["DeviceIDs"] == ["1"]


def test_parse_gpus_and_env_options():
    assert parse_gpus("all") == "all" and parse_gpus("3") == 3
    assert parse_gpus("device=0, 2") == ["0", "2"]
    with pytest.raises(VisionflowsError, match="VF_DOCKER_GPUS"):
        parse_gpus("many")
    opts = DockerOptions.from_env({"VF_DOCKER_GPUS": "device=1", "VF_DOCKER_MEMORY": "12g",
                                   "VF_DOCKER_SHM_SIZE": "4g", "VF_DOCKER_TIMEOUT_S": "90",
                                   "VF_IMAGE_YOLO": "y:1", "VF_IMAGE": "t:1",
                                   "VF_DOCKER_MOUNTS": "/a:/a:ro,/b:/b", "VF_DOCKER_KEEP": "1"})
    assert opts.gpus == ["1"] and opts.memory == "12g" and opts.shm_size == "4g"
    assert opts.timeout_s == 90 and opts.images == {"yolo": "y:1"} and opts.image == "t:1"
    assert opts.mounts == ["/a:/a:ro", "/b:/b"] and opts.keep is True
    assert DockerOptions.from_env({"VF_DOCKER_TIMEOUT_S": "none"}).timeout_s is None
    with pytest.raises(ConfigError, match="cpus"):
        DockerOptions.from_env({"VF_DOCKER_MEMORY": "12g", "VF_DOCKER_CPUS": "-1"})
    with pytest.raises(ConfigError, match="bad mount"):
        DockerOptions.from_env({"VF_DOCKER_MOUNTS": "/only-one-part"})


# -- the run loop, with a fake engine -------------------------------------------------------

def _manifest(task="fashion-mnist.fetch") -> dict:
    return {"task": task, "prefix": "data/x", "store": "s3://b/p", "config": {},
            "config_hash": "abc", "started_at": "t0", "finished_at": "t1", "duration_s": 1.0,
            "metrics": {"n": 3}}


def _tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeContainer:
    def __init__(self, spec, script):
        self.spec, self.script = spec, script
        self.id = f"fake-{spec['name']}"
        self.archives: dict[str, bytes] = {}
        self.dirs: dict[str, int] = {}
        self.started = self.removed = False
        self.killed = threading.Event()
        self.attrs = {"State": {"OOMKilled": script.get("oom", False)}}

    def put_archive(self, path, data):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                if m.isdir():
                    self.dirs[f"{path}/{m.name}"] = m.mode
                else:
                    self.archives[f"{path}/{m.name}"] = tar.extractfile(m).read()
        return True

    def start(self):
        if self.script.get("start_error"):
            raise docker.errors.APIError("start", explanation=self.script["start_error"])
        self.started = True

    def logs(self, stream, follow):
        assert stream and follow
        yield from self.script.get("chunks", [])
        if self.script.get("hang"):
            assert self.killed.wait(30), "the launcher never killed the container"

    def wait(self):
        return {"StatusCode": 137 if self.killed.is_set() else self.script.get("code", 0)}

    def kill(self):
        self.killed.set()

    def reload(self):
        pass

    def get_archive(self, path):
        if "manifest" not in self.script:
            raise docker.errors.NotFound("no such file")
        return iter([_tar("m.json", json.dumps(self.script["manifest"]).encode())]), {}

    def remove(self, force=False, v=False):
        assert force and v  # v: its anonymous /vf-io volume goes too
        self.removed = True


class FakeClient:
    def __init__(self, script, have_image=True):
        self.script, self.have_image = script, have_image
        self.created: list[FakeContainer] = []
        client = self

        class Containers:
            def create(self, **spec):
                c = FakeContainer(spec, client.script)
                client.created.append(c)
                return c

        class Images:
            def get(self, name):
                if not client.have_image:
                    raise docker.errors.ImageNotFound(name)
                return object()

        self.containers, self.images = Containers(), Images()

    def info(self):
        return {"Runtimes": {"runc": {}}}


@pytest.fixture
def creds(monkeypatch):
    for k, v in ENV.items():
        if k.startswith(("AWS_", "VF_")):
            monkeypatch.setenv(k, v)


def test_success_streams_logs_passes_config_and_removes(creds, caplog):
    chunks = [b"12:00:01 INFO fetching", b" data\n12:00:02 WARNING slow disk\nplain ",
              f"line with {SECRET}\n".encode()]
    client = FakeClient({"chunks": chunks, "manifest": _manifest()})
    with caplog.at_level(logging.INFO, logger="visionflows"):
        m = launch_docker("fashion-mnist.fetch", FETCH, "s3://b/p", client=client,
                          options=DockerOptions())
    assert m.task == "fashion-mnist.fetch" and m.metrics == {"n": 3}
    (c,) = client.created
    assert json.loads(c.archives[CONFIG_PATH]) == FETCH
    assert c.dirs == {"/vf-io/out": 0o1777}  # where any uid may write the manifest
    assert c.started and c.removed
    msgs = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "[fashion-mnist.fetch] fetching data") in msgs
    assert ("WARNING", "[fashion-mnist.fetch] slow disk") in msgs
    assert ("INFO", "[fashion-mnist.fetch] plain line with ***") in msgs
    assert SECRET not in caplog.text


def test_nonzero_exit_fails_with_last_lines(creds):
    lines = "".join(f"line {i}\n" for i in range(40)) + "error: no manifest at s3://b/p/d\n"
    client = FakeClient({"chunks": [lines.encode()], "code": 2})
    with pytest.raises(LaunchError) as exc:
        launch_docker("fashion-mnist.fetch", FETCH, "s3://b/p", client=client,
                      options=DockerOptions(log_tail=5))
    text = str(exc.value)
    assert "exit code 2" in text and "error: no manifest at s3://b/p/d" in text
    assert "line 39" in text and "line 35" not in text  # only the last 5 lines
    assert client.created[0].removed


def test_timeout_kills_reports_and_removes(creds):
    client = FakeClient({"chunks": [b"12:00:01 INFO epoch 1/1000\n"], "hang": True})
    start = time.perf_counter()
    with pytest.raises(LaunchError, match=r"timed out after 0.5s .* killed") as exc:
        launch_docker("fashion-mnist.fetch", FETCH, "s3://b/p", timeout_s=0.5, client=client,
                      options=DockerOptions())
    assert time.perf_counter() - start < 10
    assert "epoch 1/1000" in str(exc.value)
    c = client.created[0]
    assert c.killed.is_set() and c.removed


def test_oom_and_missing_manifest_and_keep(creds):
    client = FakeClient({"code": 137, "oom": True})
    with pytest.raises(LaunchError, match="killed for memory .*limit 1g"):
        launch_docker("fashion-mnist.fetch", FETCH, "s3://b/p", client=client,
                      options=DockerOptions(memory="1g"))
    client = FakeClient({"code": 0})
    with pytest.raises(LaunchError, match="wrote no manifest"):
        launch_docker("fashion-mnist.fetch", FETCH, "s3://b/p", client=client,
                      options=DockerOptions(keep=True))
    assert not client.created[0].removed


def test_missing_image_and_gpu_start_error_are_clear(creds):
    with pytest.raises(LaunchError, match="this code, visionflows-tasks:.* is not built"):
        launch_docker("fashion-mnist.fetch", FETCH, "s3://b/p",
                      client=FakeClient({}, have_image=False), options=DockerOptions())
    client = FakeClient({"start_error": 'could not select device driver "" with '
                                        "capabilities: [[gpu]]"})
    with pytest.raises(LaunchError, match="NVIDIA Container Toolkit"):
        launch_docker("classifier.train", {**TRAIN, "device": "cuda"}, "s3://b/p",
                      client=client, options=DockerOptions())
    assert client.created[0].removed


def test_bad_config_fails_before_any_container():
    client = FakeClient({})
    with pytest.raises(ConfigError, match="activation"):
        launch_docker("classifier.train", {**TRAIN, "activation": "swish"}, "s3://b/p",
                      client=client, options=DockerOptions())
    assert client.created == []


def test_cli_docker_launcher_fails_fast_without_engine(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    store = tmp_path / "store"
    assert main(["run", "q1-mlp", "--launcher", "docker", "--store", f"file://{store}"]) == 2
    assert "cannot reach the Docker engine" in capsys.readouterr().err
    assert not store.exists()  # nothing ran, Prefect never started
    monkeypatch.setenv("VF_LAUNCHER", "k8s")
    assert main(["run", "q1-mlp", "--store", f"file://{store}"]) == 2
    assert "unknown launcher 'k8s' (from VF_LAUNCHER?)" in capsys.readouterr().err


def test_launch_dispatches_and_lists_docker(monkeypatch):
    assert LAUNCHERS == ("local", "subprocess", "docker")
    seen = {}

    def fake(task, cfg, store, timeout_s):
        seen.update(task=task, timeout_s=timeout_s)
        return "manifest"

    monkeypatch.setattr("flows.launchers.container.launch_docker", fake)
    assert launch("fashion-mnist.fetch", FETCH, "s3://b/p", "docker", timeout_s=7) == "manifest"
    assert seen == {"task": "fashion-mnist.fetch", "timeout_s": 7}


def test_iter_lines_handles_chunking_and_carriage_returns():
    chunks = [b"ab", b"c\nde", b"f\r\n", b"progress 1\rprogress 2\r", b"tail"]
    assert list(iter_lines(chunks)) == ["abc", "def", "progress 1", "progress 2", "tail"]


def test_image_tag_matches_a_built_wheel(tmp_path):
    """The launcher's tag (from the checkout) equals the build's tag (from the wheel)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name) if src.exists() else (
            src.mkdir(), shutil.copy(root / name, src / name))
    for pkg in images.PACKAGES:
        shutil.copytree(root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        pytest.skip(f"cannot build the wheel here: {res.stderr[-300:]}")
    (wheel,) = (tmp_path / "dist").glob("visionflows-*.whl")
    assert images.wheel_tag(wheel) == images.image_tag()
