"""Q3's flow-level plan: the ``q3-segmentation`` config, its profiles, and the task configs
the flow sends (pure data, no Prefect).

The flow config inherits the segmentation options and the ingest limits of the tasks, so
each default lives once.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from tasks.core.resources import Resources, ResourceTable, on_cpu, resources_field
from tasks.inputs.mirror_index import Entry
from tasks.q3.photos import PACKAGED_IMAGES
from tasks.q3.segment import IngestOptions, SegmentOptions, weights_spec

WIRED = {"images.ingest": {"out"}, "segment.images": {"out", "ingest"}}
RENAMED: dict[str, dict[str, str]] = {}
# What each step needs (tasks.core.resources): DeepLabV3 inference on one GPU.
RESOURCES = ResourceTable(
    fetch=Resources(cpus=1, memory="2g", scratch="4g", time_limit_s=3 * 3600),
    evaluate=Resources(cpus=4, memory="8g", gpus=1, shm="2g", scratch="4g", time_limit_s=3600),
    flow_time_limit_s=6 * 3600)
STEP_KINDS = {"images.ingest": "fetch", "segment.images": "evaluate",
              "segment.report": "report", "report.compare": "report"}


class Q3SegmentationConfig(SegmentOptions, IngestOptions):
    """Q3: DeepLabV3 on any images (local paths, http(s) URLs, store keys, package files).

    The default inputs are real photos shipped inside installed packages. A rejected input
    (missing, not an image, truncated, too small ...) never loses the others' results; the
    run still fails at the end (CLI exit code 3) unless ``allow_rejected`` is true.
    """

    images: list[str] = Field(default_factory=lambda: list(PACKAGED_IMAGES), min_length=1)
    allow_rejected: bool = Field(False, description="true: rejected inputs do not fail the run")
    resources: ResourceTable = resources_field(RESOURCES)

    @field_validator("images", mode="before")
    @classmethod
    def _one_image(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "q3-segmentation": {
        # random weights at a small input size: the whole pipeline on CPU in seconds
        "smoke": {"pretrained": False, "resize_size": 64, "device": "cpu",
                  "resources": on_cpu(RESOURCES)},
        "full": {"pretrained": True},
    },
}


def ingest_config(cfg: Q3SegmentationConfig, out: str) -> dict[str, Any]:
    return {**cfg.model_dump(mode="json", include=set(IngestOptions.model_fields)),
            "out": out, "images": list(cfg.images)}


def segment_config(cfg: Q3SegmentationConfig, out: str, ingest: str) -> dict[str, Any]:
    return {**cfg.model_dump(mode="json", include=set(SegmentOptions.model_fields)),
            "out": out, "ingest": ingest}


def mirror_entries() -> list[Entry]:
    """What ``visionflows mirror`` stores for Q3: the full profile's DeepLabV3 weights."""
    full = Q3SegmentationConfig.model_validate(PROFILES["q3-segmentation"]["full"])
    return [weights_spec(full.arch).mirror_entry()]


# --- what the flow reports: each input's entry, the summary rows and lines

IMAGE_KEYS = ("index", "name", "source", "status", "stage", "error", "size", "mode", "notes",
              "legend", "outputs", "infer_s")


def image_entries(seg: dict[str, Any]) -> list[dict[str, Any]]:
    """Each input's record in the flow result, from the segmentation step's manifest."""
    return [{k: e.get(k) for k in IMAGE_KEYS if k in e} for e in seg["images"]]


def summary_rows(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per input (the flow's metrics table)."""
    return [{"image": e["name"], "status": e["status"] if e["status"] == "ok"
             else f"rejected ({e['stage']})",
             "size": "x".join(map(str, e["size"])) if e.get("size") else "",
             "top_class": e["legend"][0]["name"] if e.get("legend") else "",
             "top_share": round(e["legend"][0]["share"], 4) if e.get("legend") else None,
             "infer_s": e.get("infer_s")} for e in images]


def summary_line(e: dict[str, Any]) -> str:
    """One input in a line: its size and top classes, or why it was rejected."""
    if e["status"] != "ok":
        return f"{e['name']}: REJECTED at {e['stage']}: {e['error']}"
    top = ", ".join(f"{r['name']} {100 * r['share']:.1f}%" for r in e.get("legend", [])[:3])
    return f"{e['name']}: ok {e['size'][0]}x{e['size'][1]} -> {top}"
