"""``segment.report``: the Q3 report from a ``segment.images`` run.

Per image, side by side: the photo, the colour-coded class map and the overlay, with the
legend of the classes found and their pixel shares; inputs that were rejected are listed
with the reason, never dropped. Also a short explanation of DeepLab, in our own words.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image as PILImage
from pydantic import Field

from tasks.core.config import Config
from tasks.core.runtime import Manifest, TaskRun, read_verified, reuse
from tasks.core.store import Store
from tasks.q3.photos import decode_image
from tasks.q3.segment import PALETTE, SegmentConfig
from tasks.reporting.compare import ComparisonLink, link_section
from tasks.reporting.render import Image, Report, Section, Table, write_report

DEEPLAB_TEXT = [
    "DeepLab labels every pixel of a photo with a class. Its backbone is an ordinary image "
    "classifier (ResNet-50/101 or MobileNetV3 here) whose last stages are changed so that "
    "they stop shrinking the image: instead of striding, their 3x3 convolutions become "
    "**atrous** (dilated) convolutions, which sample their input with gaps of r pixels. A "
    "dilated kernel sees a field r times wider with the same nine weights and the same "
    "number of outputs, so the network keeps a feature map at 1/8 of the input size (output "
    "stride 8) while its neurons still see most of the picture.",
    "Objects appear at many sizes, so DeepLab looks at each position at several scales at "
    "once with **Atrous Spatial Pyramid Pooling (ASPP)**: parallel branches with atrous rates "
    "12, 24 and 36, a 1x1 convolution and an image-level branch (global average pooling, "
    "the context of the whole photo) are concatenated and fused by a 1x1 convolution into "
    "one score per class and position.",
    "The scores are coarse (1/8 resolution), so they are **upsampled** bilinearly to the input "
    "size before each pixel takes its highest-scoring class. DeepLab v1 and v2 then refined "
    "the boundaries with a fully connected **CRF** (conditional random field), which pulls "
    "neighbouring pixels of similar colour towards the same label; v3, which we run "
    "(torchvision's DeepLabV3), drops the CRF because the ASPP with image-level features and "
    "batch normalisation already gives sharp enough maps. We upsample the logits once more, "
    "from the model's input size to the photo's own size, so every map matches its photo "
    "pixel for pixel.",
    "The weights (COCO_WITH_VOC_LABELS_V1) were trained on the COCO images whose objects "
    "belong to the 20 Pascal VOC classes, plus background: anything else in a photo (a road, "
    "a building) is background by construction.",
]


class SegmentReportConfig(Config):
    """Render the Q3 report of one ``segment.images`` run."""

    out: str
    segment: str = Field(description="store prefix of the segment.images run")
    question: str = "q3-segmentation"
    profile: str = ""
    run_id: str = ""
    title: str = "Q3: semantic segmentation with DeepLabV3"
    panel_width: int = Field(420, ge=64, le=2048, description="width of each report panel")
    comparison: ComparisonLink | None = Field(
        None, description="the comparison with the previous run the flow writes after the report")


def _shrink(arr: np.ndarray, width: int, nearest: bool) -> np.ndarray:
    h, w = arr.shape[:2]
    if w <= width:
        return arr
    size = (width, max(1, round(h * width / w)))
    method = PILImage.Resampling.NEAREST if nearest else PILImage.Resampling.LANCZOS
    return np.asarray(PILImage.fromarray(arr).resize(size, method))


def panel_png(photo: np.ndarray, labels: np.ndarray, over: np.ndarray,
              rows: list[dict[str, Any]], width: int, title: str) -> bytes:
    """Photo | class map | overlay, side by side, with the legend below."""
    from matplotlib.patches import Patch

    from tasks.ml.plots import new_figure, png_bytes

    panels = [_shrink(photo, width, False), _shrink(PALETTE[labels], width, True),
              _shrink(over, width, False)]
    h, w = panels[0].shape[:2]
    fig_w = 3 * 3.6
    plt, fig, axes = new_figure(1, 3, figsize=(fig_w, fig_w / 3 * h / w + 1.2))
    for ax, img, name in zip(axes, panels, ("photo", "class map", "overlay"), strict=True):
        ax.imshow(img)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [Patch(facecolor=tuple(v / 255 for v in r["color"]), edgecolor="black",
                     label=f"{r['name']} {100 * r['share']:.1f}%") for r in rows]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8,
               frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(bottom=0.16)
    return png_bytes(plt, fig)


def _load_labels(store: Store, key: str) -> np.ndarray:
    return np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False)


def render(cfg: SegmentReportConfig, store: Store) -> Manifest:
    """Write report.md + report.html (+ PNGs) for a segment.images run."""
    existing = reuse(store, "segment.report", cfg, cfg.out)
    if existing is not None:
        return existing
    seg = read_verified(store, cfg.segment)
    extra = seg.model_extra or {}
    scfg = SegmentConfig.model_validate(seg.config)
    images: list[dict] = extra.get("images", [])
    ok = [e for e in images if e["status"] == "ok"]
    rejected = [e for e in images if e["status"] != "ok"]
    weights = extra.get("weights", {})
    pre = dict(extra.get("preprocessing", {}))
    if isinstance(pre.get("resize_size"), list):  # SemanticSegmentation keeps [size]
        pre["resize_size"] = pre["resize_size"][0] if pre["resize_size"] else None
    with TaskRun("segment.report", cfg, store, cfg.out,
                 inputs={"segment": store.url(cfg.segment)}) as run:
        intro = _intro(cfg, scfg, weights, len(images), len(ok), len(rejected))
        meta = {"run": cfg.run_id, "profile": cfg.profile, "arch": scfg.arch,
                "weights": weights.get("source"), "device": seg.metrics.get("device"),
                "model input (shorter side)": pre.get("resize_size"),
                "images ok / rejected": f"{len(ok)} / {len(rejected)}",
                "inference total (s)": seg.metrics.get("infer/total_s")}
        results = _results_section(cfg, store, scfg, images, ok)
        sections = [Section(title="DeepLab in brief", paragraphs=list(DEEPLAB_TEXT))]
        if cfg.comparison is not None:
            sections.insert(0, link_section(cfg.comparison, store))
        sections.append(results)
        if rejected:
            sections.append(_rejected_section(rejected))
        sections.append(_how_section(seg, scfg, pre))
        why = _why(scfg, weights, pre, len(images), len(ok), len(rejected))
        sections.append(Section(title="Why there is nothing to compare numerically",
                                paragraphs=[why]))
        report = Report(title=cfg.title, intro=intro, sections=sections, meta=meta, why=why)
        keys = write_report(report, store, cfg.out)
        run.outputs.update(keys)
        return run.finish(_records(cfg, seg, scfg, ok, rejected))


def _intro(cfg: SegmentReportConfig, scfg: SegmentConfig, weights: dict, n_images: int,
           n_ok: int, n_rejected: int) -> list[str]:
    """What ran on how many images, and which weights."""
    intro = [
        f"DeepLabV3 ({scfg.arch}, 21 Pascal VOC classes) on {n_images} input image(s): "
        f"{n_ok} segmented, {n_rejected} rejected. Run `{cfg.run_id}`, "
        f"{cfg.profile or '?'} profile.",
    ]
    if weights.get("source") == "random":
        intro.append("**Random weights** (pretrained=false, seed "
                     f"{weights.get('seed')}): this run tests the pipeline end to end; "
                     "its class maps are noise, not predictions.")
    else:
        intro.append(f"Weights {scfg.arch} COCO_WITH_VOC_LABELS_V1 from "
                     f"{weights.get('source')}: `{weights.get('location')}` (sha256 "
                     f"{str(weights.get('sha256', ''))[:12]}...).")
    return intro


def _results_section(cfg: SegmentReportConfig, store: Store, scfg: SegmentConfig,
                     images: list[dict], ok: list[dict]) -> Section:
    """Every input in a table, then a subsection per segmented image."""
    summary = Table(
        columns=["image", "source", "size (WxH)", "file", "status", "top classes",
                 "inference (s)"],
        rows=[[e["name"], e["source"],
               "x".join(map(str, e["size"])) if e.get("size") else None,
               f"{e.get('format', '?')} {e.get('mode', '')}".strip()
               if e.get("format") else None,
               e["status"] if e["status"] == "ok" else f"rejected ({e['stage']})",
               ", ".join(f"{r['name']} {100 * r['share']:.1f}%"
                         for r in e.get("legend", [])[:3]) or None,
               e.get("infer_s")] for e in images],
        caption="Every input, in the order given")
    per_image = [_image_section(cfg, store, scfg, e) for e in ok]
    return Section(title="Results", tables=[summary], subsections=per_image,
                   paragraphs=[] if ok else ["No image could be segmented."])


def _image_section(cfg: SegmentReportConfig, store: Store, scfg: SegmentConfig,
                   e: dict) -> Section:
    """One segmented image: its outputs, the photo / class map / overlay panel, the legend."""
    outs = e["outputs"]
    labels = _load_labels(store, outs["labels"])
    photo = decode_image(store.get_bytes(e["key"]), min_size=1,
                         max_pixels=scfg.max_pixels, max_aspect=float("inf")).rgb
    over = np.asarray(PILImage.open(io.BytesIO(store.get_bytes(outs["overlay"]))))
    rows = store.get_json(outs["legend_json"])["classes"]
    sec = Section(title=f"{e['name']} ({e['size'][0]}x{e['size'][1]})")
    sec.paragraphs.append(f"Source: `{e['source']}`. Outputs: "
                          + ", ".join(f"`{store.url(outs[k])}`"
                                      for k in ("classes", "overlay", "labels")) + ".")
    if e.get("notes"):
        sec.paragraphs.append("Input conversions: " + "; ".join(e["notes"]) + ".")
    sec.images.append(Image(f"{e['name']}-panel.png",
                            panel_png(photo, labels, over, rows, cfg.panel_width,
                                      e["name"]),
                            f"{e['name']}: the photo, its class map (Pascal VOC "
                            "colours, legend below) and the map over the photo",
                            photo=True))
    sec.tables.append(Table(
        columns=["class", "index", "colour", "pixels", "share"],
        rows=[[r["name"], r["index"], r["hex"], r["pixels"],
               f"{100 * r['share']:.2f}%"] for r in rows],
        caption="Legend: classes present, by pixel share (shares sum to 100%)"))
    return sec


def _rejected_section(rejected: list[dict]) -> Section:
    return Section(
        title="Rejected inputs",
        paragraphs=["These inputs produced no output; the others were processed."],
        tables=[Table(columns=["image", "source", "stage", "reason"],
                      rows=[[e["name"], e["source"], e["stage"], e["error"]]
                            for e in rejected])])


def _how_section(seg: Manifest, scfg: SegmentConfig, pre: dict) -> Section:
    """Preprocessing, batching, the outputs of each image and the step timings."""
    return Section(title="How it was run", paragraphs=[
        f"Preprocessing: the weights' own transform: shorter side resized to "
        f"{pre.get('resize_size')} ({pre.get('interpolation')}, antialias), pixels scaled "
        f"to [0, 1] and normalised with mean {pre.get('mean')} / std {pre.get('std')}.",
        f"Batching: images whose preprocessed sizes match run together, up to "
        f"{scfg.batch_size} per batch; differently shaped images are not padded together "
        "(padding would change the ASPP image-pooling branch). The logits are upsampled "
        "bilinearly to each photo's own size before the per-pixel argmax.",
        "Each image's outputs: `classes.png` (palette PNG, pixel value = class index), "
        "`labels.npy` (uint8 label map), `overlay.png`, `legend.json`, `legend.png`.",
    ], tables=[Table(columns=["step", "seconds"], rows=[
        ["weights resolution", seg.metrics.get("weights/resolve_s")],
        ["model build", seg.metrics.get("model/build_s")],
        ["inference (all images)", seg.metrics.get("infer/total_s")],
        ["inference per image (mean)", seg.metrics.get("infer/mean_s")],
        ["segment task total", seg.duration_s]])])


def _why(scfg: SegmentConfig, weights: dict, pre: dict, n_images: int, n_ok: int,
         n_rejected: int) -> str:
    """Why there is nothing to compare numerically with the original report."""
    if weights.get("source") == "random":
        wtext = (f"seeded random weights (pretrained: false, seed {weights.get('seed')}): "
                 "the class maps are noise, a test of the pipeline")
    else:
        wtext = f"the published COCO_WITH_VOC_LABELS_V1 weights ({weights.get('source')})"
    return (f"Why there is nothing to compare numerically: the original report explains "
            "DeepLab (v1: atrous convolution, ASPP, CRF) and prints no segmentation "
            f"numbers, and its photos are lost. Ours: torchvision's DeepLabV3 ({scfg.arch}) "
            f"with {wtext}, on {n_images} photo(s) of our choosing ({n_ok} segmented"
            f", {n_rejected} rejected), shorter side resized to "
            f"{pre.get('resize_size')} px. Nothing is trained.")


def _records(cfg: SegmentReportConfig, seg: Manifest, scfg: SegmentConfig, ok: list[dict],
             rejected: list[dict]) -> dict[str, Any]:
    """The manifest's metrics: image counts, summary rows and the comparison item."""
    summary = [{"question": cfg.question, "variant": f"image={e['name']}", "status": "ok",
                "metric": "top class share",
                "value": max((r["share"] for r in e.get("legend", [])), default=None),
                "time_s": seg.metrics.get("infer/mean_s"), "run": cfg.segment}
               for e in ok]
    summary += [{"question": cfg.question, "variant": f"image={e['name']}",
                 "status": f"rejected: {e['error']}", "metric": None, "value": None,
                 "time_s": None, "run": cfg.segment} for e in rejected]
    comparison = [{"question": cfg.question, "item": "model",
                   "ours": f"{scfg.arch} ({'pretrained' if scfg.pretrained else 'random'}"
                           " weights)",
                   "reference": "DeepLab (v1 explained: atrous conv, ASPP, CRF); no "
                                "numbers printed", "kind": "text"}]
    return {"images/ok": len(ok), "images/rejected": len(rejected),
            "summary": summary, "comparison": comparison}
