"""Q3 segmentation core: VOC palette, legend, overlay and label PNG consistent with the label
map; output size equals input size (odd sizes); batching gives the one-by-one result;
preprocessing is the weights' own; configs and profiles compose."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.core.config import ConfigError
from tasks.plans import resolve_config
from tasks.q3.photos import PACKAGED_IMAGES
from tasks.q3.segment import (
    NUM_CLASSES,
    PALETTE,
    VOC_CLASSES,
    build_model,
    colorize,
    label_png,
    legend,
    legend_png,
    make_transform,
    overlay,
    predict,
    upsample_argmax,
    weights_enum,
)

FAST = "deeplabv3_mobilenet_v3_large"


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(FAST, pretrained=False, seed=0)


def synthetic_labels() -> np.ndarray:
    """37 x 53 map: background, a person block, a bus stripe and a single dog pixel."""
    lab = np.zeros((37, 53), np.uint8)
    lab[5:20, 10:30] = 15     # person: 300 px
    lab[30:35, :] = 6         # bus: 265 px
    lab[0, 52] = 12           # dog: 1 px
    return lab


def test_voc_palette_known_colours():
    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    assert PALETTE[0].tolist() == [0, 0, 0]
    assert PALETTE[1].tolist() == [128, 0, 0]          # aeroplane
    assert PALETTE[15].tolist() == [192, 128, 128]     # person
    assert PALETTE[20].tolist() == [0, 64, 128]        # tvmonitor
    assert PALETTE[255].tolist() == [224, 224, 192]    # VOC's "void" boundary colour
    assert len({tuple(c) for c in PALETTE[:NUM_CLASSES]}) == NUM_CLASSES


def test_classes_match_the_weights_meta():
    for arch in ("deeplabv3_resnet50", "deeplabv3_resnet101", FAST):
        assert tuple(weights_enum(arch).meta["categories"]) == VOC_CLASSES


def test_legend_lists_exactly_the_classes_present():
    lab = synthetic_labels()
    rows = legend(lab)
    assert [r["name"] for r in rows] == ["__background__", "person", "bus", "dog"]
    assert [r["pixels"] for r in rows] == [lab.size - 300 - 265 - 1, 300, 265, 1]
    assert sum(r["pixels"] for r in rows) == lab.size
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-12)
    assert {r["index"] for r in rows} == set(np.unique(lab).tolist())
    for r in rows:
        assert r["color"] == PALETTE[r["index"]].tolist()
        assert r["hex"] == "#" + bytes(r["color"]).hex()
        assert isinstance(r["share"], float)
    only = legend(np.full((4, 4), 7, np.uint8))
    assert [(r["name"], r["share"]) for r in only] == [("car", 1.0)]


def test_label_png_is_the_colour_map_and_the_label_map():
    lab = synthetic_labels()
    img = Image.open(io.BytesIO(label_png(lab)))
    assert img.mode == "P" and img.size == (53, 37)
    assert np.array_equal(np.asarray(img), lab)                     # raw indices
    assert np.array_equal(np.asarray(img.convert("RGB")), colorize(lab))  # VOC colours
    assert np.array_equal(colorize(lab)[lab == 15], np.tile([192, 128, 128], (300, 1)))


def test_overlay_blends_only_foreground():
    lab = synthetic_labels()
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (*lab.shape, 3), dtype=np.uint8)
    out = overlay(photo, lab, alpha=0.25)
    bg = lab == 0
    assert np.array_equal(out[bg], photo[bg])
    want = np.rint(0.75 * photo[~bg].astype(np.float32)
                   + 0.25 * PALETTE[lab[~bg]].astype(np.float32)).astype(np.uint8)
    assert np.abs(out[~bg].astype(int) - want.astype(int)).max() <= 1
    assert np.array_equal(overlay(photo, lab, alpha=1.0)[~bg], PALETTE[lab[~bg]])


def test_legend_png_is_a_png():
    png = legend_png(legend(synthetic_labels()), "t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size[0] > 100


def test_chunked_upsampling_equals_one_shot():
    logits = torch.randn(NUM_CLASSES, 9, 13, generator=torch.Generator().manual_seed(0))
    full = upsample_argmax(logits, (41, 67))
    chunked = upsample_argmax(logits, (41, 67), budget=0)
    assert full.dtype == torch.uint8 and full.shape == (41, 67)
    assert torch.equal(full, chunked)
    assert torch.equal(upsample_argmax(logits, (9, 13)), logits.argmax(0).to(torch.uint8))


def test_transform_is_the_weights_own():
    tf = make_transform("deeplabv3_resnet50")
    assert tf.resize_size == [520]
    assert tf.mean == [0.485, 0.456, 0.406] and tf.std == [0.229, 0.224, 0.225]
    small = make_transform("deeplabv3_resnet50", 64)
    assert small.resize_size == [64] and small.mean == tf.mean and small.std == tf.std
    x = small(torch.full((3, 100, 200), 255, dtype=torch.uint8))
    assert x.shape == (3, 64, 128)
    assert x[0].mean().item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-4)


@pytest.mark.parametrize("w,h", [(333, 517), (517, 333), (17, 31)])
def test_output_size_equals_input_size(tiny_model, w, h):
    rgb = np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    maps, secs, errs = predict(tiny_model, [rgb], make_transform(FAST, 32), 4, "cpu")
    assert errs == [None] and secs[0] > 0
    assert maps[0].shape == (h, w) and maps[0].dtype == np.uint8
    assert maps[0].max() < NUM_CLASSES


def test_batching_equals_one_by_one(tiny_model):
    """Same-shape images share one forward pass; the result equals one image at a time."""
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(3)]
    imgs.append(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8))  # another shape
    batches: list[int] = []
    hook = tiny_model.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        tf = make_transform(FAST, 48)
        calls: list[tuple[int, int]] = []
        together, _, _ = predict(tiny_model, imgs, tf, batch_size=4,
                                 progress=lambda d, t: calls.append((d, t)))
        assert sorted(batches) == [1, 3]
        assert len(calls) == 2 and calls[-1] == (4, 4)
        batches.clear()
        alone = [predict(tiny_model, [im], tf, batch_size=1)[0][0] for im in imgs]
        assert batches == [1, 1, 1, 1]
    finally:
        hook.remove()
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a, b)


def test_failed_batch_loses_only_its_images(tiny_model):
    imgs = [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 80, 3), np.uint8)]
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if x.shape[-1] == x.shape[-2]:
            raise RuntimeError("out of memory (simulated)\ndetails")
        return tiny_model(x)

    maps, _, errs = predict(flaky, imgs, make_transform(FAST, 32), 4)
    assert maps[0] is None and "out of memory (simulated)" in errs[0]
    assert "details" not in errs[0]
    assert maps[1].shape == (40, 80) and errs[1] is None


def test_configs_and_profiles_compose():
    smoke = resolve_config("q3-segmentation", "smoke")
    assert smoke.pretrained is False and smoke.resize_size == 64 and smoke.device == "cpu"
    assert smoke.images == list(PACKAGED_IMAGES) and smoke.arch == "deeplabv3_resnet50"
    full = resolve_config("q3-segmentation", "full")
    assert full.pretrained is True and full.resize_size is None
    one = resolve_config("q3-segmentation", "smoke", {"images": "photo.jpg"})
    assert one.images == ["photo.jpg"]
    arch = resolve_config("q3-segmentation", "full", {"arch": "deeplabv3_resnet101"})
    assert arch.arch == "deeplabv3_resnet101"
    for bad, msg in (({"arch": "unet"}, "arch"), ({"images": []}, "images"),
                     ({"nope": 1}, "unknown key 'nope'"), ({"overlay_alpha": 0}, "overlay"),
                     ({"weights": "/w.pth"}, "only used with pretrained=true")):
        with pytest.raises(ConfigError, match=msg):
            resolve_config("q3-segmentation", "smoke", bad)
