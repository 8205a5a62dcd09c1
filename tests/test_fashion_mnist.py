from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from tasks.core.errors import DataError
from tasks.core.store import open_store
from tasks.q1.data import (
    FILES,
    generate_files,
    load_arrays,
    read_idx,
    write_idx,
)
from tasks.registry import run_task


def test_generated_files_load_through_torchvision(tmp_path):
    from torchvision.datasets import FashionMNIST

    files = generate_files(tmp_path / "gen", n_train=120, n_test=40, seed=3)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in files.values():  # torchvision reads the extracted files, as after download
        with gzip.open(path) as s, open(raw / path.name[:-3], "wb") as d:
            shutil.copyfileobj(s, d)
    train = FashionMNIST(str(tmp_path / "root"), train=True, download=False)
    test = FashionMNIST(str(tmp_path / "root"), train=False, download=False)
    assert train.data.shape == (120, 28, 28) and test.data.shape == (40, 28, 28)
    assert set(train.targets.tolist()) == set(range(10))
    ours = read_idx(files["train_images"])
    assert np.array_equal(train.data.numpy(), ours)


def test_generator_is_deterministic_and_class_dependent(tmp_path):
    a = generate_files(tmp_path / "a", 200, 50, seed=1)
    b = generate_files(tmp_path / "b", 200, 50, seed=1)
    for key in FILES:
        assert np.array_equal(read_idx(a[key]), read_idx(b[key]))
    x, y = read_idx(a["train_images"]).astype(float), read_idx(a["train_labels"])
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    # class means differ far more than noise would make them
    assert np.abs(means[0] - means[5]).mean() > 10


@pytest.mark.parametrize("damage", ["truncate", "magic", "garbage"])
def test_corrupt_idx_is_rejected(tmp_path, damage):
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, np.zeros((5, 28, 28), np.uint8))
    raw = gzip.decompress(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(gzip.compress(raw[:-100]))
    elif damage == "magic":
        path.write_bytes(gzip.compress(b"\x01\x02" + raw[2:]))
    else:
        path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match=path.name):
        read_idx(path)


def test_fetch_generate_into_store_and_reuse(store_uri):
    cfg = {"source": "generate", "n_train": 100, "n_test": 50}
    m = run_task("fashion-mnist.fetch", cfg, store_uri)
    assert m.prefix.startswith("data/fashion-mnist/synthetic-")
    assert m.metrics["counts"] == {"train_images": 100, "train_labels": 100,
                                   "test_images": 50, "test_labels": 50}
    assert all(len(v) == 64 for v in m.metrics["sha256"].values())
    again = run_task("fashion-mnist.fetch", cfg, store_uri)
    assert again.finished_at == m.finished_at  # reused, not refetched
    arrays = load_arrays(open_store(store_uri), m.prefix)
    assert arrays["test_images"].shape == (50, 28, 28)


def test_fetch_from_mirror_checks_md5(tmp_path):
    mirror = tmp_path / "mirror"
    generate_files(mirror, 20, 10)
    with pytest.raises(DataError, match="does not match the published"):
        run_task("fashion-mnist.fetch", {"source": "download", "mirror": str(mirror)},
                 str(tmp_path / "store"))
    assert not open_store(str(tmp_path / "store")).list()  # nothing half-written


def test_fetch_from_uncompressed_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    files = generate_files(tmp_path / "gen", 20, 10)
    mirror.mkdir()
    for path in files.values():
        (mirror / path.name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))
    m = run_task("fashion-mnist.fetch", {"source": "download", "mirror": str(mirror)},
                 str(tmp_path / "store"))
    assert m.prefix == "data/fashion-mnist/official"
    assert m.metrics["counts"]["train_images"] == 20


def test_download_fails_fast_offline(tmp_path):
    # the network guard refuses non-loopback connections: a clear DataError, nothing stored
    with pytest.raises(DataError, match="data.mirror"):
        run_task("fashion-mnist.fetch", {"source": "download"}, str(tmp_path / "store"))
    assert not open_store(str(tmp_path / "store")).list()


def test_mirror_missing_folder(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        run_task("fashion-mnist.fetch", {"source": "download", "mirror": str(tmp_path / "no")},
                 str(tmp_path / "store"))
