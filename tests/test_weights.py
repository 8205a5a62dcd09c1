"""The one weights resolver (``tasks.inputs.weights``) and the one downloader under it:
explicit location (file, folder, store key or prefix) -> the store's mirror index -> the
cache -> a download; one check per kind (torchvision: sha256 prefix in the name;
ultralytics: a torch checkpoint); an explicit location that fails is an error, never a
silent fallback. Downloads go to a file server on 127.0.0.1 (the network guard refuses
anything else). The resolution order with the mirror index for each question's weights is
in ``test_mirror.py::test_weights_order_and_offline_message``."""

from __future__ import annotations

import hashlib
import socket
import zipfile

import pytest
import torch

from tasks.core.store import open_store
from tasks.inputs import weights as W
from tasks.q3.segment import build_model, weights_spec
from tests.http_support import file_server


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """An empty, private torch hub cache and visionflows cache for each test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("VF_CACHE_DIR", str(tmp_path / "vf-cache"))
    monkeypatch.delenv("VF_OFFLINE", raising=False)
    return tmp_path / "torch-home"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_weights(tmp_path, content: bytes = b"weights-v1", name: str = "tiny",
                 base: str | None = None) -> tuple[W.WeightsSpec, object]:
    """A file and the spec that publishes it (its name carries its sha256 prefix)."""
    digest = hashlib.sha256(content).hexdigest()
    filename = f"{name}-{digest[:8]}.pth"
    path = tmp_path / "src" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    base = base or f"http://127.0.0.1:{closed_port()}"
    return W.WeightsSpec(f"{name} TEST", f"{base}/{filename}", questions=("q9",)), path


def test_spec_of_the_real_weights():
    spec = weights_spec("deeplabv3_resnet50")
    assert spec.filename == "deeplabv3_resnet50_coco-cd0a2569.pth"
    assert spec.sha256_prefix == "cd0a2569" and spec.kind == "torchvision"
    assert spec.url.startswith("https://") and spec.url.endswith(spec.filename)
    assert weights_spec("deeplabv3_mobilenet_v3_large").sha256_prefix == "fc3c493d"
    assert weights_spec("deeplabv3_resnet101").sha256_prefix == "586e9e4e"
    assert spec.index_name == "weights/torchvision/deeplabv3_resnet50_coco-cd0a2569.pth"


def test_explicit_file_folder_and_store_key_come_first(tmp_path, torch_home):
    spec, src = fake_weights(tmp_path)
    cached = spec.cache_folder() / spec.filename
    assert cached.is_relative_to(torch_home)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(src.read_bytes())
    got = W.resolve_weights(spec, str(src))
    assert (got.source, got.path) == ("mirror-file", str(src))
    assert got.sha256 == hashlib.sha256(b"weights-v1").hexdigest()
    assert W.resolve_weights(spec, str(src.parent)).source == "mirror-folder"
    st = open_store(f"file://{tmp_path / 'store'}")
    st.put_file(f"mirrors/w/{spec.filename}", src)
    for ref in (f"mirrors/w/{spec.filename}", "mirrors/w", "store:mirrors/w",
                st.url("mirrors/w")):
        got = W.resolve_weights(spec, ref, st)
        assert got.source == "mirror-store", ref
        assert got.location.startswith(st.url(f"mirrors/w/{spec.filename}"))
    # without an explicit location: the cache, no download
    assert W.resolve_weights(spec).source == "cache"


@pytest.mark.parametrize("where", ["missing-file", "empty-folder", "store-key"])
def test_explicit_location_that_fails_is_an_error_not_a_fallback(where, tmp_path):
    spec, src = fake_weights(tmp_path)
    cached = spec.cache_folder() / spec.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(src.read_bytes())  # present, yet not used: the user named a location
    st = open_store(f"file://{tmp_path / 'store'}")
    (tmp_path / "empty").mkdir()
    location = {"missing-file": "nope/w.pth", "empty-folder": str(tmp_path / "empty"),
                "store-key": "store:nope"}[where]
    with pytest.raises(W.WeightsError) as err:
        W.resolve_weights(spec, location, st, setting="weights")
    msg = str(err.value)
    assert f"weights={location!r}" in msg and "Tried: (1) mirror" in msg
    assert "Fix weights" in msg and not err.value.transient


def test_a_corrupt_copy_is_refused_by_its_check(tmp_path):
    spec, src = fake_weights(tmp_path)
    src.write_bytes(b"tampered")
    with pytest.raises(W.WeightsError, match="does not start with"):
        W.resolve_weights(spec, str(src.parent))
    cached = spec.cache_folder() / spec.filename
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"half a downlo")
    with pytest.raises(W.WeightsError, match=r"cache .*corrupt, truncated"):
        W.resolve_weights(spec)
    ultra = W.WeightsSpec("u TEST", "http://127.0.0.1:9/u.pt", kind="ultralytics")
    bad = tmp_path / "u.pt"
    bad.write_bytes(b"PK\x03\x04 too small")
    with pytest.raises(W.WeightsError, match="not a torch checkpoint"):
        W.resolve_weights(ultra, str(bad))


def test_download_goes_through_the_one_downloader_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.inputs.download.time.sleep", lambda s: None)
    served = tmp_path / "served"
    served.mkdir()
    with file_server(served) as srv:
        spec, src = fake_weights(tmp_path, base=srv.base)
        (served / spec.filename).write_bytes(src.read_bytes())
        got = W.resolve_weights(spec)
        assert got.source == "download" and srv.requests == [(f"/{spec.filename}", None)]
        assert W.resolve_weights(spec).source == "cache"  # no second download
        # a server that sends other bytes under the published name: refused, nothing kept
        (spec.cache_folder() / spec.filename).unlink()
        (served / spec.filename).write_bytes(b"other bytes")
        with pytest.raises(W.WeightsError) as err:
            W.resolve_weights(spec)
        assert "does not start with the published prefix" in str(err.value)
        assert not (spec.cache_folder() / spec.filename).exists()
        assert not list(spec.cache_folder().glob("*.part"))
        srv.state["fail"] = 503  # a server in trouble: transient, worth retrying later
        with pytest.raises(W.WeightsError) as err:
            W.resolve_weights(spec)
        assert err.value.transient and "HTTP 503" in str(err.value)


def test_offline_error_names_every_place_and_the_fix(monkeypatch):
    monkeypatch.setenv("VF_OFFLINE", "1")
    spec = weights_spec("deeplabv3_resnet50")
    with pytest.raises(W.WeightsError) as err:
        W.resolve_weights(spec, setting="weights")
    msg = str(err.value)
    assert "deeplabv3_resnet50_coco-cd0a2569.pth" in msg
    assert "(1) weights: not set" in msg and "(2) mirror index: no store given" in msg
    assert f"(3) cache: no {spec.cache_folder() / spec.filename}" in msg
    assert f"(4) download from {spec.url}: refused (VF_OFFLINE=1)" in msg
    assert "`visionflows mirror --questions q3-segmentation --store URI`" in msg
    assert "--set weights=DIR" in msg and not err.value.transient


def test_a_closed_port_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.inputs.download.time.sleep", lambda s: None)
    spec, _ = fake_weights(tmp_path)
    with pytest.raises(W.WeightsError) as err:
        W.resolve_weights(spec)
    msg = str(err.value)
    assert "(4) download from" in msg and "refused" in msg.lower() and err.value.transient
    assert not list(spec.cache_folder().glob("*"))  # nothing half-written in the cache


def test_ultralytics_kind_accepts_aliases_in_a_folder(tmp_path):
    from tasks.q4.yolo import weights_spec as yolo_spec

    spec = yolo_spec("yolov5s.pt")
    assert (spec.filename, spec.aliases, spec.kind) == ("yolov5su.pt", ("yolov5s.pt",),
                                                        "ultralytics")
    folder = tmp_path / "w"
    folder.mkdir()
    with zipfile.ZipFile(folder / "yolov5s.pt", "w") as zf:
        zf.writestr("archive/data.pkl", b"x" * 200_000)
    got = W.resolve_weights(spec, str(folder))
    assert (got.source, got.path) == ("mirror-folder", str(folder / "yolov5s.pt"))


def test_mirrored_state_dict_loads_into_the_model(tmp_path):
    """A published-format file (with the aux head, as torchvision's) loads strictly and
    gives the same predictions as the model it came from."""
    torch.manual_seed(5)
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    ref = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21,
                                       aux_loss=True).eval()
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = W.WeightsSpec("mbv3 TEST", f"http://127.0.0.1:9/dl-{digest[:8]}.pth")
    got = W.resolve_weights(spec, str(path))
    model = build_model("deeplabv3_mobilenet_v3_large", pretrained=True, weights=got)
    assert model.aux_classifier is None and not model.training
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x)["out"], ref(x)["out"], atol=1e-5)


def test_wrong_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = W.WeightsSpec("x", f"http://127.0.0.1:9/x-{digest[:8]}.pth")
    got = W.resolve_weights(spec, str(path))
    with pytest.raises(W.WeightsError, match="does not hold deeplabv3_resnet50 weights"):
        build_model("deeplabv3_resnet50", pretrained=True, weights=got)
    path.write_bytes(b"not a torch file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = W.WeightsSpec("x", f"http://127.0.0.1:9/x-{digest[:8]}.pth")
    with pytest.raises(W.WeightsError, match="not a loadable torch weights file"):
        build_model("deeplabv3_resnet50", pretrained=True,
                    weights=W.resolve_weights(spec, str(path)))


def test_segment_task_fails_before_writing_anything_without_weights(tmp_path, monkeypatch):
    from tasks.q3.photos import PACKAGED_IMAGES
    from tasks.q3.segment import IngestConfig, SegmentConfig, ingest, segment

    monkeypatch.setenv("VF_OFFLINE", "1")
    st = open_store(f"file://{tmp_path / 'store'}")
    ingest(IngestConfig(out="r/in", images=[PACKAGED_IMAGES[2]]), st)
    with pytest.raises(W.WeightsError, match="not available"):
        segment(SegmentConfig(out="r/seg", ingest="r/in", arch="deeplabv3_mobilenet_v3_large"),
                st)
    assert st.list("r/seg") == []
