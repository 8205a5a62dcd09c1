"""``yolo-export.fetch``: a Roboflow "YOLO v5 PyTorch" export into the store, validated.

Accepts the export as a zip or a folder (``data.yaml``, ``train/``, ``valid/``, optional
``test/``) from a local path, an http(s) URL, or a store key (``store:KEY`` or the store's own
URI form), or generates one offline (:mod:`tasks.q4.shapes`). Every export is validated
before anything is stored (:func:`validate_export`): problems are reported by file and line.

The stored copy lives under ``data/<name>/<sha>/`` where ``sha`` is the first 16 hex digits
of a content hash over the normalised tree (same content, same key; a rerun reuses it):

    dataset.zip          the export with data.yaml's paths rewritten relative to its root
    data.yaml            that normalised data.yaml
    data.original.yaml   the data.yaml as it came
    validation.json      counts, per-class instances, warnings
    manifest.json        written last

Training and evaluation read it through :func:`materialize`, which unpacks it once into the
local cache and writes a ``data.yaml`` whose ``path`` is that local copy.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from tasks.core.config import Config, config_hash
from tasks.core.errors import ConfigError, DataError, MissingKeyError
from tasks.core.files import cache_dir, offline, sha256_file
from tasks.core.log import get_logger
from tasks.core.runtime import Manifest, TaskRun, read_manifest, shared_result
from tasks.core.store import Store, store_key
from tasks.inputs import mirror_index
from tasks.inputs.download import public_url

IMAGE_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}
REQUIRED_KEYS = ("train", "val", "nc", "names")
SPLIT_KEYS = {"train": "train", "val": "valid", "test": "test"}  # data.yaml key -> usual folder
MAX_SHOWN = 25
# The export's name in the store's mirror index (visionflows mirror --q4-export URL)
EXPORT_MIRROR_NAME = "q4-yolo/roboflow-export.zip"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class YoloDataConfig(Config):
    """Where the detection dataset comes from.

    ``source="export"``: a Roboflow "YOLO v5 PyTorch" export at ``location`` (a local zip or
    folder, an http(s) URL, or ``store:KEY`` / the store's URI of a zip object or a prefix).
    ``source="generate"``: the offline generator (six classes, sized by the other fields).
    In a URL, ``${VAR}`` is taken from the environment (keep a Roboflow key out of configs);
    a URL is looked up in the store's mirror index (``visionflows mirror --q4-export URL``)
    and the local cache before it is downloaded.
    ``backgrounds``: glob patterns (relative to the export root, e.g. ``train/images/bg_*``)
    of images allowed to have no label file; an empty label file always marks a background.
    """

    source: Literal["export", "generate"] = "export"
    location: str | None = None
    name: str = Field("shapes", description="dataset name in the store: data/<name>/<sha>/")
    backgrounds: list[str] = Field(default_factory=list)
    n_train: int = Field(400, gt=0)
    n_valid: int = Field(58, gt=0)
    n_test: int = Field(0, ge=0)
    image_size: int = Field(416, ge=32, le=2048)
    max_objects: int = Field(6, gt=0, le=50)
    min_object: float = Field(0.12, gt=0, lt=1, description="smallest object side / image side")
    max_object: float = Field(0.3, gt=0, le=1, description="largest object side / image side")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> YoloDataConfig:
        if not _NAME.match(self.name):
            raise ConfigError(f"data.name {self.name!r}: use lower-case letters, digits, '.', '_' "
                              "or '-' (it becomes a store key)")
        if self.source == "export" and not self.location:
            raise ConfigError("data.location is required with data.source='export': a Roboflow "
                              "'YOLO v5 PyTorch' export as a zip/folder path, an http(s) URL or "
                              "store:KEY (or use data.source=generate for generated data)")
        if self.source == "generate" and self.location:
            raise ConfigError("data.location: only used with data.source='export'")
        if self.min_object > self.max_object:
            raise ConfigError("data.min_object must be <= data.max_object")
        return self


# ---------------------------------------------------------------- validation

@dataclass(frozen=True)
class Problem:
    """One finding: ``file`` relative to the export root, ``line`` 1-based (None: whole file)."""

    file: str
    line: int | None
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass
class Validation:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    split_dirs: dict[str, str] = field(default_factory=dict)  # data.yaml key -> rel images dir

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, file: str, line: int | None, message: str) -> None:
        self.problems.append(Problem(file, line, message, "error"))

    def warn(self, file: str, line: int | None, message: str) -> None:
        self.problems.append(Problem(file, line, message, "warning"))

    def summary(self) -> dict[str, Any]:
        return {"splits": self.splits, "errors": [str(p) for p in self.errors],
                "warnings": [str(p) for p in self.warnings],
                "nc": self.data.get("nc"), "names": self.data.get("names")}

    def raise_if_failed(self, what: str) -> None:
        if self.ok:
            return
        errs = self.errors
        shown = "\n  ".join(str(p) for p in errs[:MAX_SHOWN])
        more = f"\n  ... and {len(errs) - MAX_SHOWN} more" if len(errs) > MAX_SHOWN else ""
        raise DataError(f"{what} is not a valid YOLO export ({len(errs)} problem"
                        f"{'s' if len(errs) != 1 else ''}; fix them and run again):\n  "
                        f"{shown}{more}")


def _yaml_lines(text: str) -> tuple[dict[str, int], int]:
    """Line numbers (1-based) of the top-level keys, and the mapping's first line."""
    node = yaml.compose(text)
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, _value in node.value:
            lines[str(key.value)] = key.start_mark.line + 1
        return lines, node.start_mark.line + 1
    return lines, 1


def _resolve_split(root: Path, value: str) -> Path | None:
    """Where a data.yaml split path points, read the way ultralytics and Roboflow mean it.

    Roboflow writes ``../train/images`` (relative to a yolov5 checkout beside the export);
    ultralytics resolves against the yaml's folder and retries without the leading ``../``.
    """
    for cand in (root / value, root / value[3:] if value.startswith("../") else None):
        if cand is not None:
            cand = cand.resolve()
            if cand.is_dir() and (cand == root.resolve() or root.resolve() in cand.parents):
                return cand
    return None


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, suffix .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _check_image(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # a full decode: truncated files fail here, not in verify()
            w, h = im.size
    except Exception as exc:  # PIL raises many types for broken files
        return f"image cannot be decoded ({type(exc).__name__}: {exc})"
    if w < 10 or h < 10:
        return f"image is {w}x{h} pixels; ultralytics needs at least 10x10"
    return None


def _check_label(v: Validation, rel: str, text: str, nc: int, names: list[str],
                 instances: dict[str, int]) -> int:
    """Check one label file's rows; return the number of valid object rows."""
    good = 0
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            v.error(rel, lineno, f"expected 5 values 'class cx cy w h' (or a polygon "
                                 f"'class x1 y1 x2 y2 ...'), got {len(fields)}: {line!r}")
            continue
        try:
            values = [float(x) for x in fields]
        except ValueError:
            v.error(rel, lineno, f"non-numeric value in {line!r}")
            continue
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or cls < 0:
            v.error(rel, lineno, f"class id {fields[0]!r} is not a non-negative integer")
            continue
        if cls >= nc:
            v.error(rel, lineno, f"class id {int(cls)} >= nc={nc} (valid ids: 0..{nc - 1})")
            continue
        coords = values[1:]
        bad = [f for f, x in zip(fields[1:], coords, strict=True)
               if not math.isfinite(x) or x < 0 or x > 1]
        if bad:
            v.error(rel, lineno, f"values must be normalised to [0, 1]; out of range: "
                                 f"{', '.join(bad)} in {line!r}")
            continue
        if len(fields) == 5 and (coords[2] <= 0 or coords[3] <= 0):
            v.error(rel, lineno, f"box width and height must be > 0 in {line!r}")
            continue
        if line in seen:
            v.warn(rel, lineno, f"duplicate of line {seen[line]} (ultralytics drops duplicates)")
            continue
        seen[line] = lineno
        good += 1
        instances[names[int(cls)]] = instances.get(names[int(cls)], 0) + 1
    return good


def validate_export(root: str | os.PathLike, backgrounds: list[str] | tuple[str, ...] = ()
                    ) -> Validation:
    """Check a YOLO export folder; collect every problem (never stops at the first).

    Checks: data.yaml parses and has ``train``, ``val``, ``nc``, ``names`` (``nc`` matches
    ``names``; split folders exist inside the export); every image decodes and has a label
    file, or is a declared background (empty label file, or matched by ``backgrounds``);
    every label row is ``class cx cy w h`` with values in [0, 1], w and h > 0, and an integer
    class id below ``nc``. Label files without an image are warnings.
    """
    root = Path(root)
    v = Validation(root)
    yml = root / "data.yaml"
    if not yml.is_file():
        v.error("data.yaml", None, "missing: a Roboflow 'YOLO v5 PyTorch' export has data.yaml "
                                   "at its root (beside train/ and valid/)")
        return v
    text = yml.read_text(errors="replace")
    try:
        data = yaml.safe_load(text)
        lines, top = _yaml_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        v.error("data.yaml", mark.line + 1 if mark else None, f"not valid YAML: "
                f"{getattr(exc, 'problem', None) or exc}")
        return v
    if not isinstance(data, dict):
        v.error("data.yaml", 1, f"expected a mapping of keys (train, val, nc, names), got "
                                f"{type(data).__name__}")
        return v
    v.data = data
    for key in REQUIRED_KEYS:
        if key not in data or data[key] in (None, ""):
            where = lines.get(key, top)
            v.error("data.yaml", where, f"missing required key {key!r}" if key not in data
                    else f"key {key!r} has no value")
    names = data.get("names")
    if isinstance(names, dict):
        try:
            names = [str(names[k]) for k in sorted(names, key=int)]
        except (TypeError, ValueError):
            v.error("data.yaml", lines.get("names"), "names: a mapping must have integer keys")
            names = None
    elif isinstance(names, list):
        names = [str(n) for n in names]
    elif names is not None:
        v.error("data.yaml", lines.get("names"), f"names must be a list, got {names!r}")
        names = None
    nc = data.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc <= 0):
        v.error("data.yaml", lines.get("nc"), f"nc must be a positive integer, got {nc!r}")
        nc = None
    if nc is not None and names is not None and len(names) != nc:
        v.error("data.yaml", lines.get("nc"), f"nc={nc} but names lists {len(names)} classes")
    if names is not None:
        v.data["names"] = names
    if nc is None and names:
        nc = len(names)
    for key in SPLIT_KEYS:
        value = data.get(key)
        if not value:
            continue
        if not isinstance(value, str):
            v.error("data.yaml", lines.get(key), f"{key}: expected one folder path, got {value!r}")
            continue
        path = _resolve_split(root, value)
        if path is None:
            msg = (f"{key}: {value!r} is not a folder inside the export (expected e.g. "
                   f"{SPLIT_KEYS[key]}/images)")
            if key == "test":  # Roboflow writes test: even when the export has no test split
                v.warn("data.yaml", lines.get(key), msg + "; the optional test split is ignored")
            else:
                v.error("data.yaml", lines.get(key), msg)
            continue
        v.split_dirs[key] = path.relative_to(root.resolve()).as_posix()
    if nc is None or names is None:
        return v
    for key, rel_dir in v.split_dirs.items():
        v.splits[key] = _check_split(v, root, key, rel_dir, nc, names, backgrounds)
    return v


def _check_split(v: Validation, root: Path, key: str, rel_dir: str, nc: int, names: list[str],
                 backgrounds) -> dict[str, Any]:
    images_dir = root / rel_dir
    images = sorted(p for p in images_dir.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    stats = {"folder": rel_dir, "images": len(images), "labelled": 0, "backgrounds": 0,
             "objects": 0, "instances": {}}
    if not images:
        if key == "test":
            v.warn(rel_dir, None, "the optional test split has no images")
        else:
            v.error(rel_dir, None, f"the {key} split has no images")
        return stats
    seen_labels = set()
    for img in images:
        rel = img.relative_to(root).as_posix()
        if msg := _check_image(img):
            v.error(rel, None, msg)
        label = label_path(img)
        rel_label = label.relative_to(root).as_posix() if label.is_relative_to(root) else str(label)
        if not label.is_file():
            if any(fnmatch.fnmatch(rel, pat) for pat in backgrounds):
                stats["backgrounds"] += 1
            else:
                v.error(rel, None, f"no label file {rel_label} (every image needs one; an empty "
                                   "file, or a 'backgrounds' pattern, declares a background)")
            continue
        seen_labels.add(label.resolve())
        n = _check_label(v, rel_label, label.read_text(errors="replace"), nc, names,
                         stats["instances"])
        if n:
            stats["labelled"] += 1
            stats["objects"] += n
        elif not label.read_text(errors="replace").strip():
            stats["backgrounds"] += 1
    labels_dir = label_path(images_dir / "x.jpg").parent
    if labels_dir.is_dir():
        for lab in sorted(labels_dir.rglob("*.txt")):
            if lab.resolve() not in seen_labels:
                v.warn(lab.relative_to(root).as_posix(), None, "label file without an image")
    return stats


# ---------------------------------------------------------------- acquire

def _safe_extract(zpath: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(zpath) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if name.is_absolute() or ".." in name.parts or ":" in info.filename:
                    raise DataError(f"{zpath.name}: unsafe path {info.filename!r} in the zip "
                                    "(absolute or '..'): refusing to extract it")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{zpath.name}: not a valid zip archive ({exc}); re-download the "
                        "export ('YOLO v5 PyTorch' format, 'download zip')") from None


def _find_root(folder: Path) -> Path:
    """The folder holding data.yaml: ``folder`` itself or the shallowest one below it."""
    if (folder / "data.yaml").is_file():
        return folder
    found = sorted((p for p in folder.rglob("data.yaml") if "__MACOSX" not in p.parts),
                   key=lambda p: (len(p.parts), str(p)))
    return found[0].parent if found else folder


def _url_cache(url: str) -> Path:
    """The local cache's copy of an export downloaded from ``url`` (keyed by its public form)."""
    digest = hashlib.sha256(public_url(url).encode()).hexdigest()[:16]
    return cache_dir("downloads/yolo-export") / f"{digest}.zip"


def _from_url(location: str, store: Store, workdir: Path, log) -> tuple[Path, str]:
    """An export given by URL: the store's mirror index (an entry mirrored from the same
    URL, query string aside), then the local cache, then the download."""
    shown = public_url(location)
    path, where = mirror_index.lookup(store, EXPORT_MIRROR_NAME, url=shown)
    if path is not None:
        log.info("export %s from the store's mirror index: %s", shown, where)
        return path, "mirror-index"
    tried = [where]
    cached = _url_cache(location)
    if cached.is_file() and zipfile.is_zipfile(cached):
        log.info("export %s from the local cache %s", shown, cached)
        return cached, "cache"
    tried.append(f"cache {cached}: not there")
    if offline():
        raise DataError(mirror_index.unavailable_offline(
            f"the Q4 export {shown}", tried, ["q4-yolo"], store,
            f" with URL = {shown}" + (" and its query string" if "?" in location else "")
            + ", or download the export and pass its path or a store key "
            "(--set data.location=store:KEY)", q4_export=True))
    # ${VAR} in a URL is read from the environment (e.g. ?key=${ROBOFLOW_API_KEY}), so a
    # Roboflow key need not appear in configs, flow parameters or manifests
    from tasks.inputs.download import DownloadError, download

    try:
        zpath = download(location, workdir / "export.zip", label="Q4 export", log=log).path
    except DownloadError as exc:
        hint = (" (a Roboflow export link expires: generate a new one)"
                if "HTTP 4" in str(exc) else "; check the URL and the network, or pass a "
                "local copy")
        raise DownloadError(f"{exc}{hint}", transient=exc.transient) from None
    if zipfile.is_zipfile(zpath):
        tmp = cached.with_name(f".{cached.name}.part")
        shutil.copyfile(zpath, tmp)
        os.replace(tmp, cached)
    return zpath, "url"


def acquire(location: str, store: Store, workdir: Path, log) -> tuple[Path, str]:
    """Bring the export into ``workdir``; return (root folder holding data.yaml, source kind)."""
    dest = workdir / "export"
    dest.mkdir(parents=True, exist_ok=True)
    if location.startswith(("http://", "https://")):
        zpath, source = _from_url(location, store, workdir, log)
        _safe_extract(zpath, dest)
        return _find_root(dest), source
    key = store_key(location, store)
    if key is not None:
        if store.exists(key):
            zpath = store.get_file(key, workdir / "export.zip")
            _safe_extract(zpath, dest)
        else:
            keys = store.list(key)
            if not keys:
                hint = ""
                if (rec := mirror_index.read_index(store).get(EXPORT_MIRROR_NAME)):
                    hint = (f" (the store's mirror index holds the export from {rec['url']}: "
                            f"pass --set data.location={rec['url']} or "
                            f"--set data.location=store:{rec['key']})")
                raise MissingKeyError(f"no object or prefix {key!r} in store {store.uri}: "
                                      "upload the export zip there first, or pass --set "
                                      "data.location=PATH|URL|store:KEY" + hint)
            for k in keys:
                store.get_file(k, dest / k[len(key):].lstrip("/"))
        return _find_root(dest), "store"
    if "://" in location:
        raise ConfigError(f"data.location {location!r}: use a local path, an http(s) URL, or "
                          f"store:KEY (a key in {store.uri})")
    path = Path(location).expanduser()
    if path.is_dir():
        return _find_root(path), "folder"
    if path.is_file():
        _safe_extract(path, dest)
        return _find_root(dest), "zip"
    raise DataError(f"data.location {location!r} does not exist: pass the export's zip or "
                    "folder, an http(s) URL, or store:KEY")


# ---------------------------------------------------------------- normalise + store

def normalised_yaml(v: Validation) -> dict[str, Any]:
    """data.yaml for the stored copy: split paths relative to the export root, no ``path``."""
    out = {k: val for k, val in v.data.items() if k not in ("path", *SPLIT_KEYS)}
    for key in SPLIT_KEYS:
        if key in v.split_dirs:
            out[key] = v.split_dirs[key]
    out["names"] = list(v.data["names"])
    out["nc"] = len(out["names"])
    return out


def _tree_files(root: Path) -> list[tuple[str, Path]]:
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if (p.is_file() and not p.is_symlink() and not any(part.startswith(".") or
                                                           part == "__MACOSX"
                                                           for part in rel.split("/"))
                and rel != "data.yaml" and not rel.endswith(".cache")):
            out.append((rel, p))
    return sorted(out)


def build_archive(v: Validation, dest: Path) -> tuple[str, dict[str, Any]]:
    """Write the normalised export as a deterministic zip; return (content sha256, yaml)."""
    data_yaml = normalised_yaml(v)
    yaml_text = yaml.safe_dump(data_yaml, sort_keys=False)
    h = hashlib.sha256()
    files = _tree_files(v.root)
    with zipfile.ZipFile(dest, "w") as zf:
        entries = [("data.yaml", None)] + files
        for rel, path in entries:
            data = yaml_text.encode() if path is None else path.read_bytes()
            h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            stored = Path(rel).suffix.lower() in IMAGE_SUFFIXES  # already compressed
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return h.hexdigest(), data_yaml


def fetch(cfg: YoloDataConfig, store: Store) -> Manifest:
    """Acquire (or generate), validate and store a YOLO export; reuse an identical stored one."""
    log = get_logger("yolo-export.fetch")
    t0, started_at = time.time(), datetime.now(UTC).isoformat()
    with tempfile.TemporaryDirectory(prefix="vf-yolo-data-") as tmp:
        work = Path(tmp)
        if cfg.source == "generate":
            from tasks.q4.shapes import generate_export

            log.info("generating a %d/%d/%d-image export (%dpx, seed %d)", cfg.n_train,
                     cfg.n_valid, cfg.n_test, cfg.image_size, cfg.seed)
            root = generate_export(work / "export", cfg.n_train, cfg.n_valid, cfg.n_test,
                                   cfg.image_size, cfg.max_objects, cfg.seed,
                                   min_frac=cfg.min_object, max_frac=cfg.max_object)
            source = "generator"
        else:
            root, source = acquire(cfg.location, store, work, log)
        v = validate_export(root, cfg.backgrounds)
        shown = public_url(cfg.location) if cfg.location else "generated export"
        v.raise_if_failed(shown)
        for w in v.warnings[:MAX_SHOWN]:
            log.warning("%s", w)
        archive = work / "dataset.zip"
        sha, data_yaml = build_archive(v, archive)
        prefix = f"data/{cfg.name}/{sha[:16]}"
        existing, damaged = shared_result(store, prefix)
        if existing is not None:
            log.info("export already stored at %s (same content)", store.url(prefix))
            return existing
        # the manifest's config keeps the location without its query string (Roboflow puts
        # the API key there)
        public_cfg = cfg.model_copy(update={"location": shown if cfg.location else None})
        with TaskRun("yolo-export.fetch", public_cfg, store, prefix, shared=True,
                     inputs={"source": source, "location": shown}) as run:
            run.started, run.started_at = t0, started_at  # count acquiring and validating
            run.put_file("dataset", archive, "dataset.zip")
            run.put_bytes("data_yaml", yaml.safe_dump(data_yaml, sort_keys=False).encode(),
                          "data.yaml")
            run.put_bytes("data_original_yaml", (root / "data.yaml").read_bytes(),
                          "data.original.yaml")
            summary = v.summary()
            run.put_json("validation", summary, "validation.json")
            metrics = {f"{split}/{k}": s[k] for split, s in v.splits.items()
                       for k in ("images", "labelled", "backgrounds", "objects")}
            metrics["warnings"] = len(v.warnings)
            log.info("stored %s: %s", store.url(prefix), metrics)
            return run.finish(metrics, replace=damaged, dataset=cfg.name, sha256=sha,
                              zip_sha256=sha256_file(archive), classes=data_yaml["names"],
                              instances={k: s["instances"] for k, s in v.splits.items()},
                              splits=v.split_dirs, generator=(
                                  cfg.model_dump(mode="json") if source == "generator" else None),
                              config_id=config_hash(cfg))


def materialize(store: Store, prefix: str) -> Path:
    """A local, unpacked copy of a stored export (cached by content); return its data.yaml.

    The returned data.yaml has ``path:`` set to the local folder, so ultralytics resolves
    the splits there whatever the working directory.
    """
    manifest = read_manifest(store, prefix)
    sha = manifest.model_extra["sha256"]
    target = cache_dir("datasets/yolo") / f"{manifest.model_extra['dataset']}-{sha[:16]}"
    marker = target / ".complete"
    if not (marker.is_file() and marker.read_text().strip() == sha):
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
        try:
            zpath = store.get_file(manifest.output_key("dataset"), tmp / "dataset.zip")
            want = manifest.model_extra["zip_sha256"]
            if (got := sha256_file(zpath)) != want:
                raise DataError(f"{manifest.output_key('dataset')}: sha256 {got} does not match "
                                f"the manifest's {want}; the stored copy of "
                                f"{prefix} is damaged: rerun the flow (or the fetch task), "
                                "which finds the damage and fetches the dataset again")
            _safe_extract(zpath, tmp / "root")
            zpath.unlink()
            (tmp / "root" / ".complete").write_text(sha)
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(tmp / "root", target)
            except OSError:  # a concurrent task unpacked it first
                if not marker.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    data = yaml.safe_load((target / "data.yaml").read_text())
    data["path"] = str(target)
    local = target / "data.local.yaml"
    buf = io.StringIO()
    yaml.safe_dump(data, buf, sort_keys=False)
    tmp_yaml = local.with_suffix(".tmp")
    tmp_yaml.write_text(buf.getvalue())
    os.replace(tmp_yaml, local)
    return local


def class_names(store: Store, prefix: str) -> list[str]:
    return list(read_manifest(store, prefix).model_extra["classes"])


__all__ = ["YoloDataConfig", "Problem", "Validation", "validate_export", "fetch", "materialize",
           "acquire", "class_names"]
