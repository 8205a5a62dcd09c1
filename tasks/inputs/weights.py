"""Pretrained weights, found in one fixed order and never silently skipped: the one resolver
for torchvision checkpoints (Q2's ResNet18 / VGG16, Q3's DeepLabV3) and ultralytics ones
(Q4's YOLO).

Order (:func:`resolve_weights`):

1. **the explicit location** in the config (``weights_mirror``, ``weights``): a local file,
   a local folder holding the published file name, or a store key / prefix (``store:KEY``,
   the store's own URI form, or a bare key). When it is given and does not provide the
   file, that is an error listing what was tried: the user asked for that file, so nothing
   falls back silently.
2. **the store's mirror index** (``visionflows mirror``, :mod:`tasks.inputs.mirror_index`);
3. **the local cache**: torch hub's ``checkpoints/`` for torchvision files,
   ``$VF_CACHE_DIR/weights/ultralytics`` for ultralytics ones;
4. **a download** from the published URL into that cache, through the one downloader
   (:mod:`tasks.inputs.download`; refused with ``VF_OFFLINE=1``).

Every file is checked the one way its publisher allows (:func:`verify`): torchvision names
carry a sha256 prefix (``resnet18-f37072fd.pth``); ultralytics publishes none, so its files
must at least be torch checkpoints. When nothing works, ``WeightsError`` lists every place
tried and the fixes.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.core.config import config_hash
from tasks.core.errors import DataError, MissingKeyError, StoreError
from tasks.core.files import cache_dir, offline, sha256_file
from tasks.core.log import get_logger
from tasks.core.store import Store, join, store_key
from tasks.inputs import mirror_index

HASH_REGEX = re.compile(r"-([a-f0-9]{6,})\.")
TORCH_MIN_BYTES = 100_000


class WeightsError(DataError):
    """Pretrained weights were asked for and cannot be had (or are corrupt).

    ``transient`` is true when a download was tried and failed for a reason that may pass
    (worth retrying later); false when the checkpoint is simply not where it was looked for,
    or corrupt.
    """

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class WeightsSpec:
    """Published weights: a name for people, where they are published, and how to check them.

    ``kind`` is ``torchvision`` (sha256 prefix in the file name) or ``ultralytics`` (a torch
    checkpoint); ``aliases`` are other file names accepted in a mirror folder
    (``yolov5s.pt`` for ``yolov5su.pt``); ``questions`` name who needs them, for the fix
    ``visionflows mirror --questions ...``.
    """

    name: str
    url: str
    kind: str = "torchvision"
    questions: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name

    @property
    def sha256_prefix(self) -> str | None:
        if self.kind != "torchvision":
            return None
        m = HASH_REGEX.search(self.filename)
        return m.group(1) if m else None

    @property
    def index_name(self) -> str:
        """The file's name in the store's mirror index."""
        if self.kind == "ultralytics":
            return mirror_index.ultralytics_weights_name(self.filename)
        return mirror_index.torchvision_weights_name(self.filename)

    def cache_folder(self) -> Path:
        """Where downloads go and are looked for: torch hub's folder for torchvision."""
        if self.kind == "torchvision":
            import torch

            return Path(torch.hub.get_dir()) / "checkpoints"
        return cache_dir(f"weights/{self.kind}")

    def mirror_entry(self) -> mirror_index.Entry:
        """This file as an entry of ``visionflows mirror``'s catalog."""
        return mirror_index.Entry(self.index_name, self.url, self.questions,
                                  f"{self.name} weights", sha256_prefix=self.sha256_prefix,
                                  check="torch" if self.kind == "ultralytics" else "none")


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a checkpoint was found: ``source`` is ``mirror-file``, ``mirror-folder``,
    ``mirror-store``, ``mirror-index``, ``cache`` or ``download``; ``path`` is the local
    file; ``sha256`` its full hash."""

    name: str
    file: str
    path: str
    source: str
    location: str
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def torchvision_spec(weights: str, questions: tuple[str, ...] = ()) -> WeightsSpec:
    """The spec of torchvision weights named like ``ResNet18_Weights.IMAGENET1K_V1``."""
    from torchvision.models import get_weight

    try:
        member = get_weight(weights)
    except (ValueError, KeyError, AttributeError) as exc:
        raise WeightsError(f"unknown torchvision weights {weights!r} ({exc})") from None
    return WeightsSpec(weights, member.url, "torchvision", questions)


def looks_like_torch_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``torch.save`` file (a zip archive) of a plausible size."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        return os.path.getsize(path) > TORCH_MIN_BYTES and head == b"PK\x03\x04"
    except OSError:
        return False


def verify(spec: WeightsSpec, path: Path, where: str) -> str:
    """The file's sha256; ``WeightsError`` naming ``where`` unless it is ``spec``'s file."""
    if spec.kind != "torchvision" and not looks_like_torch_checkpoint(path):
        raise WeightsError(f"{where}: not a torch checkpoint (a torch.save zip of more than "
                           f"{TORCH_MIN_BYTES // 1000} kB): the copy is damaged or another "
                           f"file; put the published {spec.filename} there")
    digest = sha256_file(path)
    want = spec.sha256_prefix
    if want and not digest.startswith(want):
        raise WeightsError(
            f"{where}: sha256 {digest[:16]}... does not start with {want} (the hash in the "
            f"published file name {spec.filename}): the copy is corrupt, truncated or other "
            "weights; delete it and put the published file there")
    return digest


def _from_explicit(spec: WeightsSpec, location: str, store: Store | None, tried: list[str],
                   found) -> ResolvedWeights | None:
    names = (spec.filename, *spec.aliases)
    path = Path(location).expanduser()
    key = store_key(location, store)
    if key is None and path.is_file():
        if path.name in names or spec.kind == "ultralytics" or (
                spec.sha256_prefix and sha256_file(path).startswith(spec.sha256_prefix)):
            return found(path, "mirror-file", str(path))
        tried.append(f"mirror file {path}: not {spec.filename} (its sha256 does not start "
                     f"with {spec.sha256_prefix})")
        return None
    if key is None and path.is_dir():
        for name in names:
            if (path / name).is_file():
                return found(path / name, "mirror-folder", str(path / name))
        tried.append(f"mirror folder {path}: no {' or '.join(names)} there")
        return None
    if store is None or "://" in (key if key is not None else location):
        tried.append(f"mirror {location}: no such local file or folder"
                     + ("" if store is None else f" (and not a key in store {store.uri})"))
        return None
    key = key if key is not None else location.strip("/")
    keys = [key] if key.endswith((".pt", ".pth")) else [join(key, n) for n in names]
    for k in keys:
        # one cached copy per (store, key), so the reported location stays true
        local = cache_dir("weights/store-" + config_hash({"store": store.uri, "key": k}, 12)) \
            / Path(k).name
        try:
            if local.is_file():
                try:
                    return found(local, "mirror-store", store.url(k) + " (cached copy)")
                except WeightsError:
                    local.unlink()  # a damaged cached copy: fetch it again
            store.get_file(k, local)
            return found(local, "mirror-store", store.url(k))
        except MissingKeyError:
            tried.append(f"mirror {store.url(k)}: no such object"
                         + ("" if key is not None and location.startswith("store:")
                            else f" (and {path} is not a local file or folder)"))
        except StoreError as exc:
            tried.append(f"mirror {store.url(k)}: {exc}")
    return None


def resolve_weights(spec: WeightsSpec, explicit: str | None = None, store: Store | None = None,
                    log: logging.Logger | None = None, setting: str = "weights_mirror"
                    ) -> ResolvedWeights:
    """The verified local file of ``spec``, found in the order of the module doc.

    ``explicit`` is the config's location (``setting`` names that key in messages). Raises
    ``WeightsError`` listing every place tried.
    """
    log = log or get_logger("weights")
    tried: list[str] = []

    def found(path: Path, source: str, location: str) -> ResolvedWeights:
        digest = verify(spec, path, location)
        log.info("weights %s: %s (%s)", spec.name, location, source)
        return ResolvedWeights(spec.name, spec.filename, str(path), source, location, digest)

    if explicit:
        got = _from_explicit(spec, explicit, store, tried, found)
        if got is not None:
            return got
        raise WeightsError(
            f"pretrained weights {spec.name} ({spec.filename}) are not at the location given "
            f"by {setting}={explicit!r}. Tried: {mirror_index.tried_list(tried)}. Fix "
            f"{setting} (a {spec.filename} file, a folder holding it, or store:KEY), or drop it "
            "to use the store's mirror index, the local cache or a download")
    tried.append(f"{setting}: not set")
    path, where = mirror_index.lookup(store, spec.index_name)
    if path is not None:
        return found(path, "mirror-index", where)
    tried.append(where)
    cached = spec.cache_folder() / spec.filename
    if cached.is_file():
        try:
            return found(cached, "cache", str(cached))
        except WeightsError as exc:
            tried.append(f"cache {cached}: {exc}")
    else:
        tried.append(f"cache: no {cached}")
    transient = False
    if offline():
        tried.append(f"download from {spec.url}: refused (VF_OFFLINE=1)")
    else:
        from tasks.inputs.download import DownloadError, download

        try:
            download(spec.url, cached, sha256_prefix=spec.sha256_prefix, label=spec.filename,
                     log=log)
            return found(cached, "download", spec.url)
        except WeightsError:
            cached.unlink(missing_ok=True)
            raise
        except DownloadError as exc:
            tried.append(f"download from {spec.url}: {exc}")
            transient = exc.transient
    raise WeightsError(
        f"pretrained weights {spec.name} ({spec.filename}) are not available. Tried: "
        + mirror_index.tried_list(tried)
        + f". Fix: {mirror_index.offline_fix(spec.questions, store)}; or put {spec.filename} "
        f"in a folder (or a store prefix) and pass --set {setting}=DIR, or copy it to "
        f"{cached.parent}, or run where {spec.url} is reachable.", transient=transient)
