"""Q2 and its weights: a ``full`` run that cannot get them fails before anything is written
(and before the 2.6 GB data download), and training records and uses the checkpoint the
resolver found. The resolver itself is tested in ``test_weights.py`` and ``test_mirror.py``."""

from __future__ import annotations

import hashlib
import shutil
from types import SimpleNamespace

import pytest
import torch

from tasks.core.runtime import read_manifest
from tasks.core.store import open_store
from tasks.inputs import weights as W
from tasks.plans import resolve_config
from tasks.q2.transfer import adapt, build_imagenet_model, fingerprint
from tasks.registry import run_task


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
    """Fresh hub cache and visionflows cache; our checkpoint stands in for torchvision's
    ResNet18 (its URL names our file); nothing is downloaded (the network guard refuses)."""
    import torchvision.models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VF_CACHE_DIR", str(tmp_path / "vf-cache"))
    monkeypatch.delenv("VF_OFFLINE", raising=False)
    real = torchvision.models.get_weight
    monkeypatch.setattr(torchvision.models, "get_weight", lambda name: SimpleNamespace(
        url=checkpoint.url) if name.startswith("ResNet18") else real(name))
    return SimpleNamespace(tmp=tmp_path)


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
