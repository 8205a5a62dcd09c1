"""Q3 semantic segmentation with torchvision's DeepLabV3: tasks ``images.ingest`` and
``segment.images``.

``images.ingest`` copies each input (package file, URL, local path or store key) into the
store, so the next stage reads only from the store. ``segment.images`` decodes every
stored input, runs DeepLabV3 (21 Pascal VOC classes) and writes, per image, under
``<out>/<NN-name>/``:

- ``classes.png``: the class map as a palette PNG (the VOC palette; pixel values are the
  class indices, so it is both the colour-coded map and the raw label map, as in VOC's own
  ``SegmentationClass`` files);
- ``labels.npy``: the same label map as a uint8 ``H x W`` array;
- ``overlay.png``: the photo with every non-background class blended in its colour;
- ``legend.json`` / ``legend.png``: the classes present, with pixel counts and shares.

Bad inputs never stop the others: each image gets a status (``ok`` or ``rejected`` with
the stage and the reason) in the manifest. Preprocessing is the weights' own transform
(``SemanticSegmentation``: resize the shorter side, scale to [0, 1], ImageNet mean/std);
images whose preprocessed sizes are equal run in one batch (padding would change the
ASPP image-pooling branch, so differently shaped images are not padded together); the
logits are upsampled bilinearly to each input's own size before the argmax.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import defaultdict
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from tasks.core.config import Config
from tasks.core.errors import ConfigError
from tasks.core.runtime import Manifest, TaskRun, read_verified, reuse
from tasks.core.store import Store
from tasks.inputs.weights import (
    ResolvedWeights,
    WeightsError,
    WeightsSpec,
    resolve_weights,
    torchvision_spec,
)
from tasks.q3.photos import (
    Decoded,
    InputError,
    decode_image,
    read_source,
    source_name,
    source_suffix,
)

Arch = Literal["deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large"]
WEIGHTS_TAG = "COCO_WITH_VOC_LABELS_V1"
_WEIGHTS_ENUMS = {
    "deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights",
    "deeplabv3_resnet101": "DeepLabV3_ResNet101_Weights",
    "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights",
}
# The 20 Pascal VOC classes plus background, in the weights' order (meta["categories"]).
VOC_CLASSES = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
               "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
               "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
NUM_CLASSES = len(VOC_CLASSES)
# Above this many logits (C x H x W) the upsampling runs one class at a time (bounded memory).
UPSAMPLE_BUDGET = 64_000_000


# ---------------------------------------------------------------- configs

def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


class SegmentOptions(Config):
    """Model, preprocessing, input limits and drawing options shared by flow and task."""

    arch: Arch = "deeplabv3_resnet50"
    pretrained: bool = Field(True, description="false: random weights (plumbing tests only)")
    weights: str | None = Field(None, description="mirror of the published weights: a file, "
                                "a folder holding it, or a store key (pretrained only)")
    resize_size: int | None = Field(None, ge=8, le=4096,
                                    description="shorter side fed to the model; default: the "
                                    "weights' own (520)")
    batch_size: int = Field(4, gt=0)
    device: str = "auto"
    seed: int = Field(0, description="seed of the random weights when pretrained=false")
    min_size: int = Field(16, ge=1, description="reject images with a shorter side below this")
    max_pixels: int = Field(40_000_000, gt=0)
    max_aspect: float = Field(8.0, ge=1.0)
    overlay_alpha: float = Field(0.5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _weights_need_pretrained(self):
        if self.weights and not self.pretrained:
            raise ConfigError("weights: only used with pretrained=true (got pretrained=false)")
        return self


class IngestOptions(Config):
    """Limits on fetching one input (the flow config inherits them)."""

    max_download_mb: float = Field(50.0, gt=0, description="size cap of one input")
    timeout_s: float = Field(30.0, gt=0, description="per-URL download time-out")


class IngestConfig(IngestOptions):
    """Copy input images into the store under ``out``."""

    out: str
    images: list[str] = Field(min_length=1)

    _list = field_validator("images", mode="before")(_as_list)


class SegmentConfig(SegmentOptions):
    """Segment every image an ``images.ingest`` run stored."""

    out: str
    ingest: str = Field(description="store prefix of the images.ingest run")


# ---------------------------------------------------------------- palette and drawing

def voc_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map: ``n x 3`` uint8 (class c's colour from the bits of c)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for c in range(n):
        r = g = b = 0
        cid = c
        for j in range(8):
            r |= ((cid >> 0) & 1) << (7 - j)
            g |= ((cid >> 1) & 1) << (7 - j)
            b |= ((cid >> 2) & 1) << (7 - j)
            cid >>= 3
        pal[c] = (r, g, b)
    return pal


PALETTE = voc_palette()


def colorize(labels: np.ndarray) -> np.ndarray:
    """``H x W`` class indices -> ``H x W x 3`` VOC colours."""
    return PALETTE[labels]


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The photo with each non-background pixel blended with its class colour."""
    out = rgb.astype(np.float32)
    fg = labels != 0
    out[fg] = (1.0 - alpha) * out[fg] + alpha * PALETTE[labels[fg]].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def legend(labels: np.ndarray, classes: tuple[str, ...] = VOC_CLASSES) -> list[dict[str, Any]]:
    """The classes present in ``labels``, most pixels first, with counts and shares."""
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    total = int(labels.size)
    rows = []
    for c in np.flatnonzero(counts):
        r, g, b = (int(v) for v in PALETTE[c])
        rows.append({"index": int(c), "name": classes[c] if c < len(classes) else f"class {c}",
                     "color": [r, g, b], "hex": f"#{r:02x}{g:02x}{b:02x}",
                     "pixels": int(counts[c]), "share": float(counts[c] / total)})
    return sorted(rows, key=lambda row: (-row["pixels"], row["index"]))


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def label_png(labels: np.ndarray) -> bytes:
    """A palette ("P") PNG: pixel values are class indices, colours the VOC palette."""
    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(PALETTE.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def legend_png(rows: list[dict[str, Any]], title: str = "") -> bytes:
    """A bar per class present, in its VOC colour, labelled with its pixel share."""
    from tasks.ml.plots import new_figure, png_bytes

    plt, fig, ax = new_figure(figsize=(5.0, 0.45 * max(len(rows), 1) + 1.0))
    names = [r["name"] for r in rows][::-1]
    shares = [100.0 * r["share"] for r in rows][::-1]
    colours = [tuple(v / 255 for v in r["color"]) for r in rows][::-1]
    bars = ax.barh(names, shares, color=colours, edgecolor="black", linewidth=0.6)
    for bar, share in zip(bars, shares, strict=True):
        ax.annotate(f"{share:.1f}%", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, max(shares, default=1) * 1.2 + 1)
    ax.set_xlabel("share of pixels (%)")
    if title:
        ax.set_title(title, fontsize=9)
    return png_bytes(plt, fig)


# ---------------------------------------------------------------- model

def weights_enum(arch: str):
    from torchvision.models import segmentation

    return getattr(getattr(segmentation, _WEIGHTS_ENUMS[arch]), WEIGHTS_TAG)


def weights_spec(arch: str) -> WeightsSpec:
    """Where ``arch``'s COCO-with-VOC-labels weights are published."""
    return torchvision_spec(f"{_WEIGHTS_ENUMS[arch]}.{WEIGHTS_TAG}",
                            questions=("q3-segmentation",))


def make_transform(arch: str, resize_size: int | None = None):
    """The weights' own preprocessing (``SemanticSegmentation``), optionally another size.

    Random weights use the very same settings: the transform comes from the weights' meta
    whether or not the weights are loaded.
    """
    transforms = weights_enum(arch).transforms
    return transforms(resize_size=resize_size) if resize_size else transforms()


def load_state(path, arch: str) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a loadable torch weights file ({type(exc).__name__}: "
                           f"{exc})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint holding the weights
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict of "
                           f"{arch}")
    return state


def build_model(arch: str, *, pretrained: bool, weights: ResolvedWeights | None = None,
                seed: int = 0):
    """DeepLabV3 ``arch`` with 21 VOC classes, in eval mode, without the auxiliary head.

    ``pretrained=False`` builds seeded random weights (and no ImageNet backbone either:
    nothing is downloaded).
    """
    import torch
    from torchvision.models import segmentation

    builder = getattr(segmentation, arch)
    if not pretrained:
        torch.manual_seed(seed)
        model = builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                        aux_loss=False)
    else:
        if weights is None:
            raise WeightsError(f"{arch}: pretrained=true needs resolved weights")
        state = load_state(weights.path, arch)
        aux = any(k.startswith("aux_classifier.") for k in state)
        model = builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                        aux_loss=aux)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()
            raise WeightsError(f"{weights.location} does not hold {arch} weights with "
                               f"{NUM_CLASSES} classes: {' '.join(first[:3])[:400]}") from None
    model.aux_classifier = None  # inference needs only the main head
    return model.eval()


def upsample_argmax(logits, size: tuple[int, int], budget: int = UPSAMPLE_BUDGET):
    """Bilinear upsampling of ``C x h x w`` logits to ``size`` (H, W), then argmax -> uint8.

    Above ``budget`` logits it runs one class at a time, keeping a running maximum (same
    result, first maximum wins on ties as in ``argmax``), so memory stays O(H x W).
    """
    import torch
    from torch.nn import functional as F

    c = logits.shape[0]
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.argmax(0).to(torch.uint8)
    if c * size[0] * size[1] <= budget:
        up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
        return up.argmax(0).to(torch.uint8)
    best = None
    idx = torch.zeros(size, dtype=torch.uint8, device=logits.device)
    for k in range(c):
        up = F.interpolate(logits[None, k:k + 1], size=size, mode="bilinear",
                           align_corners=False)[0, 0]
        if best is None:
            best = up
            continue
        better = up > best
        best = torch.where(better, up, best)
        idx[better] = k
    return idx


def predict(model, images: list[np.ndarray], transform, batch_size: int = 4,
            device: str = "cpu", progress=None,
            ) -> tuple[list[np.ndarray | None], list[float], list[str | None]]:
    """Label maps (uint8, each image's own H x W), per-image seconds and per-image errors.

    Images are preprocessed by ``transform``; those with equal preprocessed sizes share a
    batch of up to ``batch_size``. A batch that fails (e.g. out of memory) yields ``None``
    label maps and an error message for its images only. ``progress(done, total)`` is
    called after each batch.
    """
    import torch

    tensors = [transform(torch.from_numpy(rgb).permute(2, 0, 1)) for rgb in images]
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[tuple(t.shape)].append(i)
    labels: list[np.ndarray | None] = [None] * len(images)
    seconds = [0.0] * len(images)
    errors: list[str | None] = [None] * len(images)
    done = 0
    with torch.inference_mode():
        for idxs in groups.values():
            for start in range(0, len(idxs), batch_size):
                chunk = idxs[start:start + batch_size]
                t0 = time.perf_counter()
                try:
                    x = torch.stack([tensors[i] for i in chunk]).to(device)
                    logits = model(x)["out"]
                    maps = [upsample_argmax(logits[j], tuple(images[i].shape[:2])).cpu().numpy()
                            for j, i in enumerate(chunk)]
                    per = (time.perf_counter() - t0) / len(chunk)
                    for i, lab in zip(chunk, maps, strict=True):
                        labels[i], seconds[i] = lab, per
                except (RuntimeError, MemoryError) as exc:
                    msg = str(exc).splitlines()[0][:300] if str(exc) else ""
                    for i in chunk:
                        errors[i] = f"inference failed ({type(exc).__name__}: {msg})"
                done += len(chunk)
                if progress is not None:
                    progress(done, len(images))
    return labels, seconds, errors


# ---------------------------------------------------------------- tasks

def ingest(cfg: IngestConfig, store: Store) -> Manifest:
    """Copy each input into the store (``<out>/<NN-name>/source.<ext>``); record failures.

    A missing or unreachable input is recorded as rejected; it does not fail the task.
    """
    existing = reuse(store, "images.ingest", cfg, cfg.out)
    if existing is not None:
        return existing
    max_bytes = int(cfg.max_download_mb * 1e6)
    with TaskRun("images.ingest", cfg, store, cfg.out) as run:
        entries = []
        width = max(2, len(str(len(cfg.images))))
        for i, src in enumerate(cfg.images, 1):
            name = f"{i:0{width}d}-{source_name(src)}"
            entry: dict[str, Any] = {"index": i, "source": src, "name": name}
            try:
                data, origin = read_source(src, store, max_bytes=max_bytes,
                                           timeout_s=cfg.timeout_s)
            except InputError as exc:
                run.log.warning("input %d %s rejected: %s", i, src, exc)
                entry.update(status="rejected", stage="ingest", error=str(exc))
            else:
                key = run.put_bytes(name, data, f"{name}/source{source_suffix(src)}")
                entry.update(status="ok", origin=origin, key=key, bytes=len(data),
                             sha256=hashlib.sha256(data).hexdigest())
            entries.append(entry)
        ok = sum(e["status"] == "ok" for e in entries)
        return run.finish({"inputs": len(entries), "ingested": ok,
                           "rejected": len(entries) - ok}, images=entries)


def _resolve_device(name: str):
    from tasks.ml.loop import resolve_device

    return resolve_device(name)


def segment(cfg: SegmentConfig, store: Store) -> Manifest:
    """DeepLabV3 on every ingested image; per-image outputs and status; manifest last."""
    existing = reuse(store, "segment.images", cfg, cfg.out)
    if existing is not None:
        return existing
    ingest_manifest = read_verified(store, cfg.ingest)
    entries = [dict(e) for e in (ingest_manifest.model_extra or {}).get("images", [])]
    device = _resolve_device(cfg.device)
    with TaskRun("segment.images", cfg, store, cfg.out,
                 inputs={"ingest": store.url(cfg.ingest)}) as run:
        t0 = time.perf_counter()
        weights = None
        if cfg.pretrained:
            weights = resolve_weights(weights_spec(cfg.arch), cfg.weights, store, run.log,
                                      setting="weights")
        t_weights = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = build_model(cfg.arch, pretrained=cfg.pretrained, weights=weights,
                            seed=cfg.seed).to(device)
        t_build = time.perf_counter() - t0
        transform = make_transform(cfg.arch, cfg.resize_size)
        run.log.info("%s (%s) on %s, input shorter side %s", cfg.arch,
                     f"{weights.source}: {weights.location}" if weights else
                     f"random weights, seed {cfg.seed}", device, transform.resize_size)

        decoded: dict[int, Decoded] = {}
        for e in entries:
            if e["status"] != "ok":
                continue
            t = time.perf_counter()
            try:
                dec = decode_image(store.get_bytes(e["key"]), min_size=cfg.min_size,
                                   max_pixels=cfg.max_pixels, max_aspect=cfg.max_aspect)
            except InputError as exc:
                run.log.warning("input %d %s rejected: %s", e["index"], e["source"], exc)
                e.update(status="rejected", stage="decode", error=str(exc))
                continue
            except Exception as exc:  # a decoder bug on one file must not lose the others
                run.log.exception("input %d %s: unexpected decoder error", e["index"],
                                  e["source"])
                e.update(status="rejected", stage="decode",
                         error=f"unexpected decoder error ({type(exc).__name__}: {exc}); "
                               "convert the image to an 8-bit RGB JPEG or PNG")
                continue
            decoded[e["index"]] = dec
            e.update(format=dec.format, mode=dec.mode, size=list(dec.size), notes=dec.notes,
                     decode_s=round(time.perf_counter() - t, 4))

        order = [e for e in entries if e["index"] in decoded]
        t0 = time.perf_counter()
        maps, secs, errs = predict(model, [decoded[e["index"]].rgb for e in order], transform,
                                   cfg.batch_size, str(device),
                                   progress=lambda d, n: run.progress(d, n, unit="image"))
        labels: dict[int, np.ndarray] = {}
        for e, lab, sec, err in zip(order, maps, secs, errs, strict=True):
            if lab is None:
                e.update(status="rejected", stage="segment", error=err)
            else:
                labels[e["index"]] = lab
                e["infer_s"] = round(sec, 4)
        t_infer = time.perf_counter() - t0

        for e in entries:
            if e["index"] not in labels:
                continue
            t = time.perf_counter()
            dec, lab = decoded[e["index"]], labels[e["index"]]
            assert lab.shape == dec.rgb.shape[:2], (lab.shape, dec.rgb.shape)
            rows = legend(lab)
            name = e["name"]
            outs = {
                "classes": run.put_bytes(f"{name}/classes", label_png(lab),
                                         f"{name}/classes.png"),
                "labels": run.put_bytes(f"{name}/labels", npy_bytes(lab), f"{name}/labels.npy"),
                "overlay": run.put_bytes(f"{name}/overlay",
                                         png_bytes(overlay(dec.rgb, lab, cfg.overlay_alpha)),
                                         f"{name}/overlay.png"),
                "legend_json": run.put_json(f"{name}/legend", {
                    "image": name, "source": e["source"], "size": list(dec.size),
                    "total_pixels": int(lab.size), "classes": rows}, f"{name}/legend.json"),
                "legend_png": run.put_bytes(
                    f"{name}/legend_png", legend_png(rows, f"{name}: classes by pixel share"),
                    f"{name}/legend.png"),
            }
            e.update(outputs=outs, legend=[{k: r[k] for k in ("index", "name", "hex", "share")}
                                           for r in rows],
                     write_s=round(time.perf_counter() - t, 4))

        ok = [e for e in entries if e["status"] == "ok"]
        rejected = [e for e in entries if e["status"] != "ok"]
        for e in rejected:
            run.log.warning("rejected %s (%s): %s", e["source"], e["stage"], e["error"])
        metrics = {
            "images/total": len(entries), "images/ok": len(ok),
            "images/rejected": len(rejected), "weights/resolve_s": round(t_weights, 3),
            "model/build_s": round(t_build, 3), "infer/total_s": round(t_infer, 3),
            "infer/mean_s": round(t_infer / len(ok), 3) if ok else None,
            "device": str(device), "arch": cfg.arch,
            "weights/source": weights.source if weights else "random",
        }
        preprocessing = {"resize_size": transform.resize_size, "mean": transform.mean,
                         "std": transform.std, "interpolation": str(transform.interpolation),
                         "antialias": transform.antialias}
        weights_info = ({"source": weights.source, "location": weights.location,
                         "sha256": weights.sha256} if weights else
                        {"source": "random", "seed": cfg.seed})
        run.log.info("segmented %d of %d images (%s)", len(ok), len(entries),
                     json.dumps({e["name"]: e.get("legend", [{}])[0].get("name")
                                 for e in ok}))
        return run.finish(metrics, images=entries, classes=list(VOC_CLASSES),
                          weights=weights_info, preprocessing=preprocessing)
