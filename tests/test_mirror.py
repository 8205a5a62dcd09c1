"""Air-gapped operation: ``visionflows mirror`` against a local HTTP server (127.0.0.1) serving
generated files in the real layouts, the resolvers' order (explicit location > the store's
mirror index > the local cache > the internet) and their offline messages per input kind,
and a ``full`` q1-mlp run with the network blocked.

Generated files cannot carry the published checksums, so the tests swap the published
tables for the generated files' own: the md5 tables the fetchers (and the catalog) read,
and the weights' URLs, whose file names carry the sha256 prefix (``resnet18-<sha8>.pth``).
Everything else (the catalog's structure, the URLs' paths, the layouts) is the real one.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import socket
import tarfile
import urllib.parse
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks import catalog as M
from tasks.core.errors import ConfigError, DataError
from tasks.core.files import cache_dir, md5_file, sha256_file
from tasks.core.runtime import read_manifest
from tasks.core.store import open_store
from tasks.inputs import mirror_index as MI
from tasks.inputs import weights as W
from tasks.q1 import data as FM
from tasks.q2 import data as S10
from tasks.q4.data import EXPORT_MIRROR_NAME
from tasks.registry import run_task
from tests.http_support import file_server

LOG = logging.getLogger("test-mirror")
FASHION_URL_DIR = "/"  # FashionMNIST.mirrors[0] is a host root
STL10_PATH = "/~acoates/stl10/stl10_binary.tar.gz"
YOLO_DIR = "/ultralytics/assets/releases/download/v8.4.0"
SECRET = "s3cr3t-roboflow-key"


# ---------------------------------------------------------------- the source server

def _fake_pth(folder: Path, stem: str, content: bytes) -> Path:
    """A checkpoint named like torchvision's: ``<stem>-<first 8 hex of its sha256>.pth``."""
    name = f"{stem}-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    (folder / name).write_bytes(content)
    return folder / name


def _fake_torch_zip(path: Path, seed: int) -> Path:
    """What ultralytics' .pt files are to a structure check: a torch.save zip over 100 kB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", hashlib.sha256(str(seed).encode()).digest() * 5000)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving every catalogued file at its published URL path.

    Requests are recorded (path, Range header); ``ranges`` switches HTTP Range support.
    """
    from tasks.q4.shapes import generate_export

    root = tmp_path_factory.mktemp("published")
    fashion = FM.generate_files(root, n_train=300, n_test=100, seed=5)
    stl_src = tmp_path_factory.mktemp("stl10-src")
    stl_files = S10.generate_files(stl_src, n_train=20, n_test=20, n_unlabeled=0, seed=1)
    tgz = root / STL10_PATH.lstrip("/")
    tgz.parent.mkdir(parents=True)
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(stl_src / S10.FOLDER, arcname=S10.FOLDER)
    models = root / "models"
    models.mkdir()
    resnet = _fake_pth(models, "resnet18", b"fake resnet18 weights " * 100)
    vgg = _fake_pth(models, "vgg16", b"fake vgg16 weights " * 100)
    deeplab = _fake_pth(models, "deeplabv3_resnet50_coco", b"fake deeplab weights " * 100)
    yolo = {n: _fake_torch_zip(root / YOLO_DIR.lstrip("/") / n, i)
            for i, n in enumerate(("yolov5su.pt", "yolov5xu.pt"))}
    export_dir = generate_export(tmp_path_factory.mktemp("export"), 4, 2, 0, image_size=64,
                                 max_objects=2, seed=1)
    export = root / "ds" / "export.zip"
    export.parent.mkdir()
    with zipfile.ZipFile(export, "w") as zf:
        for p in sorted(export_dir.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(export_dir).as_posix())

    with file_server(root) as srv:
        base = srv.base
        yield SimpleNamespace(
            base=base, root=root, requests=srv.requests, state=srv.state, fashion=fashion,
            stl_files=stl_files, stl_src=stl_src, tgz=tgz, resnet=resnet, vgg=vgg,
            deeplab=deeplab, yolo=yolo, export=export,
            export_url=f"{base}/ds/export.zip?key={SECRET}")


@pytest.fixture(autouse=True)
def published(served, monkeypatch, tmp_path):
    """The generated files stand in for the published ones (see the module docstring); each
    test gets its own cache and torch hub folder, and downloads allowed unless it says."""
    import torchvision.models

    for name, path in ((p.name, p) for p in served.fashion.values()):
        monkeypatch.setitem(FM.MD5, name, md5_file(path))
    for path in served.stl_files.values():
        if path.name in S10.MD5:
            monkeypatch.setitem(S10.MD5, path.name, md5_file(path))
    monkeypatch.setattr(S10, "TGZ_MD5", md5_file(served.tgz))
    files = {"ResNet18_Weights.IMAGENET1K_V1": served.resnet.name,
             "VGG16_Weights.IMAGENET1K_V1": served.vgg.name,
             "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1": served.deeplab.name}
    monkeypatch.setattr(torchvision.models, "get_weight", lambda name: SimpleNamespace(
        url=f"https://download.pytorch.org/models/{files[name]}"))
    monkeypatch.setenv("VF_CACHE_DIR", str(tmp_path / "vf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("VF_OFFLINE", raising=False)
    monkeypatch.delenv(M.SOURCE_BASE_ENV, raising=False)
    served.requests.clear()
    served.state["ranges"] = True
    return served


@pytest.fixture
def cli_logging():
    """``main`` adds a stderr handler to our logger (bound to this test's captured stderr)
    and sets its level: undo both afterwards."""
    logger = logging.getLogger("visionflows")
    handlers, level = list(logger.handlers), logger.level
    yield
    for h in logger.handlers[:]:
        if h not in handlers:
            logger.removeHandler(h)
    logger.setLevel(level)


def _mirror(store, questions, served, **kw):
    return M.mirror(store, questions, source_base=served.base, progress=False, **kw)


# ---------------------------------------------------------------- catalog

def test_catalog_comes_from_the_libraries_metadata(monkeypatch):
    """Unpatched: torchvision's URLs and md5 sums, the weights enums' URLs, ultralytics'
    release, and the models of each question's ``full`` profile."""
    monkeypatch.undo()
    from torchvision.datasets import STL10, FashionMNIST

    entries = {e.name: e for e in M.catalog()}
    for filename, md5 in FashionMNIST.resources:
        e = entries[f"fashion-mnist/{filename}"]
        assert e.md5 == md5 and e.url == FashionMNIST.mirrors[0] + filename
        assert e.questions == ("q1-mlp", "q1-cnn") and e.key == f"mirror/fashion-mnist/{filename}"
    stl = entries["stl10/stl10_binary.tar.gz"]
    assert (stl.url, stl.md5) == (STL10.url, STL10.tgz_md5)
    resnet = entries["weights/torchvision/resnet18-f37072fd.pth"]
    assert resnet.url == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert resnet.sha256_prefix == "f37072fd"
    assert entries["weights/torchvision/vgg16-397923af.pth"].sha256_prefix == "397923af"
    deeplab = entries["weights/torchvision/deeplabv3_resnet50_coco-cd0a2569.pth"]
    assert deeplab.questions == ("q3-segmentation",) and deeplab.sha256_prefix == "cd0a2569"
    for n in ("yolov5su.pt", "yolov5xu.pt"):
        e = entries[f"weights/ultralytics/{n}"]
        assert e.url == f"https://github.com/ultralytics/assets/releases/download/v8.4.0/{n}"
        assert e.check == "torch" and e.md5 is None
    assert len(entries) == 10 and EXPORT_MIRROR_NAME not in entries  # the export needs a URL
    with_export = M.catalog("q4-yolo", "https://example.org/ds/x?key=k")
    assert [e.name for e in with_export][-1] == EXPORT_MIRROR_NAME
    assert [e.name for e in M.catalog("q1-cnn,q3-segmentation")] == [
        *(f"fashion-mnist/{f}" for f in FM.FILES.values()), deeplab.name]
    with pytest.raises(ConfigError, match="unknown question.*q9"):
        M.catalog(["q1-mlp", "q9"])
    with pytest.raises(ConfigError, match="add q4-yolo"):
        M.catalog("q1-mlp", "https://example.org/x.zip")


# ---------------------------------------------------------------- mirror

def test_mirror_writes_index_skips_then_refetches_corrupt(store_uri, served):
    store = open_store(store_uri)
    results = _mirror(store, None, served, q4_export_url=served.export_url)
    assert [r.status for r in results] == ["fetched"] * 11, results
    index = store.get_json(MI.INDEX_KEY)
    assert index["version"] == 1 and len(index["entries"]) == 11
    for r in results:
        rec = index["entries"][r.name]
        assert {"name", "url", "sha256", "size", "date", "key", "questions"} <= set(rec)
        data = store.get_bytes(rec["key"])
        assert rec["key"] == f"mirror/{r.name}" and len(data) == rec["size"] == r.size
        assert hashlib.sha256(data).hexdigest() == rec["sha256"] == r.sha256
    rec = index["entries"]["fashion-mnist/train-images-idx3-ubyte.gz"]
    assert rec["url"] == ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
                          "train-images-idx3-ubyte.gz")  # the published URL ...
    assert rec["fetched_from"].startswith(served.base)  # ... and where it came from here
    assert rec["md5"] == FM.MD5["train-images-idx3-ubyte.gz"] and "published" in rec["verified"]
    export = index["entries"][EXPORT_MIRROR_NAME]
    assert export["url"] == f"{served.base}/ds/export.zip"  # no query string, no key
    assert SECRET not in store.get_text(MI.INDEX_KEY)
    assert len(served.requests) == 11

    # a second run verifies what is stored and downloads nothing
    served.requests.clear()
    again = _mirror(store, None, served, q4_export_url=served.export_url)
    assert [r.status for r in again] == ["skipped"] * 11 and served.requests == []

    # a corrupted object and a deleted one are fetched again; the rest is skipped
    store.put_bytes("mirror/fashion-mnist/train-images-idx3-ubyte.gz", b"bit rot")
    store.delete(f"mirror/weights/torchvision/{served.vgg.name}")
    third = {r.name: r.status for r in _mirror(store, None, served,
                                               q4_export_url=served.export_url)}
    assert third.pop("fashion-mnist/train-images-idx3-ubyte.gz") == "re-fetched"
    assert third.pop(f"weights/torchvision/{served.vgg.name}") == "re-fetched"
    assert set(third.values()) == {"skipped"}
    assert sorted(p for p, _ in served.requests) == sorted(
        ["/train-images-idx3-ubyte.gz", f"/models/{served.vgg.name}"])
    assert store.get_bytes("mirror/fashion-mnist/train-images-idx3-ubyte.gz") == \
        served.fashion["train_images"].read_bytes()


def test_a_file_failing_its_checksum_is_not_stored(tmp_path, served, monkeypatch, capsys,
                                                   cli_logging):
    from flows.cli import main

    monkeypatch.setitem(FM.MD5, "t10k-labels-idx1-ubyte.gz", "0" * 32)
    monkeypatch.setenv(M.SOURCE_BASE_ENV, served.base)
    uri = f"file://{tmp_path / 'store'}"
    assert main(["mirror", "--store", uri, "--questions", "q1-mlp", "--no-progress"]) == 1
    out = capsys.readouterr()
    assert "failed" in out.out and "does not match the published 000" in out.out
    assert "1 of 4 failed" in out.err
    store = open_store(uri)
    entries = MI.read_index(store)
    assert sorted(entries) == sorted(f"fashion-mnist/{f}" for f in FM.FILES.values()
                                     if f != "t10k-labels-idx1-ubyte.gz")
    assert not store.exists("mirror/fashion-mnist/t10k-labels-idx1-ubyte.gz")
    assert not list((tmp_path / "vf-cache" / "mirror-partial").iterdir())  # nothing left
    # with the right table it completes, fetching only the missing file
    monkeypatch.setitem(FM.MD5, "t10k-labels-idx1-ubyte.gz",
                        md5_file(served.fashion["test_labels"]))
    served.requests.clear()
    assert main(["mirror", "--store", uri, "--questions", "q1-mlp,q1-cnn", "--no-progress"]) == 0
    assert [p for p, _ in served.requests] == ["/t10k-labels-idx1-ubyte.gz"]
    assert "index: " + store.url(MI.INDEX_KEY) in capsys.readouterr().out
    monkeypatch.setenv("VF_OFFLINE", "1")  # mirror downloads: refused offline, by name
    assert main(["mirror", "--store", uri]) == 2
    assert "cannot run with VF_OFFLINE=1" in capsys.readouterr().err


def test_interrupted_download_resumes(tmp_path, served):
    """A partial file left by an interrupted run continues with an HTTP Range request; a
    partial file that is not a prefix of the real one fails the check and starts over; a
    server without Range support sends the whole file."""
    store = open_store(f"file://{tmp_path / 'store'}")
    entry = next(e for e in M.catalog("q2-transfer") if e.name == "stl10/stl10_binary.tar.gz")
    whole = served.tgz.read_bytes()
    part = cache_dir("mirror-partial") / "stl10__stl10_binary.tar.gz.part"
    part.write_bytes(whole[: len(whole) // 2])
    [r] = _mirror(store, None, served, entries=[entry])
    assert r.status == "fetched" and store.get_bytes(entry.key) == whole
    assert served.requests == [(STL10_PATH, f"bytes={len(whole) // 2}-")]
    assert not part.exists()

    store.delete(entry.key)
    served.requests.clear()
    part.write_bytes(b"not the start of the archive")
    [r] = _mirror(store, None, served, entries=[entry])
    assert r.status == "re-fetched" and store.get_bytes(entry.key) == whole
    assert [h for _, h in served.requests] == ["bytes=28-", None]  # resumed, failed, again

    store.delete(entry.key)
    served.requests.clear()
    served.state["ranges"] = False
    part.write_bytes(whole[:1000])
    [r] = _mirror(store, None, served, entries=[entry])
    assert r.status == "re-fetched" and store.get_bytes(entry.key) == whole
    assert len(served.requests) == 1  # the server ignored Range: one whole download


def test_lookup_verifies_and_explains(store_uri, served):
    store = open_store(store_uri)
    name = f"weights/torchvision/{served.resnet.name}"
    path, why = MI.lookup(store, name)
    assert path is None and why == f"mirror index {store.url(MI.INDEX_KEY)}: no entry {name}"
    _mirror(store, "q2-transfer", served)
    path, where = MI.lookup(store, name)
    assert path.read_bytes() == served.resnet.read_bytes() and where == store.url(f"mirror/{name}")
    if store_uri.startswith("s3://"):  # copied into the cache once, reused afterwards
        assert path.is_relative_to(cache_dir("mirror"))
        assert MI.lookup(store, name)[1].endswith("(cached copy)")
    store.put_bytes(f"mirror/{name}", b"tampered")
    if store_uri.startswith("s3://"):
        path.unlink()
    path, why = MI.lookup(store, name)
    assert path is None and "is corrupt" in why and "visionflows mirror" in why
    store.delete(f"mirror/{name}")
    path, why = MI.lookup(store, name)
    assert path is None and "is missing" in why
    assert MI.lookup(None, name) == (None, "mirror index: no store given")


# ---------------------------------------------------------------- resolvers, per input kind

def test_fashion_mnist_order_and_offline_message(tmp_path, served, monkeypatch):
    store = open_store(f"file://{tmp_path / 'store'}")
    _mirror(store, "q1-mlp", served)
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    raw = cache_dir("torchvision") / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in served.fashion.values():
        shutil.copyfile(path, explicit / path.name)
        (raw / path.name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))  # extracted

    def source(**cfg) -> str:
        store.delete("data/fashion-mnist/official/manifest.json")
        return run_task("fashion-mnist.fetch", {"source": "download", **cfg}, store
                        ).inputs["source"]

    assert source(mirror=str(explicit)) == f"mirror:{explicit}"      # 1. explicit location
    assert source() == f"mirror-index:{store.url('mirror/fashion-mnist')}"  # 2. the index
    store.delete(MI.INDEX_KEY)
    assert source() == f"cache:{raw}"                                # 3. the local cache
    shutil.rmtree(raw)
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(DataError) as err:                            # offline: stop here
        source()
    msg = str(err.value)
    assert msg.startswith("Fashion-MNIST (train-images-idx3-ubyte.gz") and "VF_OFFLINE=1" in msg
    assert f"`visionflows mirror --questions q1-mlp,q1-cnn --store {store.uri}`" in msg
    assert f"mirror index {store.url(MI.INDEX_KEY)}: no entry fashion-mnist/" in msg
    assert "data.mirror=DIR" in msg
    monkeypatch.delenv("VF_OFFLINE")
    with pytest.raises(DataError, match="download failed"):          # 4. the internet (refused
        source()                                                     #    by the test guard)


def test_stl10_order_and_offline_message(tmp_path, served, monkeypatch):
    store = open_store(f"file://{tmp_path / 'store'}")
    _mirror(store, None, served, entries=[e for e in M.catalog("q2-transfer")
                                          if e.name == "stl10/stl10_binary.tar.gz"])
    cached = cache_dir("torchvision") / S10.FOLDER
    shutil.copytree(served.stl_src / S10.FOLDER, cached)

    def source(**cfg) -> str:
        store.delete("data/stl10/official/manifest.json")
        return run_task("stl10.fetch", {"source": "download", **cfg}, store).inputs["source"]

    assert source(mirror=str(served.stl_src)) == f"mirror:{served.stl_src}"
    assert source() == f"mirror-index:{store.url('mirror/stl10/stl10_binary.tar.gz')}"
    m = read_manifest(store, "data/stl10/official")
    assert m.metrics["counts"] == {"train": 20, "test": 20}
    store.delete(MI.INDEX_KEY)
    assert source() == f"cache:{cached}"
    shutil.rmtree(cached)
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        source()
    msg = str(err.value)
    assert msg.startswith("STL10 (stl10_binary.tar.gz) is not available offline")
    assert f"`visionflows mirror --questions q2-transfer --store {store.uri}`" in msg
    assert "data.mirror=" in msg


@pytest.mark.parametrize("kind", ["q2", "q3", "q4"])
def test_weights_order_and_offline_message(kind, tmp_path, served, monkeypatch):
    """The one resolver, for each question's weights: the explicit location, the store's
    mirror index, the cache, a real download (from the loopback server), then offline the
    message naming every place and the mirror command."""
    from tasks.q2.options import weights_spec as q2_spec
    from tasks.q3.segment import weights_spec as q3_spec
    from tasks.q4 import yolo

    question, file, spec = {
        "q2": ("q2-transfer", served.resnet, q2_spec("resnet18")),
        "q3": ("q3-segmentation", served.deeplab, q3_spec("deeplabv3_resnet50")),
        "q4": ("q4-yolo", served.yolo["yolov5su.pt"], yolo.weights_spec("yolov5s.pt")),
    }[kind]
    assert spec.filename == file.name and spec.questions == (question,)
    store = open_store(f"file://{tmp_path / 'store'}")
    _mirror(store, None, served, entries=[e for e in M.catalog(question)
                                          if e.name.startswith("weights/")])
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    shutil.copyfile(file, explicit / file.name)
    got = W.resolve_weights(spec, str(explicit), store)
    assert (got.source, got.path) == ("mirror-folder", str(explicit / file.name))
    got = W.resolve_weights(spec, None, store)
    assert (got.source, got.location) == ("mirror-index", store.url(f"mirror/{spec.index_name}"))
    other = open_store(f"file://{tmp_path / 'no-mirror'}")
    served_spec = W.WeightsSpec(spec.name, served.base + urllib.parse.urlparse(spec.url).path,
                                spec.kind, spec.questions, spec.aliases)
    served.requests.clear()
    got = W.resolve_weights(served_spec, None, other)
    assert got.source == "download" and len(served.requests) == 1
    assert Path(got.path).read_bytes() == file.read_bytes()
    assert W.resolve_weights(served_spec, None, other).source == "cache"
    assert len(served.requests) == 1  # no second download
    Path(got.path).unlink()
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(W.WeightsError) as err:
        W.resolve_weights(served_spec, None, other)
    msg = str(err.value)
    assert file.name in msg and "refused (VF_OFFLINE=1)" in msg and not err.value.transient
    assert f"(2) mirror index {other.url(MI.INDEX_KEY)}: no entry {spec.index_name}" in msg
    assert f"`visionflows mirror --questions {question} --store {other.uri}`" in msg
    assert len(served.requests) == 1


def test_yolo_export_url_order_and_offline_message(tmp_path, served, monkeypatch):
    from tasks.q4.data import acquire

    store = open_store(f"file://{tmp_path / 'store'}")
    _mirror(store, None, served, entries=[
        e for e in M.catalog("q4-yolo", served.export_url) if e.name == EXPORT_MIRROR_NAME])
    served.requests.clear()
    # the mirrored export answers for its URL, whatever the query string (keys rotate)
    root, source = acquire(f"{served.base}/ds/export.zip?key=other", store, tmp_path / "a", LOG)
    assert source == "mirror-index" and (root / "data.yaml").is_file()
    assert served.requests == []
    # another URL is not the mirrored export: it is downloaded (here: not found)
    with pytest.raises(DataError, match="HTTP 404"):
        acquire(f"{served.base}/ds/other.zip", store, tmp_path / "x", LOG)
    assert served.requests == [("/ds/other.zip", None)]
    # without a mirror: downloaded, then found in the local cache
    other = open_store(f"file://{tmp_path / 'no-mirror'}")
    root, source = acquire(served.export_url, other, tmp_path / "b", LOG)
    assert source == "url" and len(served.requests) == 2
    root, source = acquire(served.export_url, other, tmp_path / "c", LOG)
    assert source == "cache" and len(served.requests) == 2
    shutil.rmtree(cache_dir("downloads/yolo-export"))
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        acquire(served.export_url, other, tmp_path / "d", LOG)
    msg = str(err.value)
    assert msg.startswith(f"the Q4 export {served.base}/ds/export.zip is not available offline")
    assert f"visionflows mirror --questions q4-yolo --store {other.uri} --q4-export URL" in msg
    assert SECRET not in msg and len(served.requests) == 2


def test_standard_layout_folders_and_files_work_as_mirrors(tmp_path, served, monkeypatch):
    """Explicit locations in the standard layouts, including the ``mirror/`` folders of a
    ``file://`` store that ``visionflows mirror`` filled (they keep the published names)."""
    from tasks.q2.options import weights_spec as q2_spec
    from tasks.q3.segment import weights_spec as q3_spec
    from tasks.q4 import yolo

    store = open_store(f"file://{tmp_path / 'mirrored'}")
    _mirror(store, None, served)
    runs = open_store(f"file://{tmp_path / 'runs'}")  # another store: no index to fall back on
    mirrored = store.local_path("mirror")
    torchvision_layout = tmp_path / "tv" / "FashionMNIST" / "raw"
    torchvision_layout.mkdir(parents=True)
    for path in served.fashion.values():  # torchvision's own layout, extracted
        (torchvision_layout / path.name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))
    for folder in (mirrored / "fashion-mnist", tmp_path / "tv"):
        runs.delete("data/fashion-mnist/official/manifest.json")
        m = run_task("fashion-mnist.fetch", {"source": "download", "mirror": str(folder)}, runs)
        assert m.inputs["source"] == f"mirror:{folder}"
        assert m.metrics["counts"] == {"train_images": 300, "train_labels": 300,
                                       "test_images": 100, "test_labels": 100}
    for folder in (mirrored / "stl10", served.stl_src, served.stl_src / S10.FOLDER):
        runs.delete("data/stl10/official/manifest.json")  # the archive, the folder, its files
        m = run_task("stl10.fetch", {"source": "download", "mirror": str(folder)}, runs)
        assert m.inputs["source"] == f"mirror:{folder}" and m.metrics["counts"]["test"] == 20
    weights_dir = mirrored / "weights" / "torchvision"
    vgg, resnet = q2_spec("vgg16"), q2_spec("resnet18")
    got = W.resolve_weights(vgg, str(weights_dir), runs)
    assert (got.source, got.path) == ("mirror-folder", str(weights_dir / served.vgg.name))
    got = W.resolve_weights(vgg, str(served.vgg), runs)
    assert (got.source, got.path) == ("mirror-file", str(served.vgg))
    # one .pth is the weights of one model: given for another, it is an error that says so
    # (an explicit location that fails never falls back to anything else)
    with pytest.raises(W.WeightsError, match=f"mirror file .*: not {served.resnet.name}"):
        W.resolve_weights(resnet, str(served.vgg), runs)
    deeplab = q3_spec("deeplabv3_resnet50")
    assert W.resolve_weights(deeplab, str(weights_dir), runs).path == str(
        weights_dir / deeplab.filename)
    assert W.resolve_weights(deeplab, str(served.deeplab), runs).path == str(served.deeplab)
    for mirror in (str(mirrored / "weights" / "ultralytics"),
                   str(mirrored / "weights" / "ultralytics" / "yolov5xu.pt")):
        path, where = yolo.resolve_weights("yolov5x.pt", mirror, runs, LOG)
        source = "mirror-folder" if mirror.endswith("ultralytics") else "mirror-file"
        assert where == f"{source}:{mirrored / 'weights' / 'ultralytics' / 'yolov5xu.pt'}"


# ---------------------------------------------------------------- no network at all

@pytest.mark.parametrize("via", ["store-index", "mirror-folder"])
def test_offline_full_q1_mlp_attempts_no_connection(via, prefect_harness, served, tmp_path,
                                                     monkeypatch, cli_logging):
    """``visionflows run q1-mlp --profile full --offline`` (1 epoch, 200 training images)
    from the store's mirror index or from a mirror folder, with every socket watched.

    Why the flow and not the bare tasks: the point is the whole ``full`` code path,
    Prefect included. Prefect's test server is a local process that the flow reaches over
    127.0.0.1, so the guard lets exactly that port through and records every other
    connection (IPv4/IPv6, any host, loopback too) and every name lookup of a non-local
    host, refusing them; the test asserts that nothing was recorded. (No ``capsys`` here:
    Prefect's console handler keeps the stream of the first flow run of the session.)
    """
    from prefect.settings import PREFECT_API_URL

    from flows.cli import main

    uri = f"file://{tmp_path / 'store'}"
    sets = ["epochs=1", "repeats=1", "batch_sizes=[64]", 'activations=["relu"]',
            'losses=["cross_entropy"]', "train_limit=200", "device=cpu"]
    if via == "store-index":
        _mirror(open_store(uri), "q1-mlp", served)  # before the network goes away
    else:
        sets.append(f"data.mirror={served.root}")
    api_port = int(PREFECT_API_URL.value().split("://", 1)[1].split("/")[0].rsplit(":", 1)[1])
    attempts: list[str] = []
    api_calls: list[tuple] = []  # the guard does see the flow's own (allowed) connections
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def allowed(address) -> bool:
        if not isinstance(address, tuple):  # AF_UNIX: no network
            return True
        host, port = address[0], address[1]
        return host in ("127.0.0.1", "::1", "localhost") and port == api_port

    def connect(self, address):
        if not allowed(address):
            attempts.append(f"connect {address}")
            raise OSError(f"test: network blocked ({address})")
        api_calls.append(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if not allowed(address):
            attempts.append(f"connect_ex {address}")
            return 111
        api_calls.append(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in (None, "127.0.0.1", "::1", "localhost", "0.0.0.0"):
            attempts.append(f"getaddrinfo {host}")
            raise socket.gaierror(f"test: name lookup blocked ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("VF_OFFLINE", "0")  # restored (unset) afterwards, whatever --offline did
    rc = main(["run", "q1-mlp", "--profile", "full", "--offline", "--store", uri,
               *[a for s in sets for a in ("--set", s)]])
    assert rc == 0
    assert os.environ["VF_OFFLINE"] == "1"
    assert attempts == []
    assert any(isinstance(a, tuple) and a[1] == api_port for a in api_calls)
    store = open_store(uri)
    data = read_manifest(store, "data/fashion-mnist/official")
    expected = (f"mirror-index:{store.url('mirror/fashion-mnist')}" if via == "store-index"
                else f"mirror:{served.root}")
    assert data.inputs["source"] == expected
    assert data.metrics["counts"]["train_images"] == 300
    assert data.metrics["sha256"]["train_images"] == sha256_file(served.fashion["train_images"])
    latest = store.get_json("runs/q1-mlp/latest.json")
    flow = store.get_json(latest["manifest"])
    assert flow["profile"] == "full" and flow["data"] == "data/fashion-mnist/official"
    assert flow["config"]["data"]["source"] == "download" and flow["config"]["epochs"] == 1
    assert len(flow["train"]) == 1 and store.exists(flow["report"]["report.html"])
