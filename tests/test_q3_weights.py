"""Weights resolution for Q3: mirror (file, folder, store key) -> the store's mirror index ->
torch hub cache -> download, each file checked against the published sha256 prefix; a clear,
complete error when none works. No test downloads anything (the network guard refuses
non-loopback)."""

from __future__ import annotations

import hashlib
import socket

import pytest
import torch

from tasks.segment import build_model, weights_spec
from tasks.store import open_store
from tasks.torch_weights import WeightsError, WeightsSpec, hub_checkpoint, resolve_weights


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """An empty, private torch hub cache for each test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("VF_OFFLINE", raising=False)
    return tmp_path / "torch-home"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_weights(tmp_path, content: bytes = b"weights-v1", name: str = "tiny") -> tuple:
    """A file and the spec that publishes it (its name carries its sha256 prefix)."""
    digest = hashlib.sha256(content).hexdigest()
    filename = f"{name}-{digest[:8]}.pth"
    path = tmp_path / "src" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    spec = WeightsSpec(name=f"{name} TEST", url=f"http://127.0.0.1:{closed_port()}/{filename}")
    return spec, path


def test_spec_of_the_real_weights():
    spec = weights_spec("deeplabv3_resnet50")
    assert spec.filename == "deeplabv3_resnet50_coco-cd0a2569.pth"
    assert spec.sha256_prefix == "cd0a2569"
    assert spec.url.startswith("https://") and spec.url.endswith(spec.filename)
    assert weights_spec("deeplabv3_mobilenet_v3_large").sha256_prefix == "fc3c493d"
    assert weights_spec("deeplabv3_resnet101").sha256_prefix == "586e9e4e"


def test_order_mirror_then_hub_cache(tmp_path, torch_home):
    spec, src = fake_weights(tmp_path)
    hub = hub_checkpoint(spec)
    assert hub.is_relative_to(torch_home)
    hub.parent.mkdir(parents=True)
    hub.write_bytes(src.read_bytes())
    # 1. an explicit mirror wins over the hub cache: the file, or a folder holding it
    got = resolve_weights(spec, str(src))
    assert (got.source, got.path) == ("mirror", src)
    assert got.sha256 == hashlib.sha256(b"weights-v1").hexdigest()
    assert resolve_weights(spec, str(src.parent)).path == src
    # 2. without a mirror: the hub cache, no download
    got = resolve_weights(spec)
    assert (got.source, got.path) == ("hub-cache", hub)


def test_mirror_as_store_key_or_prefix(tmp_path):
    spec, src = fake_weights(tmp_path)
    st = open_store(f"file://{tmp_path / 'store'}")
    st.put_file(f"mirror/weights/{spec.filename}", src)
    for ref in (f"mirror/weights/{spec.filename}", "mirror/weights"):
        got = resolve_weights(spec, ref, st)
        assert got.source == "mirror" and got.location == st.url(
            f"mirror/weights/{spec.filename}")
        assert got.path.read_bytes() == b"weights-v1"


def test_missing_mirror_is_an_error_without_fallback(tmp_path):
    spec, src = fake_weights(tmp_path)
    hub = hub_checkpoint(spec)
    hub.parent.mkdir(parents=True)
    hub.write_bytes(src.read_bytes())  # present, yet not used: the user asked for the mirror
    st = open_store(f"file://{tmp_path / 'store'}")
    with pytest.raises(WeightsError, match=r"weights mirror 'nope/w.pth' not found") as err:
        resolve_weights(spec, "nope/w.pth", st)
    assert "no key 'nope/w.pth'" in str(err.value) and st.uri in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=f"folder .*empty has no {spec.filename}"):
        resolve_weights(spec, str(tmp_path / "empty"))


def test_hash_mismatch_is_refused(tmp_path):
    spec, src = fake_weights(tmp_path)
    src.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="does not match the published prefix"):
        resolve_weights(spec, str(src))
    hub = hub_checkpoint(spec)
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"half a downlo")
    with pytest.raises(WeightsError, match="corrupt, truncated"):
        resolve_weights(spec)


def test_offline_error_names_every_place_and_the_fix(monkeypatch, torch_home):
    monkeypatch.setenv("VF_OFFLINE", "1")
    spec = weights_spec("deeplabv3_resnet50")
    with pytest.raises(WeightsError) as err:
        resolve_weights(spec)
    msg = str(err.value)
    assert "deeplabv3_resnet50_coco-cd0a2569.pth" in msg
    assert "1. mirror: not set" in msg
    assert "2. mirror index: no store given" in msg
    assert f"3. torch hub cache: {hub_checkpoint(spec)} does not exist" in msg
    assert f"4. download {spec.url}: not tried" in msg and "VF_OFFLINE" in msg
    assert "`visionflows mirror --questions q3-segmentation --store URI`" in msg
    assert "--set weights=PATH" in msg and "--set pretrained=false" in msg
    assert not hub_checkpoint(spec).exists()


def test_download_is_attempted_then_fails_clearly(tmp_path):
    """Step 3 runs the real downloader; here it meets a closed loopback port."""
    spec, _ = fake_weights(tmp_path)
    with pytest.raises(WeightsError) as err:
        resolve_weights(spec)
    msg = str(err.value)
    assert f"4. download {spec.url}: failed" in msg and "refused" in msg.lower()
    assert not hub_checkpoint(spec).exists()  # nothing half-written in the cache


def test_real_url_download_is_refused_offline_tests(tmp_path):
    """The published URL itself: the test network guard (or DNS) refuses it, fast."""
    with pytest.raises(WeightsError, match=r"4\. download https://download\.pytorch\.org/.*: "
                                           r"failed"):
        resolve_weights(weights_spec("deeplabv3_mobilenet_v3_large"))


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
    spec = WeightsSpec("mbv3 TEST", f"http://127.0.0.1:9/dl-{digest[:8]}.pth")
    got = resolve_weights(spec, str(path))
    model = build_model("deeplabv3_mobilenet_v3_large", pretrained=True, weights=got)
    assert model.aux_classifier is None and not model.training
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x)["out"], ref(x)["out"], atol=1e-5)


def test_wrong_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = WeightsSpec("x", f"http://127.0.0.1:9/x-{digest[:8]}.pth")
    got = resolve_weights(spec, str(path))
    with pytest.raises(WeightsError, match="does not hold deeplabv3_resnet50 weights"):
        build_model("deeplabv3_resnet50", pretrained=True, weights=got)
    path.write_bytes(b"not a torch file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = WeightsSpec("x", f"http://127.0.0.1:9/x-{digest[:8]}.pth")
    with pytest.raises(WeightsError, match="not a loadable torch weights file"):
        build_model("deeplabv3_resnet50", pretrained=True,
                    weights=resolve_weights(spec, str(path)))


def test_segment_task_fails_before_writing_anything_without_weights(tmp_path, monkeypatch):
    from tasks.images import PACKAGED_IMAGES
    from tasks.segment import IngestConfig, SegmentConfig, ingest, segment

    monkeypatch.setenv("VF_OFFLINE", "1")
    st = open_store(f"file://{tmp_path / 'store'}")
    ingest(IngestConfig(out="r/in", images=[PACKAGED_IMAGES[2]]), st)
    with pytest.raises(WeightsError, match="not available"):
        segment(SegmentConfig(out="r/seg", ingest="r/in", arch="deeplabv3_mobilenet_v3_large"),
                st)
    assert st.list("r/seg") == []
