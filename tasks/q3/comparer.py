"""Q3's side of ``visionflows compare``: Q3 keeps no champion and has no primary metric, so a
comparison is about images. A cell is one input image; its per-class numbers are the pixel
shares of the 21 VOC classes; the images are the two runs' overlays of the same photo
(matched by the photo's sha256, then by name); a section gives, per photo, the share of
pixels both runs label alike. The input data is each photo's sha256.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from tasks.core.runtime import find_manifest
from tasks.core.store import Store
from tasks.q3.segment import VOC_CLASSES
from tasks.reporting.compare import Cell, Comparer, ImagePair
from tasks.reporting.render import Section, Table
from tasks.reporting.runs import RunInfo


def _entries(run: RunInfo) -> list[dict[str, Any]]:
    return [e for e in run.manifest.get("images") or [] if e.get("status") == "ok"]


def _sha(store: Store, run: RunInfo) -> dict[str, str]:
    """Image name -> sha256 of its source bytes (the ingest step's record)."""
    m = find_manifest(store, run.manifest.get("ingest") or "")
    if m is None:
        return {}
    return {e["name"]: e["sha256"] for e in (m.model_extra or {}).get("images", [])
            if e.get("sha256")}


class Q3Comparer(Comparer):
    question = "q3-segmentation"
    primary = None
    secondary = ("classes present", "background share", "infer_s")
    cell_label = "image"

    def cells(self, store: Store, run: RunInfo) -> dict[str, Cell]:
        out = {}
        seg = find_manifest(store, run.manifest.get("segment") or "")
        for e in _entries(run):
            shares = {r["index"]: r["share"] for r in e.get("legend") or []}
            metrics = {"classes present": float(len(shares)),
                       "background share": float(shares.get(0, 0.0))}
            if isinstance(e.get("infer_s"), int | float):
                metrics["infer_s"] = float(e["infer_s"])
            out[e["name"]] = Cell(
                name=e["name"], seeds=[metrics], classes=list(VOC_CLASSES),
                per_class={"pixel share": [float(shares.get(i, 0.0))
                                           for i in range(len(VOC_CLASSES))]},
                steps=[seg.model_dump(mode="json")] if seg else [])
        return out

    def inputs(self, store: Store, run: RunInfo) -> dict[str, str]:
        return {f"image {name}": sha for name, sha in sorted(_sha(store, run).items())}

    def _pairs(self, store: Store, a: RunInfo, b: RunInfo
               ) -> list[tuple[dict[str, Any], dict[str, Any], bool]]:
        """(entry in A, entry in B, same photo) for every photo of B found in A."""
        sha_a, sha_b = _sha(store, a), _sha(store, b)
        in_a = _entries(a)
        by_sha = {sha_a.get(e["name"]): e for e in in_a if sha_a.get(e["name"])}
        by_name = {e["name"]: e for e in in_a}
        out = []
        for e in _entries(b):
            sha = sha_b.get(e["name"])
            if sha and sha in by_sha:
                out.append((by_sha[sha], e, True))
            elif e["name"] in by_name:
                out.append((by_name[e["name"]], e, False))
        return out

    def images(self, store, a, b, cells_a, cells_b) -> list[ImagePair]:
        pairs = []
        for ea, eb, same in self._pairs(store, a, b):
            sha = _sha(store, b).get(eb["name"], "")
            caption = (f"The same photo (sha256 {sha[:12]}) segmented by each run."
                       if same else "Different photos under the same name.")
            pairs.append(ImagePair(f"{eb['name']}: overlay", (ea.get("outputs") or {}).get(
                "overlay"), (eb.get("outputs") or {}).get("overlay"), caption))
        return pairs

    def sections(self, store, a, b, cells_a, cells_b) -> tuple[list[Section], dict[str, Any]]:
        rows, data = [], {}
        for ea, eb, same in self._pairs(store, a, b):
            ka, kb = (ea.get("outputs") or {}).get("labels"), (eb.get("outputs") or {}).get(
                "labels")
            if not (same and ka and kb):
                continue
            la = np.load(io.BytesIO(store.get_bytes(ka)), allow_pickle=False)
            lb = np.load(io.BytesIO(store.get_bytes(kb)), allow_pickle=False)
            if la.shape != lb.shape:
                rows.append([eb["name"], None, "label maps of different sizes"])
                continue
            agree = float((la == lb).mean())
            top_a = (ea.get("legend") or [{}])[0].get("name")
            top_b = (eb.get("legend") or [{}])[0].get("name")
            data[eb["name"]] = {"pixel_agreement": agree, "top_a": top_a, "top_b": top_b}
            rows.append([eb["name"], agree, f"{top_a} -> {top_b}"])
        if not rows:
            return [], {"pixel_agreement": data}
        return [Section("Label agreement per photo", [
            "Share of pixels that both runs give the same class (1.0: identical maps)."],
            [Table(["image", "pixel agreement", "top class A -> B"], rows)])], {
            "pixel_agreement": data}


    def summary(self, metrics: dict[str, Any]) -> list[str]:
        return [f"{name}: pixel agreement {d['pixel_agreement']:.4f}, top class "
                f"{d['top_a']} -> {d['top_b']}"
                for name, d in (metrics.get("pixel_agreement") or {}).items()]


COMPARER = Q3Comparer()
