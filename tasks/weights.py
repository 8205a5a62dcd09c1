"""Pretrained weights for torchvision models, found in a fixed order, never silently skipped.

Order: (1) a mirror given in the config: a local ``.pth`` file, or a local folder or a store
prefix (for air-gapped GPU boxes) holding the checkpoint under torchvision's own file name
(``resnet18-f37072fd.pth``); (2) the store's mirror index (``visionflows mirror``, see
:mod:`tasks.mirror`); (3) the torch hub cache (``$TORCH_HOME/hub/checkpoints``); (4) a
download from torchvision's URL (refused when ``VF_OFFLINE=1``). Every file is checked
against the hash prefix in its torchvision name. When nothing works, ``WeightsError`` lists
what was tried and how to fix it.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks import mirror as mirror_index
from tasks.config import config_hash
from tasks.data.common import cache_dir, offline, sha256_file
from tasks.errors import MissingKeyError, StoreError, VisionflowsError
from tasks.log import get_logger
from tasks.store import Store, join

HASH_REGEX = re.compile(r"-([a-f0-9]+)\.")


class WeightsError(VisionflowsError):
    """Pretrained weights were asked for and cannot be had (or are corrupt).

    ``transient`` is true when a download was tried and failed (worth retrying later);
    false when the checkpoint is simply not where it was looked for, or corrupt.
    """

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a checkpoint was found: ``source`` is mirror-file, mirror-folder, mirror-store,
    mirror-index, hub-cache or download; ``path`` is the local file; ``sha256`` its full hash."""

    name: str
    file: str
    path: str
    source: str
    location: str
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_enum(name: str):
    """The torchvision weights enum member for ``ResNet18_Weights.IMAGENET1K_V1``-style names."""
    from torchvision.models import get_weight

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise WeightsError(f"unknown torchvision weights {name!r} ({exc})") from None


def file_name(url: str) -> str:
    return os.path.basename(urllib.parse.urlparse(url).path)


def hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def verify(path: Path, name: str) -> str:
    """sha256 of ``path``; WeightsError unless it starts with the hash in torchvision's name."""
    digest = sha256_file(path)
    match = HASH_REGEX.search(name)
    if match and not digest.startswith(match.group(1)):
        raise WeightsError(
            f"{path}: sha256 {digest[:16]}... does not start with {match.group(1)} (the hash in "
            f"torchvision's file name {name}): the copy is corrupt or another file; delete it "
            "and put the official checkpoint there")
    return digest


def _download(url: str, dest: Path, name: str) -> None:
    """Download ``url`` to ``dest`` (torch hub's downloader, hash prefix checked)."""
    import torch

    match = HASH_REGEX.search(name)
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=match.group(1) if match else None,
                                   progress=False)


def resolve_weights(weights: str, *, mirror: str | None = None, store: Store | None = None,
                    log: logging.Logger | None = None) -> ResolvedWeights:
    """Find the checkpoint of ``weights`` (e.g. ``ResNet18_Weights.IMAGENET1K_V1``).

    ``mirror`` is a local file (used for the weights whose published hash prefix it has), a
    local folder or, failing that, a store prefix holding the file under its torchvision
    name. Raises WeightsError listing every place tried.
    """
    log = log or get_logger("weights")
    member = weights_enum(weights)
    name = file_name(member.url)
    tried: list[str] = []

    def found(path: Path, source: str, location: str) -> ResolvedWeights:
        digest = verify(path, name)
        log.info("weights %s: %s (%s)", weights, location, source)
        return ResolvedWeights(weights, name, str(path), source, location, digest)

    # 1. the mirror: a local file or folder, else a prefix in the store
    if mirror:
        folder = Path(mirror).expanduser()
        if folder.is_file():
            # one file serves the weights whose published hash it has (the setting is
            # shared by every model of a run)
            match = HASH_REGEX.search(name)
            if folder.name == name or (match and sha256_file(folder).startswith(match.group(1))):
                return found(folder, "mirror-file", str(folder))
            tried.append(f"mirror file {folder}: not {name} (its sha256 does not start with "
                         f"{match.group(1) if match else '?'})")
        elif folder.is_dir():
            if (folder / name).is_file():
                return found(folder / name, "mirror-folder", str(folder / name))
            tried.append(f"mirror folder {folder}: no {name} there")
        elif store is not None:
            key = join(mirror, name)
            # one cached copy per (store, prefix), so the reported location stays true
            local = cache_dir("weights/" + config_hash({"store": store.uri, "mirror": mirror},
                                                       12)) / name
            if local.is_file():  # fetched from the store before
                try:
                    return found(local, "mirror-store", store.url(key) + " (cached copy)")
                except WeightsError:
                    local.unlink()  # a damaged cached copy: fetch it again
            try:
                store.get_file(key, local)
                return found(local, "mirror-store", store.url(key))
            except MissingKeyError:
                tried.append(f"mirror {store.url(key)}: no such object (and {folder} is not a "
                             "local folder)")
            except StoreError as exc:
                tried.append(f"mirror {store.url(key)}: {exc}")
        else:
            tried.append(f"mirror {mirror}: not a local folder")
    else:
        tried.append("mirror: not set (weights_mirror)")
    # 2. the store's mirror index (written by `visionflows mirror`)
    path, where = mirror_index.lookup(store, mirror_index.torchvision_weights_name(name))
    if path is not None:
        return found(path, "mirror-index", where)
    tried.append(where)
    # 3. the torch hub cache
    cached = hub_checkpoints() / name
    if cached.is_file():
        return found(cached, "hub-cache", str(cached))
    tried.append(f"torch hub cache: no {cached}")
    # 4. download
    transient = False
    if offline():
        tried.append(f"download from {member.url}: refused (VF_OFFLINE=1)")
    else:
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            _download(member.url, cached, name)
            return found(cached, "download", member.url)
        except WeightsError:
            raise
        except Exception as exc:  # network errors come in many types
            tried.append(f"download from {member.url}: failed ({type(exc).__name__}: {exc})")
            transient = True
    raise WeightsError(
        f"pretrained weights {weights} ({name}) are not available. Tried: "
        + mirror_index.tried_list(tried)
        + f". Fix: {mirror_index.offline_fix(['q2-transfer'], store)}; or put {name} in a "
        "folder (or a store prefix) and pass --set weights_mirror=DIR, "
        f"or copy it to {cached.parent}, or run where {member.url} is reachable. To train from "
        "random weights on purpose, pass --set pretrained=false.", transient=transient)

