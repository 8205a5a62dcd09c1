"""Faults injected on purpose: store outages, killed trainings, bad input, leaked secrets."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import boto3
import numpy as np
import pytest
import torch

from tasks.core.errors import StoreError
from tasks.core.log import RedactingFilter, redact
from tasks.core.store import S3Store, open_store
from tasks.q1.data import generate_files
from tasks.registry import run_task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def flaky_s3(monkeypatch):
    """A moto server of our own, which tests stop and restart on the same port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    state = {"server": ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)}
    state["server"].start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = f"vf-flaky-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket)

    def stop():
        state["server"].stop()

    def start():
        state["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        state["server"].start()

    yield {"endpoint": endpoint, "bucket": bucket, "stop": stop, "start": start}
    state["server"].stop()


@pytest.fixture(scope="module")
def s3_auth(tmp_path_factory):
    """An S3 endpoint that checks credentials: a real MinIO (``VF_TEST_S3_ENDPOINT``), or
    moto's server in a process of its own with ``INITIAL_NO_AUTH_ACTION_COUNT`` set: the
    first calls (an IAM user, its access key and an S3 policy) go unchecked, every later one
    must be signed with that key. (moto reads the setting once per process, so the test
    session's own moto server keeps accepting anything.) Stopped by its own handle."""
    external = os.environ.get("VF_TEST_S3_ENDPOINT")
    if external:
        bucket = f"vf-auth-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=external, region_name="us-east-1").create_bucket(
            Bucket=bucket)
        yield {"endpoint": external, "bucket": bucket,
               "key_id": os.environ.get("AWS_ACCESS_KEY_ID", "minioadmin"),
               "secret": os.environ.get("AWS_SECRET_ACCESS_KEY", "minioadmin")}
        return
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    log = tmp_path_factory.mktemp("moto-auth") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                   "-p", str(port)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        boot = {"endpoint_url": endpoint, "region_name": "us-east-1",
                "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="vf-tasks")
        key = iam.create_access_key(UserName="vf-tasks")["AccessKey"]
        iam.put_user_policy(UserName="vf-tasks", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        bucket = f"vf-auth-{uuid.uuid4().hex[:8]}"
        good = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id=key["AccessKeyId"],
                            aws_secret_access_key=key["SecretAccessKey"])
        good.create_bucket(Bucket=bucket)  # signed: the unchecked calls are used up
        yield {"endpoint": endpoint, "bucket": bucket, "key_id": key["AccessKeyId"],
               "secret": key["SecretAccessKey"]}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _all_keys(auth: dict) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=auth["endpoint"], region_name="us-east-1",
                      aws_access_key_id=auth["key_id"], aws_secret_access_key=auth["secret"])
    return [o["Key"] for o in s3.list_objects_v2(Bucket=auth["bucket"]).get("Contents", [])]


def test_the_auth_server_checks_credentials(s3_auth, monkeypatch):
    """The stand-in really checks: the right secret writes and reads, a wrong one is denied
    by name (and writes nothing)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_auth["secret"])
    st = S3Store(s3_auth["bucket"], "probe", endpoint_url=s3_auth["endpoint"])
    st.check()
    st.put_bytes("ok.txt", b"signed")
    assert st.get_bytes("ok.txt") == b"signed"
    st.delete("ok.txt")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong")
    bad = S3Store(s3_auth["bucket"], "probe", endpoint_url=s3_auth["endpoint"])
    with pytest.raises(StoreError, match="access denied while trying to reach"):
        bad.check()
    with pytest.raises(StoreError, match="access denied while trying to write"):
        bad.put_bytes("bad.txt", b"unsigned")
    assert _all_keys(s3_auth) == []


def test_doctor_names_wrong_credentials(s3_auth, monkeypatch):
    from flows.doctor import run_doctor

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("VF_S3_ENDPOINT_URL", s3_auth["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth["key_id"])
    uri = f"s3://{s3_auth['bucket']}/vf"
    for secret, code in ((s3_auth["secret"], 0), ("definitely-wrong", 1)):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        lines: list[str] = []
        assert run_doctor(uri, docker=False, out=lines.append) == code, lines
        store_line = next(ln for ln in lines if " store: " in ln)
        if code:
            assert store_line.startswith("FAIL store: access denied") and \
                "AWS_SECRET_ACCESS_KEY" in store_line, store_line
            assert "definitely-wrong" not in "\n".join(lines)
        else:
            assert store_line.startswith("ok   store: "), store_line
    assert _all_keys(s3_auth) == []


def test_upload_survives_a_ten_second_outage(flaky_s3, tmp_path, monkeypatch):
    monkeypatch.setenv("VF_S3_RETRY_SECONDS", "40")
    st = S3Store(flaky_s3["bucket"], "vf", endpoint_url=flaky_s3["endpoint"])
    src = tmp_path / "model.pt"
    src.write_bytes(os.urandom(3 << 20))
    flaky_s3["stop"]()
    restart = threading.Timer(10.0, flaky_s3["start"])
    restart.start()
    started = time.monotonic()
    st.put_file("runs/x/model.pt", src)  # retried until the endpoint is back
    restart.join()
    assert time.monotonic() - started >= 9.0
    assert st.get_bytes("runs/x/model.pt") == src.read_bytes()


def stated_wait(message: str) -> float:
    """The seconds an "unreachable" message says were spent retrying."""
    found = re.search(r"gave up after (\d+(?:\.\d)?)s of retries", message)
    assert found, message
    return float(found.group(1))


def test_outage_beyond_budget_fails_clearly_and_leaves_no_manifest(flaky_s3, monkeypatch):
    monkeypatch.setenv("VF_S3_RETRY_SECONDS", "2")
    monkeypatch.setenv("VF_S3_MAX_ATTEMPTS", "2")
    st = S3Store(flaky_s3["bucket"], "vf", endpoint_url=flaky_s3["endpoint"])
    flaky_s3["stop"]()
    started = time.monotonic()
    with pytest.raises(StoreError, match="unreachable") as exc:
        run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 20, "n_test": 10}, st)
    elapsed = time.monotonic() - started
    # the message states the time really spent on the failed write (not the budget)
    assert 0.5 <= stated_wait(str(exc.value)) <= elapsed + 0.05
    flaky_s3["start"]()
    assert not [k for k in st.list() if k.endswith("manifest.json")]


def test_doctor_states_the_time_it_really_waited(monkeypatch):
    """The start-up check against an endpoint where nothing listens: the message gives the
    seconds measured, within what the whole doctor run took."""
    from flows.doctor import run_doctor

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("VF_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("VF_S3_RETRY_SECONDS", "4")  # the retry budget; the default is 60 s
    lines: list[str] = []
    started = time.monotonic()
    code = run_doctor("s3://vf-nowhere/vf", docker=False, out=lines.append)
    elapsed = time.monotonic() - started
    store_line = next(ln for ln in lines if ln.startswith("FAIL store:"))
    assert code == 1 and "unreachable" in store_line
    waited = stated_wait(store_line)
    # the budget was spent, no more than one back-off step past it (botocore's own retries
    # inside one call once made it 25 s), and the message says how long (rounded down)
    assert 3 <= waited <= elapsed and waited <= 4 + 2.5, store_line
    assert "VF_S3_RETRY_SECONDS" in store_line  # and how to change it


def test_killed_training_resumes_to_the_same_result(tmp_path):
    uri = f"file://{tmp_path}/store"
    data = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 1500,
                                            "n_test": 300}, uri).prefix
    cfg = {"data": data, "model": "cnn_pool_bn", "epochs": 5, "batch_size": 32, "device": "cpu",
           "seed": 11, "dropout": 0.2}
    reference = run_task("classifier.train", {**cfg, "out": "runs/ref/train"}, uri)
    st = open_store(uri)
    # same intra-op thread count as this process: float sums depend on it
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "tasks", "classifier.train", "--config-json",
                             json.dumps({**cfg, "out": "runs/killed/train"}), "--store", uri],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not st.exists("runs/killed/train/last.pt") and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the hard way: no cleanup, no finally
    proc.wait()
    assert not st.exists("runs/killed/train/manifest.json")
    ckpt = torch.load(st.local_path("runs/killed/train/last.pt"), weights_only=False)
    assert 1 <= ckpt["epoch"] < 5
    resumed = run_task("classifier.train", {**cfg, "out": "runs/killed/train"}, uri)
    assert len(resumed.model_extra["history"]) == 5
    assert resumed.metrics["test/accuracy"] == reference.metrics["test/accuracy"]
    assert resumed.metrics["train/loss"] == pytest.approx(reference.metrics["train/loss"],
                                                          rel=1e-5)


# ---------------------------------------------------------------- time and memory limits

def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_task_past_its_time_budget_is_killed_with_its_children(tmp_path, monkeypatch):
    from flows.launchers import launch
    from tasks.core.errors import TaskTimeoutError

    uri = f"file://{tmp_path}/store"
    monkeypatch.setenv("VF_TASK_TIMEOUT_S", "2")
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError) as exc:
        launch("selftest.sleep", {"out": "runs/t/sleep", "seconds": 300, "spawn": True}, uri,
               "subprocess")
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 20, elapsed
    msg = str(exc.value)
    assert "task selftest.sleep ran past its time budget of 2s and was stopped" in msg
    assert "VF_TASK_TIMEOUT_S" in msg and "sleeping 300s" in msg  # the fix, the last lines
    st = open_store(uri)
    pids = st.get_json("runs/t/sleep/started.json")  # it did start, and wrote outputs...
    assert not st.exists("runs/t/sleep/manifest.json")  # ...but never counted as finished
    assert _wait_gone(pids["pid"]) and _wait_gone(pids["child_pid"])  # nothing left running
    # within the budget, the same task finishes
    monkeypatch.setenv("VF_TASK_TIMEOUT_S", "60")
    m = launch("selftest.sleep", {"out": "runs/t/quick", "seconds": 0.1}, uri, "subprocess")
    assert m.metrics == {"slept_s": 0.1} and st.exists("runs/t/quick/manifest.json")


def test_task_past_its_memory_limit_is_stopped_and_reported(tmp_path, monkeypatch):
    from flows.launchers import launch
    from tasks.core.errors import TaskOutOfMemoryError

    uri = f"file://{tmp_path}/store"
    monkeypatch.setenv("VF_TASK_MEMORY", "1g")  # python + torch (provenance) need ~0.45 GiB
    with pytest.raises(TaskOutOfMemoryError) as exc:
        launch("selftest.alloc", {"out": "runs/t/big", "mib": 6000}, uri, "subprocess")
    msg = str(exc.value)
    assert re.search(r"task selftest\.alloc ran out of memory \(limit 1024 MiB; it reached "
                     r"1\d{3} MiB\) and was stopped", msg), msg
    assert "VF_TASK_MEMORY" in msg
    st = open_store(uri)
    pid = st.get_json("runs/t/big/started.json")["pid"]
    assert not st.exists("runs/t/big/manifest.json")
    assert _wait_gone(pid)
    m = launch("selftest.alloc", {"out": "runs/t/small", "mib": 64}, uri, "subprocess")
    assert m.metrics == {"allocated_mib": 64}


def test_running_out_of_memory_inside_the_task_is_reported_as_such(tmp_path, monkeypatch):
    """No limit of ours: the task itself gets MemoryError (here: a simulated small machine);
    the task CLI exits 3 and the launchers say 'ran out of memory', not 'crashed'."""
    from flows.launchers import launch
    from tasks.core.errors import TaskOutOfMemoryError

    uri = f"file://{tmp_path}/store"
    cfg = {"out": "runs/t/oom", "mib": 2000, "headroom_mib": 200}
    res = subprocess.run([sys.executable, "-m", "tasks", "selftest.alloc", "--config-json",
                          json.dumps(cfg), "--store", uri], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 3, res.stderr
    assert "error: task selftest.alloc ran out of memory (MemoryError)" in res.stderr
    with pytest.raises(TaskOutOfMemoryError, match=r"selftest.alloc ran out of memory \(no "
                                                   r"limit set: the machine's memory\)"):
        launch("selftest.alloc", cfg, uri, "subprocess")
    assert not open_store(uri).exists("runs/t/oom/manifest.json")

    # in-process: the same failure, named, with the way to get a limit
    def oom(*_args, **_kw):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 2097152000 bytes")

    monkeypatch.setattr("flows.launchers.local.run_task", oom)
    with pytest.raises(TaskOutOfMemoryError, match="ran out of memory .* --launcher subprocess"):
        launch("selftest.alloc", cfg, uri, "local")


def test_limit_settings_are_validated():
    from flows.launchers.child_process import SubprocessOptions
    from tasks.core.errors import ConfigError
    from tasks.core.limits import parse_size

    assert parse_size("512m") == 512 << 20 and parse_size("1.5g") == 3 << 29
    assert parse_size("2GiB") == 2 << 30 and parse_size(64 << 20) == 64 << 20
    opts = SubprocessOptions.from_env({"VF_TASK_TIMEOUT_S": "90", "VF_TASK_MEMORY": "4g"})
    assert opts.timeout_s == 90 and opts.memory_bytes == 4 << 30
    assert SubprocessOptions.from_env({}).timeout_s == 6 * 3600
    assert SubprocessOptions.from_env({"VF_TASK_TIMEOUT_S": "none"}).timeout_s is None
    with pytest.raises(ConfigError, match="give a unit, e.g. 512m"):
        SubprocessOptions.from_env({"VF_TASK_MEMORY": "512"})
    with pytest.raises(ConfigError, match="use a size such as"):
        SubprocessOptions.from_env({"VF_TASK_MEMORY": "lots"})
    with pytest.raises(ConfigError, match="timeout_s"):
        SubprocessOptions.from_env({"VF_TASK_TIMEOUT_S": "-3"})


def test_cli_flow_reports_a_task_past_its_budget(tmp_path, prefect_harness):
    """End to end: ``visionflows run --launcher subprocess`` with ``VF_TASK_TIMEOUT_S``; the
    training that cannot finish in time fails the flow with exit code 2 and one clear line,
    and leaves no manifest (of the training, nor of the flow)."""
    store = tmp_path / "store"
    env = {**os.environ, "VF_TASK_TIMEOUT_S": "25", "PREFECT_HOME": str(tmp_path / "ph"),
           "PREFECT_API_URL": prefect_harness}
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "q1-cnn", "--launcher",
                          "subprocess", "--store", f"file://{store}", "--set",
                          "data.n_train=400", "--set", "data.n_test=100", "--set",
                          "epochs=100000", "--set", "dropouts=[0.0]"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and "ran past its time budget of 25s and was stopped" in errors[-1], \
        res.stderr[-3000:]
    manifests = [p.relative_to(store).as_posix() for p in store.rglob("manifest.json")]
    assert manifests and all(m.startswith("data/") for m in manifests), manifests  # fetch only


# ---------------------------------------------------------------- bad input, one table

def _mirror(tmp_path, damage: str) -> str:
    folder = tmp_path / "mirror"
    files = generate_files(tmp_path / "gen", 30, 10)
    folder.mkdir()
    for path in files.values():
        raw = gzip.decompress(path.read_bytes())
        if damage == "truncated" and "train-images" in path.name:
            raw = raw[:-500]
        (folder / path.name[:-3]).write_bytes(raw)
    if damage == "checksum":  # a .gz that is not the official file
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
            files["test_labels"].read_bytes())
    if damage == "image-size":  # valid IDX files, but 32x32 images
        from tasks.q1.data import write_idx

        write_idx(tmp_path / "big.gz", np.zeros((30, 32, 32), dtype=np.uint8))
        (folder / "train-images-idx3-ubyte").write_bytes(
            gzip.decompress((tmp_path / "big.gz").read_bytes()))
    return str(folder)


def _stl10_mirror(tmp_path, damage: str) -> str:
    from tasks.q2.data import generate_files as stl10_files

    folder = tmp_path / "stl10"
    files = stl10_files(folder, 20, 20, n_unlabeled=0)
    if damage == "truncated":
        path = files["train_x"]
        path.write_bytes(path.read_bytes()[:-1000])
        return str(folder)
    archive = folder / "stl10_binary.tar.gz"  # "archive": not a gzip at all
    archive.write_bytes(b"\x1f\x8b" + os.urandom(4000))
    return str(archive)


def _broken_yolo_export(tmp_path) -> str:
    from tasks.q4.shapes import generate_export

    root = generate_export(tmp_path / "export", n_train=6, n_valid=3, image_size=64,
                           max_objects=2, seed=3)
    label = next(p for p in sorted((root / "train" / "labels").glob("*.txt")) if p.read_text())
    label.write_text("0 0.5 1.7 0.2 0.2\n" + label.read_text())  # y centre off the image
    return str(root)


class Case(NamedTuple):
    """One bad (or odd) input: the CLI arguments, and the message the last ``error:`` line
    must hold (None: the run must succeed). ``detail`` must appear somewhere in stderr;
    ``setup`` prepares the store; ``keep`` names steps that legitimately finished before the
    bad input was read (their manifests are whole results)."""

    id: str
    args: Callable[[Path, str], list[str]]
    message: str | None
    detail: str | None = None
    setup: Callable[[Path, str], None] | None = None
    keep: tuple[str, ...] = ()
    store: str = "file"  # "file": a fresh folder; "s3": a fresh bucket on moto or MinIO
    env: dict[str, str] = {}


TINY_Q1 = ["--set", "data.n_train=200", "--set", "data.n_test=100", "--set", "epochs=1",
           "--set", "batch_sizes=[64]", "--set", 'activations=["relu"]', "--set",
           'losses=["mse"]']

BAD_INPUT = [
    # Fashion-MNIST files
    Case("truncated-idx", lambda t, s: ["run", "q1-mlp", "--profile", "full", "--set",
                                        f"data.mirror={_mirror(t, 'truncated')}"],
         "truncated or corrupt"),
    Case("checksum-mismatch", lambda t, s: ["run", "q1-mlp", "--profile", "full", "--set",
                                            f"data.mirror={_mirror(t, 'checksum')}"],
         "does not match the published"),
    Case("wrong-image-size", lambda t, s: ["run", "q1-mlp", "--profile", "full", "--set",
                                           f"data.mirror={_mirror(t, 'image-size')}"],
         "images are 32x32, Fashion-MNIST images are 28x28"),
    Case("missing-mirror", lambda t, s: ["run", "q1-mlp", "--profile", "full", "--set",
                                         f"data.mirror={t}/nowhere"], "is not a folder"),
    # STL10 files (q2's weights step, pretrained=false in smoke, finishes first: kept)
    Case("stl10-truncated", lambda t, s: ["run", "q2-transfer", "--set", "data.source=download",
                                          "--set", f"data.mirror={_stl10_mirror(t, 'truncated')}"],
         "the mirror copy is corrupt", keep=("weights",)),
    Case("stl10-corrupt-archive", lambda t, s: ["run", "q2-transfer", "--set",
                                                "data.source=download", "--set",
                                                f"data.mirror={_stl10_mirror(t, 'archive')}"],
         "the archive is corrupt", keep=("weights",)),
    # (a damaged stored copy is repaired by the next fetch: test_q2_stl10.py)
    # a YOLO export with a broken label: every problem named with file:line
    Case("yolo-broken-labels", lambda t, s: ["run", "q4-yolo", "--set", "data.source=export",
                                             "--set", f"data.location={_broken_yolo_export(t)}"],
         "is not a valid YOLO export", detail=r"train/labels/\S+\.txt:1: .*out of range: 1\.7"),
    # configs
    Case("unknown-key", lambda t, s: ["run", "q1-mlp", "--set", "nope=1"], "unknown key 'nope'"),
    Case("unknown-nested-key", lambda t, s: ["run", "q4-yolo", "--set", "data.colour=1"],
         "unknown key 'data.colour'"),
    # typos: the closest name is suggested; a nested key lists its own model's keys
    Case("typo-key", lambda t, s: ["run", "q1-mlp", "--set", "epoch=2"],
         "unknown key 'epoch' (did you mean 'epochs'?); allowed keys: "),
    Case("typo-nested-key", lambda t, s: ["run", "q4-yolo", "--set", "resources.trian.gpus=1"],
         "unknown key 'resources.trian' (did you mean 'resources.train'?); allowed keys in "
         "resources: evaluate, fetch, flow_time_limit_s, report, train"),
    Case("typo-flow", lambda t, s: ["run", "q1-mpl"],
         "unknown flow 'q1-mpl' (did you mean 'q1-mlp'?); use one of: q1-cnn, q1-mlp, "
         "q2-transfer, q3-segmentation, q4-yolo, all"),
    Case("typo-profile", lambda t, s: ["run", "q2-transfer", "--profile", "smok"],
         "unknown profile 'smok' for q2-transfer (did you mean 'smoke'?); use one of: "),
    Case("zero-batch", lambda t, s: ["run", "q1-mlp", "--set", "batch_sizes=[0]"],
         "batch_sizes"),
    Case("negative-size", lambda t, s: ["run", "q1-cnn", "--set", "data.n_train=-5"],
         "data.n_train"),
    Case("zero-image-size", lambda t, s: ["run", "q2-transfer", "--set", "image_size=0"],
         "image_size: Input should be greater than or equal to 48"),
    Case("negative-epochs", lambda t, s: ["run", "q4-yolo", "--set", "epochs=-1"], "epochs"),
    Case("bad-dropout", lambda t, s: ["run", "q1-cnn", "--set", "dropouts=[1.5]"], "dropouts"),
    Case("unknown-profile", lambda t, s: ["run", "q1-mlp", "--profile", "huge"],
         "unknown profile"),
    Case("set-without-value", lambda t, s: ["run", "q1-mlp", "--set", "epochs"], "KEY=VALUE"),
    # stores and services
    Case("missing-bucket", lambda t, s: ["run", "q1-mlp", "--store", "s3://no-such-bucket-vf/x"],
         "bucket 'no-such-bucket-vf' does not exist"),
    Case("bad-scheme", lambda t, s: ["run", "q1-mlp", "--store", "gs://bucket/x"],
         "unsupported store scheme"),
    Case("unreachable-prefect", lambda t, s: ["run", "q1-mlp", "--store", s], "Prefect API",
         env={"PREFECT_API_URL": "<free port>"}),
    # an endpoint that checks signatures (moto with auth on, or MinIO): a wrong secret
    Case("wrong-credentials", lambda t, s: ["run", "q1-mlp", "--store", s],
         "access denied while trying to reach", store="s3auth",
         env={"AWS_SECRET_ACCESS_KEY": "definitely-wrong"}),
    # odd but valid: spaces and non-ASCII in the store prefix work, on both backends
    Case("unicode-prefix-file", lambda t, s: ["run", "q1-mlp", "--store", s, *TINY_Q1], None,
         store="file:dir with spaces/ünïcødé ✓"),
    Case("unicode-prefix-s3", lambda t, s: ["run", "q1-mlp", "--store", s, *TINY_Q1], None,
         store="s3:runs with spaces/ünïcødé ✓"),
]


def _manifests(uri: str) -> set[str]:
    return {k for k in open_store(uri).list() if k.endswith("manifest.json")}


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c.id for c in BAD_INPUT])
def test_bad_input_fails_clearly(case: Case, tmp_path, s3_endpoint, prefect_harness, request):
    """Exit code 2, a last ``error:`` line naming the problem and the fix, and no manifest
    of a step that read the bad input (nor of the flow); odd-but-valid inputs just work.
    The CLI uses the session's Prefect server (as ``shared_prefect``), unless the case sets
    its own ``PREFECT_API_URL``."""
    from tests.conftest import make_bucket

    kind, _, sub = case.store.partition(":")
    auth = request.getfixturevalue("s3_auth") if kind == "s3auth" else None
    endpoint = {}
    if auth is not None:
        store_uri = f"s3://{auth['bucket']}/{sub or 'vf'}"
        endpoint = {"VF_S3_ENDPOINT_URL": auth["endpoint"], "AWS_ACCESS_KEY_ID": auth["key_id"]}
    elif kind == "s3":
        store_uri = f"s3://{make_bucket(s3_endpoint)}/{sub or 'vf'}"
    else:
        store_uri = f"file://{tmp_path / (sub or 'store')}"
    # a cache of its own: a verified copy cached by another test must not hide a corrupt one
    env = {**os.environ, "VF_STORE": store_uri, "VF_OFFLINE": "1",
           "VF_CACHE_DIR": str(tmp_path / "cache"), "PREFECT_API_URL": prefect_harness,
           **endpoint, **case.env}
    if env.get("PREFECT_API_URL") == "<free port>":
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"
    if case.setup is not None:
        case.setup(tmp_path, store_uri)
    before = _manifests(store_uri) if case.setup else set()
    res = subprocess.run([sys.executable, "-m", "flows.cli", *case.args(tmp_path, store_uri)],
                         capture_output=True, text=True, env=env, timeout=900)
    out = res.stdout[-3000:] + res.stderr[-3000:]
    if auth is not None:  # read back with the right key: nothing at all was written
        assert _all_keys(auth) == [], out
    after = _manifests(store_uri) if auth is None else set()
    if case.message is None:  # must work, and its results are where the URI says
        assert res.returncode == 0, out
        assert f"manifest: {store_uri}/runs/q1-mlp/" in res.stdout, out
        assert any(k.startswith("runs/q1-mlp/") and k.count("/") == 3 for k in after), after
        return
    assert res.returncode == 2, out
    # the CLI's last word is one clear line (Prefect may log the failed task's traceback above)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and case.message in errors[-1], out
    if case.detail:
        assert re.search(case.detail, res.stderr), out
    new = {k for k in after - before
           if not any(k.endswith(f"/{step}/manifest.json") for step in case.keep)}
    assert not new, new


# ---------------------------------------------------------------- secrets

def test_secret_never_reaches_logs_store_or_reports(s3_endpoint, tmp_path, prefect_home):
    from tests.conftest import make_bucket

    secret = "s3cr3t-" + uuid.uuid4().hex
    bucket = make_bucket(s3_endpoint)
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret, "PREFECT_HOME": str(prefect_home)}
    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "q1-mlp", "--store",
                          f"s3://{bucket}/vf", "--set", "data.n_train=200", "--set",
                          "data.n_test=100", "--set", "epochs=1", "--set", "batch_sizes=[64]",
                          "--set", "activations=[\"relu\"]", "--set", "losses=[\"mse\"]"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert secret not in res.stdout + res.stderr
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.endswith("report.html") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert secret.encode() not in body, key
    for path in prefect_home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_redaction_of_messages(monkeypatch):
    import logging

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abcd-secret-1234")
    assert redact("key=abcd-secret-1234 url=http://user:pw@host/x") == \
        "key=*** url=http://user:***@host/x"
    record = logging.LogRecord("visionflows", logging.INFO, __file__, 1,
                               "token %s", ("abcd-secret-1234",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "token ***"


@pytest.mark.parametrize("waited, said", [(6.29, "6.2"), (9.99, "9.9"), (24.6, "24"),
                                          (0.04, "0.0")])
def test_the_stated_wait_is_never_more_than_the_real_one(waited, said):
    from tasks.core.store import gave_up

    assert gave_up(waited) == f"gave up after {said}s of retries"
    assert stated_wait(gave_up(waited)) <= waited
