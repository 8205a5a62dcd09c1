"""Weights resolution: mirror folder -> store mirror -> torch hub cache -> download, checked
hashes, and the clear failure of a ``full`` run that cannot get them. No test downloads: the
downloader is replaced or refused (and the network guard refuses any connection anyway)."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
from types import SimpleNamespace

import pytest
import torch

from tasks import weights as W
from tasks.experiments import resolve_config
from tasks.runtime import read_manifest, run_task
from tasks.store import open_store
from tasks.transfer import adapt, build_imagenet_model, fingerprint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real resnet18 state dict saved under a torchvision-style name with its own hash."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(1234)
    path = folder / "state.pth"
    torch.save(build_imagenet_model("resnet18").state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    name = f"resnet18-{digest[:8]}.pth"
    path = path.rename(folder / name)
    return SimpleNamespace(path=path, name=name, sha256=digest,
                           url=f"https://download.pytorch.org/models/{name}")


@pytest.fixture
def env(tmp_path, monkeypatch, checkpoint):
    """Fresh hub cache and visionflows cache; our checkpoint stands in for torchvision's;
    downloads are recorded, never made."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VF_CACHE_DIR", str(tmp_path / "vf-cache"))
    monkeypatch.delenv("VF_OFFLINE", raising=False)
    real_enum = W.weights_enum
    monkeypatch.setattr(W, "weights_enum", lambda name: SimpleNamespace(url=checkpoint.url)
                        if name.startswith("ResNet18") else real_enum(name))
    calls = []

    def fake_download(url, dest, name):
        calls.append(url)
        shutil.copyfile(checkpoint.path, dest)

    monkeypatch.setattr(W, "_download", fake_download)
    return SimpleNamespace(tmp=tmp_path, calls=calls, hub=tmp_path / "torch" / "hub" /
                           "checkpoints")


def test_resolution_order(env, checkpoint, tmp_path):
    name = "ResNet18_Weights.IMAGENET1K_V1"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(checkpoint.path, mirror / checkpoint.name)
    env.hub.mkdir(parents=True)
    shutil.copyfile(checkpoint.path, env.hub / checkpoint.name)
    store = open_store(f"file://{tmp_path}/store")
    store.put_file(f"mirrors/weights/{checkpoint.name}", checkpoint.path)

    # 1. a local mirror folder comes first, even when the hub cache has the file too
    r = W.resolve_weights(name, mirror=str(mirror), store=store)
    assert (r.source, r.path, r.sha256) == ("mirror-folder", str(mirror / checkpoint.name),
                                            checkpoint.sha256)
    # 1b. a mirror that is a store prefix (air-gapped GPU boxes); a second call uses the copy
    r = W.resolve_weights(name, mirror="mirrors/weights", store=store)
    assert r.source == "mirror-store" and r.location.endswith(checkpoint.name)
    r = W.resolve_weights(name, mirror="mirrors/weights", store=store)
    assert r.location.endswith("(cached copy)")
    # 2. no mirror, or a mirror without the file: the torch hub cache
    assert W.resolve_weights(name, store=store).source == "hub-cache"
    assert W.resolve_weights(name, mirror="mirrors/none", store=store).source == "hub-cache"
    # 3. nothing cached: download into the hub cache
    (env.hub / checkpoint.name).unlink()
    r = W.resolve_weights(name, store=store)
    assert r.source == "download" and env.calls == [checkpoint.url]
    assert (env.hub / checkpoint.name).is_file()
    assert W.resolve_weights(name, store=store).source == "hub-cache"  # no second download
    assert len(env.calls) == 1


def test_corrupt_copy_is_rejected_by_its_hash(env, checkpoint, tmp_path):
    mirror = tmp_path / "bad"
    mirror.mkdir()
    (mirror / checkpoint.name).write_bytes(b"not a checkpoint")
    with pytest.raises(W.WeightsError, match=f"does not start with {checkpoint.sha256[:8]}"):
        W.resolve_weights("ResNet18_Weights.IMAGENET1K_V1", mirror=str(mirror))


def test_offline_refuses_download_and_says_how_to_fix(env, monkeypatch):
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(W.WeightsError) as info:
        W.resolve_weights("VGG16_Weights.IMAGENET1K_V1", mirror=str(env.tmp / "nowhere"))
    msg = str(info.value)
    assert "vgg16-397923af.pth" in msg and "refused (VF_OFFLINE=1)" in msg
    assert "mirror" in msg and "torch hub cache" in msg and "weights_mirror" in msg
    assert "pretrained=false" in msg and not info.value.transient
    assert env.calls == []


def test_network_failure_is_clear_and_transient(env, monkeypatch):
    def no_network(url, dest, name):
        env.calls.append(url)
        raise urllib.error.URLError("simulated: network unreachable")

    monkeypatch.setattr(W, "_download", no_network)
    with pytest.raises(W.WeightsError, match="failed \\(URLError.*network unreachable") as info:
        W.resolve_weights("VGG16_Weights.IMAGENET1K_V1")
    assert info.value.transient and len(env.calls) == 1


def test_full_profile_fails_before_anything_is_written(env, monkeypatch, tmp_path):
    monkeypatch.setenv("VF_OFFLINE", "1")
    cfg = resolve_config("q2-transfer", "full")
    assert cfg.pretrained is True and cfg.data.source == "download"
    uri = f"file://{tmp_path}/store"
    with pytest.raises(W.WeightsError) as info:
        run_task("transfer.weights", {"out": "runs/q2/w", "archs": list(cfg.models),
                                      "pretrained": cfg.pretrained}, uri)
    msg = str(info.value)
    assert "ResNet18_Weights" in msg and "VGG16_Weights" in msg  # every missing one at once
    assert not (tmp_path / "store").exists() or not open_store(uri).list()
    # the smoke profile says pretrained: false explicitly, and the weights step records it
    smoke = resolve_config("q2-transfer", "smoke")
    assert smoke.pretrained is False
    m = run_task("transfer.weights", {"out": "runs/q2/w2", "archs": ["vgg16"],
                                      "pretrained": False}, uri)
    assert m.metrics["weights"]["vgg16"]["pretrained"] is False
    assert "random initialisation" in m.metrics["weights"]["vgg16"]["source"]


def test_full_flow_stops_at_the_weights_step(prefect_harness, env, monkeypatch, tmp_path):
    from flows.q2_transfer import q2_transfer

    monkeypatch.setenv("VF_OFFLINE", "1")
    uri = f"file://{tmp_path}/store"
    with pytest.raises(W.WeightsError, match="--set weights_mirror=DIR"):
        q2_transfer(profile="full", store=uri)
    assert not (tmp_path / "store" / "data").exists()  # the 2.6 GB fetch never started


def test_training_uses_the_resolved_checkpoint(env, checkpoint, tmp_path):
    uri = f"file://{tmp_path}/store"
    data = run_task("stl10.fetch", {"source": "generate", "n_train": 20, "n_test": 10}, uri)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copyfile(checkpoint.path, mirror / checkpoint.name)
    m = run_task("transfer.train", {"out": "runs/t/train", "data": data.prefix,
                                    "arch": "resnet18", "pretrained": True,
                                    "weights_mirror": str(mirror), "image_size": 48,
                                    "epochs": 1, "device": "cpu"}, uri)
    w = m.metrics["weights"]
    assert (w["pretrained"], w["source"], w["sha256"]) == (True, "mirror-folder",
                                                           checkpoint.sha256)
    expected = build_imagenet_model("resnet18", str(checkpoint.path))
    expected = fingerprint(adapt(expected, "resnet18"))
    ckpt = torch.load(open_store(uri).local_path(m.outputs["last"]), weights_only=False)
    assert ckpt["backbone"]["fingerprint"] == pytest.approx(expected, abs=1e-6)
    assert set(ckpt["head"]) == {"fc.weight", "fc.bias"}  # only the head is stored
    # the fine-tuning step rebuilds the same backbone from the same file
    ft = run_task("transfer.finetune", {"out": "runs/t/ft", "train": "runs/t/train",
                                        "grid_size": 4, "epochs": 1, "device": "cpu"}, uri)
    assert len(ft.metrics["grid/true"]) == 4
    assert read_manifest(open_store(uri), "runs/t/ft").metrics["arch"] == "resnet18"
