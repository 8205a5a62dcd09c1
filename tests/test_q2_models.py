"""Q2 models: exact parameter totals (weights=None), torchsummary-style rows as in the
reference, only the new head trainable, backbone/head split, normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tasks.ml.loop import Split, make_loss, train_one_epoch
from tasks.ml.summary import format_summary, summarize
from tasks.q2.options import head_params
from tasks.q2.transfer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransferError,
    adapt,
    build_imagenet_model,
    check_only_head_trains,
    extract_features,
    fingerprint,
    identity,
    make_preprocess,
    split_model,
)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {a: build_imagenet_model(a) for a in ("resnet18", "vgg16")}


@pytest.mark.parametrize("arch,total,rows,checks", [
    ("resnet18", 11_689_512, 68, {
        "Conv2d-1": ([1, 64, 48, 48], 9_408), "MaxPool2d-4": ([1, 64, 24, 24], 0),
        "BasicBlock-18": ([1, 64, 24, 24], 0), "Conv2d-24": ([1, 128, 12, 12], 8_192),
        "Conv2d-54": ([1, 512, 3, 3], 2_359_296), "AdaptiveAvgPool2d-67": ([1, 512, 1, 1], 0),
        "Linear-68": ([1, 1000], 513_000)}),
    ("vgg16", 138_357_544, 39, {
        "Conv2d-1": ([1, 64, 96, 96], 1_792), "MaxPool2d-31": ([1, 512, 3, 3], 0),
        "AdaptiveAvgPool2d-32": ([1, 512, 7, 7], 0), "Linear-33": ([1, 4096], 102_764_544),
        "Linear-36": ([1, 4096], 16_781_312), "Linear-39": ([1, 1000], 4_097_000)}),
])
def test_summary_matches_the_reference_table(models, arch, total, rows, checks):
    s = summarize(models[arch], [1, 3, 96, 96], containers=True)
    assert s["total_params"] == total and s["trainable_params"] == total
    assert len(s["rows"]) == rows  # row for row as torchsummary printed it in the reference
    by_name = {r["layer"]: (r["output_shape"], r["params"]) for r in s["rows"]}
    for layer, want in checks.items():
        assert by_name[layer] == want, layer
    assert f"Total params: {total:,}" in format_summary(s)


def test_leaf_summary_still_sums_to_the_total(models):
    s = summarize(models["resnet18"], [1, 3, 64, 64])
    assert not any(r["layer"].startswith("BasicBlock") for r in s["rows"])
    assert sum(r["params"] for r in s["rows"]) == 11_689_512


@pytest.mark.parametrize("arch,head,n", [("resnet18", "fc", 5_130),
                                         ("vgg16", "classifier.6", 40_970)])
def test_only_the_new_head_trains(arch, head, n):
    torch.manual_seed(0)
    model = adapt(build_imagenet_model(arch), arch)
    assert head_params(arch) == n
    trainable = {k: p.numel() for k, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == {f"{head}.weight", f"{head}.bias"} and sum(trainable.values()) == n
    assert check_only_head_trains(model, arch) == n
    out = model(torch.zeros(1, 3, 48, 48))
    assert out.shape == (1, 10)
    next(p for k, p in model.named_parameters() if not k.startswith(head)).requires_grad_(True)
    with pytest.raises(TransferError, match="expected only"):
        check_only_head_trains(model, arch)


@pytest.mark.parametrize("arch", ["resnet18", "vgg16"])
def test_backbone_and_head_make_the_model(arch):
    torch.manual_seed(0)
    model = adapt(build_imagenet_model(arch), arch).eval()
    backbone, head = split_model(model, arch)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(head(backbone(x)), model(x), atol=1e-5)
    assert backbone(x).shape[1] == (512 if arch == "resnet18" else 25_088)


def test_head_training_on_cached_features_leaves_the_backbone_alone():
    torch.manual_seed(0)
    model = adapt(build_imagenet_model("resnet18"), "resnet18")
    backbone, head = split_model(model, "resnet18")
    before = fingerprint(model)
    bn_stats = model.bn1.running_mean.clone()
    x = torch.randint(0, 256, (40, 3, 96, 96), dtype=torch.uint8)
    y = torch.arange(40) % 10
    feats = extract_features(backbone, x, make_preprocess(48), batch_size=16)
    assert feats.shape == (40, 512) and not feats.requires_grad
    w0 = head.weight.detach().clone()
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], 1e-2)
    train_one_epoch(head, Split(feats, y), batch_size=8, optimizer=opt,
                    loss_fn=make_loss("cross_entropy", 10), preprocess=identity,
                    generator=torch.Generator().manual_seed(0))
    assert not torch.equal(w0, head.weight)  # the head learned
    assert fingerprint(model) == before  # the frozen weights did not move
    assert torch.equal(bn_stats, model.bn1.running_mean)  # eval mode: BN statistics kept


def test_imagenet_normalisation_range_resize_and_flip():
    pre = make_preprocess(48, hflip=True)
    x = torch.zeros(2, 3, 96, 96, dtype=torch.uint8)
    x[1] = 255
    out = pre(x, False)
    assert out.shape == (2, 3, 48, 48)
    lo = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    hi = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert out[0].amin().item() == pytest.approx(min(lo), abs=1e-4)  # -2.1179
    assert out[1].amax().item() == pytest.approx(max(hi), abs=1e-4)  # 2.6400
    ramp = torch.arange(96, dtype=torch.uint8).repeat(64, 3, 96, 1)  # left-to-right ramp
    torch.manual_seed(0)
    flipped = make_preprocess(96, hflip=True)(ramp, True)
    kept = make_preprocess(96, hflip=True)(ramp, False)
    n_flipped = int((flipped[:, 0, 0, 0] > flipped[:, 0, 0, -1]).sum())
    assert 0 < n_flipped < 64  # about half, train only
    assert bool((kept[:, 0, 0, 0] < kept[:, 0, 0, -1]).all())


def test_unknown_arch_is_a_clear_error():
    from tasks.core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown arch 'alexnet'"):
        build_imagenet_model("alexnet")
    with pytest.raises(ConfigError):
        adapt(nn.Linear(2, 2), "alexnet")


def test_augmentation_recomputes_features_every_epoch(tmp_path):
    from tasks.registry import run_task

    uri = f"file://{tmp_path}/s"
    data = run_task("stl10.fetch", {"source": "generate", "n_train": 20, "n_test": 10}, uri)
    m = run_task("transfer.train", {"out": "r/aug", "data": data.prefix, "arch": "resnet18",
                                    "pretrained": False, "image_size": 48, "epochs": 2,
                                    "augment": True, "device": "cpu"}, uri)
    assert m.metrics["features/cached"] is False
    assert all(h["features/time_s"] > 0 for h in m.history)  # a backbone pass per epoch
    assert len(m.metrics["test/accuracy_per_epoch"]) == 2
