"""STL10 data task: the generator's files in torchvision's reader, the store copy, the fetch
paths (mirror, archive, download) and their failures."""

from __future__ import annotations

import re
import socket
import tarfile

import numpy as np
import pytest

from tasks.core.errors import DataError
from tasks.core.files import md5_file
from tasks.core.store import open_store
from tasks.q2.data import (
    CLASSES,
    FOLDER,
    generate_arrays,
    generate_files,
    load_split,
    read_images,
    read_labels,
    torchvision_dataset,
)
from tasks.registry import run_task


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("stl10")
    files = generate_files(root, n_train=60, n_test=40, n_unlabeled=7, seed=3)
    md5 = {p.name: md5_file(p) for k, p in files.items() if k.endswith(("_x", "_y"))}
    return root, files, md5


def test_generated_files_load_through_torchvision_stl10(generated):
    from torchvision.datasets import STL10

    root, files, md5 = generated
    train = torchvision_dataset(root, "train", md5)
    test = torchvision_dataset(root, "test", md5)
    unlabeled = torchvision_dataset(root, "unlabeled", md5)
    assert isinstance(train, STL10)
    assert train.data.shape == (60, 3, 96, 96) and train.data.dtype == np.uint8
    assert test.data.shape == (40, 3, 96, 96) and unlabeled.data.shape == (7, 3, 96, 96)
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert np.bincount(train.labels, minlength=10).tolist() == [6] * 10
    assert set(unlabeled.labels.tolist()) == {-1}
    assert train.classes == CLASSES
    # torchvision's reader and ours agree pixel for pixel and label for label
    assert np.array_equal(train.data, read_images(files["train_x"]))
    assert np.array_equal(test.labels, read_labels(files["test_y"]))
    img, label = train[0]
    assert img.size == (96, 96) and img.mode == "RGB" and label == int(train.labels[0])
    fold = torchvision_dataset(root, "train", md5, folds=0)
    assert len(fold) == 12  # a fifth of the training images, like 1,000 of 5,000


def test_torchvision_integrity_check_still_runs(tmp_path):
    files = generate_files(tmp_path, n_train=20, n_test=10, n_unlabeled=0)
    md5 = {p.name: md5_file(p) for k, p in files.items() if k.endswith(("_x", "_y"))}
    raw = bytearray(files["test_x"].read_bytes())
    raw[100] ^= 0xFF
    files["test_x"].write_bytes(bytes(raw))
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        torchvision_dataset(tmp_path, "test", md5)


def test_generator_is_deterministic_and_class_dependent():
    a, ya = generate_arrays(200, seed=5)
    b, yb = generate_arrays(200, seed=5)
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    assert not np.array_equal(a, generate_arrays(200, seed=6)[0])
    means = np.stack([a[ya == c].reshape(-1, 3, 96 * 96).mean((0, 2)) for c in range(10)])
    # per-class mean colours differ far more than the noise would make them
    gaps = [np.abs(means[i] - means[j]).max() for i in range(10) for j in range(i + 1, 10)]
    assert min(gaps) > 5 and a.min() == 0 and a.max() == 255


def test_fetch_generate_into_store_with_checksums(tmp_path, monkeypatch):
    uri = f"file://{tmp_path / 'store'}"
    cfg = {"source": "generate", "n_train": 30, "n_test": 20, "seed": 1}
    m = run_task("stl10.fetch", cfg, uri)
    st = open_store(uri)
    assert m.prefix.startswith("data/stl10/synthetic-")
    assert m.metrics["counts"] == {"train": 30, "test": 20}
    assert set(m.outputs) == {"train_x", "train_y", "test_x", "test_y", "class_names",
                              "fold_indices"}  # no unlabeled file unless asked for
    # published under this fetch's own folder (v-<token>), by a conditional manifest write
    assert re.fullmatch(rf"{m.prefix}/v-[0-9a-f]{{8}}/{FOLDER}/train_X.bin", m.outputs["train_x"])
    assert len(m.metrics["md5"]) == 6 and all(len(v) == 64 for v in m.metrics["sha256"].values())
    x, y = load_split(st, m.prefix, "train")
    assert x.shape == (30, 3, 96, 96) and y.shape == (30,) and y.max() <= 9
    again = run_task("stl10.fetch", cfg, uri)  # reused, not regenerated
    assert again.finished_at == m.finished_at
    # a damaged store copy is caught by its sha256 (on a machine without a cached copy)
    st.put_bytes(m.outputs["test_x"], b"\0" * (3 * 96 * 96))
    monkeypatch.setenv("VF_CACHE_DIR", str(tmp_path / "fresh-cache"))
    with pytest.raises(DataError, match="sha256.*damaged: rerun the flow"):
        load_split(st, m.prefix, "test")
    # ... and the next fetch finds the damage and repairs it
    repaired = run_task("stl10.fetch", cfg, uri)
    assert repaired.finished_at != m.finished_at and repaired.outputs["test_x"] != m.outputs[
        "test_x"]
    assert load_split(st, m.prefix, "test")[0].shape == (20, 3, 96, 96)


def test_fetch_with_unlabeled_when_asked(tmp_path):
    m = run_task("stl10.fetch", {"source": "generate", "n_train": 10, "n_test": 10,
                                 "n_unlabeled": 5, "include_unlabeled": True},
                 f"file://{tmp_path}/s")
    assert "unlabeled_x" in m.outputs


def test_mirror_must_hold_the_official_files(generated, tmp_path):
    root, _files, _md5 = generated
    store = f"file://{tmp_path}/s"
    with pytest.raises(DataError, match="does not match the published"):
        run_task("stl10.fetch", {"source": "download", "mirror": str(root)}, store)
    with pytest.raises(DataError, match="neither a folder nor"):
        run_task("stl10.fetch", {"source": "download", "mirror": str(tmp_path / "nope")}, store)
    (tmp_path / "empty" / FOLDER).mkdir(parents=True)
    with pytest.raises(DataError, match="lacks train_X.bin"):
        run_task("stl10.fetch", {"source": "download", "mirror": str(tmp_path / "empty")},
                 store)
    archive = tmp_path / "stl10_binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / FOLDER, arcname=FOLDER)
    with pytest.raises(DataError, match="archive is corrupt"):
        run_task("stl10.fetch", {"source": "download", "mirror": str(archive)}, store)
    assert not (tmp_path / "s").exists() or not open_store(store).list()


def test_download_refused_offline_and_failing_clearly(tmp_path, monkeypatch):
    store = f"file://{tmp_path}/s"
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(DataError, match="not available offline.*data.mirror"):
        run_task("stl10.fetch", {"source": "download"}, store)
    monkeypatch.delenv("VF_OFFLINE")

    with socket.socket() as s:  # a port nothing listens on: the download is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr("torchvision.datasets.STL10.url", f"http://127.0.0.1:{port}/x.tar.gz")
    monkeypatch.setattr("tasks.inputs.download.time.sleep", lambda s: None)
    with pytest.raises(DataError, match="download failed.*Connection refused.*data.mirror"):
        run_task("stl10.fetch", {"source": "download"}, store)
