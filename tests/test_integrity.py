"""No silent wrong results: a run id is bound to its config, stored outputs are checked
against the sha256 their manifest recorded (cache hit, resume, report, promotion, final
report), shared datasets are published once and repaired, children never import from the
working directory, and a full or read-only store is a one-line error (exit 2) that keeps
the results written before it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.core.runtime import (
    IntegrityError,
    PrefixConflictError,
    find_manifest,
    read_manifest,
    verify,
)
from tasks.core.store import open_store
from tasks.registry import run_task

TINY = {"data": {"n_train": 300, "n_test": 100}, "epochs": 1, "batch_sizes": [64],
        "activations": ["relu"], "losses": ["cross_entropy"]}
CELL = "b64-relu-cross_entropy"
ROOT = Path(__file__).resolve().parent.parent


def truncate(store, key: str) -> None:
    store.put_bytes(key, store.get_bytes(key)[: max(1, len(store.get_bytes(key)) // 3)])


def cli(args: list[str], cwd: str | os.PathLike | None = None, env: dict | None = None,
        timeout: int = 400) -> subprocess.CompletedProcess:
    """The ``visionflows`` command as a user runs it (the console script does not put the
    working directory on sys.path: ``-P`` does the same here)."""
    return subprocess.run([sys.executable, "-P", "-c", "import sys; from flows.cli import main; "
                           "sys.exit(main())", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- run ids and the cache

def test_a_reused_run_id_with_another_config_is_refused(store_uri, prefect_harness):
    from flows.q1_mlp import q1_mlp

    st = open_store(store_uri)
    q1_mlp(profile="smoke", store=store_uri, overrides=TINY, run_id="R1")
    cache_before = set(st.list("cache"))
    with pytest.raises(PrefixConflictError, match=r"epochs: 1 -> 2\). Nothing was run. Use a "
                                                  r"new run id .* or rerun with --refresh"):
        q1_mlp(profile="smoke", store=store_uri, overrides={**TINY, "epochs": 2}, run_id="R1")
    assert set(st.list("cache")) == cache_before  # no cache entry for the refused config
    m = read_manifest(st, f"runs/q1-mlp/R1/train-{CELL}")
    assert m.config["epochs"] == 1 and len(m.history) == 1
    # a new run id with that config trains it (a cache miss: no entry points at R1)
    r2 = q1_mlp(profile="smoke", store=store_uri, overrides={**TINY, "epochs": 2}, run_id="R2")
    assert r2["train"][CELL] == f"runs/q1-mlp/R2/train-{CELL}"
    assert len(read_manifest(st, r2["train"][CELL]).history) == 2
    # --refresh recomputes at R1, the old result set aside under trash/
    q1_mlp(profile="smoke", store=store_uri, overrides={**TINY, "epochs": 2}, run_id="R1",
           refresh=True)
    assert read_manifest(st, f"runs/q1-mlp/R1/train-{CELL}").config["epochs"] == 2
    trashed = [k for k in st.list("trash") if k.endswith(f"R1/train-{CELL}/manifest.json")]
    assert len(trashed) == 1 and json.loads(st.get_bytes(trashed[0]))["config"]["epochs"] == 1


def test_a_poisoned_cache_entry_is_ignored_with_a_warning(tmp_path, caplog):
    from tasks.core import cache
    from tasks.q1.train import TrainConfig

    uri = f"file://{tmp_path / 's'}"
    st = open_store(uri)
    data = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 100,
                                            "n_test": 50}, uri).prefix
    cfg1 = TrainConfig(out="r/a", data=data, epochs=1, device="cpu").model_dump(mode="json")
    m = run_task("classifier.train", cfg1, uri)
    cfg3 = {**cfg1, "epochs": 3}
    parts = cache.components("classifier.train", cfg3, st)
    # what an older version wrote: the epochs=3 key pointing at the epochs=1 result
    st.put_json(f"cache/classifier.train/{cache.cache_key(parts)}.json",
                {"key": cache.cache_key(parts), "prefix": m.prefix, "parts": parts})
    hit, reasons = cache.lookup(st, "classifier.train", "q/x", parts)
    assert hit is None and reasons == [
        "the cached result was computed under another key (not trusted)"]
    assert "not trusted" in caplog.text
    # an entry of an older visionflows, whose manifest records no key, is not trusted either
    m1 = st.get_json(f"{m.prefix}/manifest.json")
    m1.pop("identity")
    st.put_json(f"{m.prefix}/manifest.json", m1)
    parts1 = cache.components("classifier.train", cfg1, st)
    st.put_json(f"cache/classifier.train/{cache.cache_key(parts1)}.json",
                {"key": cache.cache_key(parts1), "prefix": m.prefix, "parts": parts1})
    hit, reasons = cache.lookup(st, "classifier.train", "q/x", parts1)
    assert hit is None and reasons == [
        "the cached result records no key (written by an older visionflows) (not trusted)"]


# ---------------------------------------------------------------- damaged outputs

def test_damaged_outputs_are_caught_by_every_reader(prefect_harness, tmp_path):
    from flows.q1_mlp import q1_mlp

    uri = f"file://{tmp_path / 's'}"
    st = open_store(uri)
    first = q1_mlp(profile="smoke", store=uri, overrides=TINY, run_id="R1")
    ev = read_manifest(st, first["eval"][CELL])
    assert set(ev.digests) == set(ev.outputs) and verify(st, ev) == []
    truncate(st, ev.outputs["metrics"])
    assert "has sha256" in verify(st, ev)[0]
    # a cache hit: refused, naming the object and the fix
    with pytest.raises(IntegrityError, match=r"metrics\.json .* --refresh"):
        q1_mlp(profile="smoke", store=uri, overrides=TINY, run_id="R2")
    # the question's report reads it: refused too
    report_cfg = read_manifest(st, "reports/q1-mlp/R1").config
    with pytest.raises(IntegrityError, match="metrics.json"):
        run_task("classifier.report", {**report_cfg, "out": "reports/q1-mlp/again"}, uri)
    # a promotion of a damaged model: refused, the champion untouched
    champion = st.get_bytes("models/q1-mlp-smoke/champion.json")
    truncate(st, f"{first['train'][CELL]}/last.pt")
    with pytest.raises(IntegrityError, match="last.pt"):
        run_task("model.promote", {"question": "q1-mlp-smoke", "run_id": "X", "metric":
                                   "test/accuracy", "value": 1.0, "model": first["train"][CELL],
                                   "out": "runs/q1-mlp/X/promote"}, uri)
    assert st.get_bytes("models/q1-mlp-smoke/champion.json") == champion
    # the final report shows the damaged question as such
    truncate(st, first["report"]["report.md"])
    final = run_task("report.final", {"out": "reports/final/t", "questions": ["q1-mlp"]}, uri)
    assert final.metrics["questions"]["q1-mlp"].startswith("damaged:")
    # --refresh recomputes the damaged steps
    again = q1_mlp(profile="smoke", store=uri, overrides=TINY, run_id="R2", refresh=True)
    assert verify(st, read_manifest(st, again["eval"][CELL])) == []


def test_a_damaged_checkpoint_is_set_aside_and_training_restarts_from_a_good_one(tmp_path,
                                                                                 monkeypatch):
    from tasks.q1 import train as q1train

    uri = f"file://{tmp_path / 's'}"
    st = open_store(uri)
    data = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 300,
                                            "n_test": 200}, uri).prefix
    cfg = {"data": data, "model": "cnn_pool_bn", "epochs": 4, "batch_size": 64,
           "dev_fraction": 0.5, "device": "cpu", "seed": 3}
    whole = run_task("classifier.train", {**cfg, "out": "r/whole"}, uri)
    real = q1train.train_one_epoch
    calls = {"n": 0}

    def crash_on_fourth(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash in epoch 4")
        return real(*a, **k)

    monkeypatch.setattr(q1train, "train_one_epoch", crash_on_fourth)
    with pytest.raises(RuntimeError, match="simulated"):
        run_task("classifier.train", {**cfg, "out": "r/crashed"}, uri)
    monkeypatch.setattr(q1train, "train_one_epoch", real)
    assert find_manifest(st, "r/crashed") is None
    truncate(st, "r/crashed/last.pt")  # what a disk or a kill mid-upload leaves
    resumed = run_task("classifier.train", {**cfg, "out": "r/crashed"}, uri)
    # set aside (not deleted), and the epochs after the good checkpoint came out the same
    assert any(k.endswith("r/crashed/last.pt") for k in st.list("trash"))
    assert resumed.metrics["dev/accuracy"] == whole.metrics["dev/accuracy"]
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"]
                                                         for h in whole.history]


# ---------------------------------------------------------------- shared datasets

def test_generated_datasets_are_the_same_bytes_every_time(tmp_path):
    from tasks.q1.data import generate_files

    a = generate_files(tmp_path / "a", 50, 20, seed=1)
    time.sleep(1.1)  # the gzip header held the time before: a second later, other bytes
    b = generate_files(tmp_path / "b", 50, 20, seed=1)
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_concurrent_fetches_publish_one_whole_dataset(how, store_uri):
    cfg = {"source": "generate", "n_train": 2000, "n_test": 500, "seed": 7}
    if how == "threads":
        results: list = [None, None]
        barrier = threading.Barrier(2)

        def fetch(i: int) -> None:
            barrier.wait()
            results[i] = run_task("fashion-mnist.fetch", cfg, store_uri)

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        manifests = [r.model_dump(mode="json") for r in results]
    else:
        procs = [subprocess.Popen([sys.executable, "-m", "tasks", "fashion-mnist.fetch",
                                   "--config-json", json.dumps(cfg), "--store", store_uri],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
        manifests = [json.loads(o[0]) for o in outs]
    st = open_store(store_uri)
    published = read_manifest(st, manifests[0]["prefix"])
    # both runs answer with the one published copy, which is whole
    assert manifests[0]["outputs"] == manifests[1]["outputs"] == published.outputs
    assert verify(st, published) == []
    from tasks.q1.data import load_arrays

    assert load_arrays(st, published.prefix)["train_images"].shape == (2000, 28, 28)
    # the losing attempt removed its own objects: only the published folder remains
    folders = {k.split("/")[3] for k in st.list(published.prefix) if k.count("/") >= 4}
    assert len(folders) == 1


# ---------------------------------------------------------------- the working directory

def test_a_tasks_or_reports_folder_in_the_working_directory_changes_nothing(tmp_path,
                                                                            shared_prefect):
    """``python -m tasks`` puts the working directory first on sys.path: a user's own
    ``reports/`` or ``tasks/`` folder would shadow ours. Children run ``python -P``."""
    work = tmp_path / "w"
    for pkg in ("tasks", "reports", "flows"):
        (work / pkg).mkdir(parents=True)
        (work / pkg / "__init__.py").write_text("raise ImportError('the wrong package')\n")
    res = cli(["run", "q1-mlp", "--launcher", "subprocess", "--store",
               f"file://{tmp_path / 's'}", *sum((["--set", f"{k}={json.dumps(v)}"] for k, v in
                                                 TINY.items()), [])], cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report:" in res.stdout


# ---------------------------------------------------------------- full and read-only disks

def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("mounting a tmpfs needs root (and CAP_SYS_ADMIN)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.parametrize("launcher", ["local", "subprocess"])
def test_a_full_store_is_one_line_exit_2_and_earlier_results_stay(small_disk, launcher,
                                                                  tmp_path, shared_prefect):
    uri = f"file://{small_disk}/store"
    sets = sum((["--set", f"{k}={json.dumps(v)}"] for k, v in TINY.items()), [])
    first = cli(["run", "q1-mlp", "--store", uri, "--run-id", "A", "--launcher", launcher,
                 *sets], env={"VF_MIN_FREE_MB": "1"})
    assert first.returncode == 0, first.stderr[-2000:]
    # the start-up check refuses a store under the free-space floor, before any work
    low = cli(["run", "q1-mlp", "--store", uri, "--run-id", "B", *sets])
    assert low.returncode == 2 and "MB floor (VF_MIN_FREE_MB)" in low.stderr.splitlines()[-1]
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * max(0, free - 200_000))
    full = cli(["run", "q1-mlp", "--store", uri, "--run-id", "B", "--launcher", launcher,
                *sets, "--set", "epochs=2"], env={"VF_MIN_FREE_MB": "0"})
    last = full.stderr.strip().splitlines()[-1]
    assert full.returncode == 2, full.stderr[-2000:]
    assert last.startswith("error: cannot write ") and "the disk is full (ENOSPC)" in last
    assert str(small_disk) in last and "Traceback" not in last
    st = open_store(uri)
    for prefix in (f"runs/q1-mlp/A/train-{CELL}", f"runs/q1-mlp/A/eval-{CELL}"):
        assert verify(st, read_manifest(st, prefix)) == []  # earlier results intact
    assert find_manifest(st, ["runs/q1-mlp/B", "manifest.json"][0]) is None


def test_a_read_only_store_is_refused_at_start(small_disk, shared_prefect):
    (small_disk / "store").mkdir()
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)],
                          capture_output=True).returncode == 0
    res = cli(["run", "q1-mlp", "--store", f"file://{small_disk}/store"])
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "the file system is read-only (EROFS)" in last and str(small_disk) in last


# ---------------------------------------------------------------- S3 start-up check

def test_s3_start_up_check_rides_out_a_restart_and_states_the_real_wait(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    from tasks.core.errors import StoreError
    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("VF_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="vf-check")
    server.stop()
    try:
        monkeypatch.setenv("VF_S3_RETRY_SECONDS", "2")
        started = time.monotonic()
        with pytest.raises(StoreError) as err:
            open_store("s3://vf-check/vf").check()
        waited = time.monotonic() - started
        said = float(str(err.value).split("gave up after ")[1].split("s")[0])
        assert abs(said - waited) < 1.0 and "budget 2s" in str(err.value)
        # the endpoint comes back within the budget: the check waits for it and passes
        monkeypatch.setenv("VF_S3_RETRY_SECONDS", "30")
        timer = threading.Timer(3.0, server.start)
        timer.start()
        started = time.monotonic()
        open_store("s3://vf-check/vf").check()  # moto keeps its buckets in the process
        assert time.monotonic() - started >= 2.5
        timer.join()
    finally:
        server.stop()
