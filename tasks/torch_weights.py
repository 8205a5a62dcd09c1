"""Find published torch weights: an explicit mirror, the store's mirror index, the torch hub
cache, then a download.

1. **mirror** (config key ``weights``): a local file, a local folder holding the published
   file name, a store key, or a store prefix holding the published file name. When a mirror
   is given and cannot be found, that is an error: we do not fall back silently to anything
   else, because the user asked for that file.
2. **the store's mirror index** (``mirror/index.json``, written by ``visionflows mirror``;
   see :mod:`tasks.mirror`).
3. **torch hub cache**: ``$TORCH_HOME/hub/checkpoints/<published file name>`` (where
   ``torch.hub`` and torchvision put downloads).
4. **download** from the published URL into the hub cache (refused when ``VF_OFFLINE=1``).

Every file is checked against the sha256 prefix in its published file name
(``...-cd0a2569.pth``), as ``torch.hub`` does. When nothing works, the error lists all four
places and what to do.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tasks import mirror as mirror_index
from tasks.data.common import cache_dir, offline
from tasks.errors import StoreError, VisionflowsError
from tasks.store import Store, join

_HASH_RE = re.compile(r"-([a-f0-9]{6,})\.")


class WeightsError(VisionflowsError):
    """Pretrained weights cannot be found, fetched or loaded."""


@dataclass(frozen=True)
class WeightsSpec:
    """Published weights: a human name and the URL they are published at."""

    name: str
    url: str

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name

    @property
    def sha256_prefix(self) -> str | None:
        m = _HASH_RE.search(self.filename)
        return m.group(1) if m else None


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: str      # "mirror" | "mirror-index" | "hub-cache" | "download"
    location: str    # the file, store URI or URL it came from
    sha256: str


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def hub_checkpoint(spec: WeightsSpec) -> Path:
    """Where ``torch.hub`` keeps (or would keep) the published file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / spec.filename


def _verified(spec: WeightsSpec, path: Path, where: str) -> str:
    digest = sha256_of(path)
    want = spec.sha256_prefix
    if want and not digest.startswith(want):
        raise WeightsError(
            f"{where}: sha256 {digest[:12]}... does not match the published prefix {want} of "
            f"{spec.filename}; the file is corrupt, truncated or other weights: delete it and "
            "fetch it again")
    return digest


def _from_mirror(spec: WeightsSpec, mirror: str, store: Store | None) -> ResolvedWeights:
    path = Path(mirror).expanduser()
    if path.is_file():
        return ResolvedWeights(path, "mirror", str(path), _verified(spec, path, str(path)))
    if path.is_dir():
        cand = path / spec.filename
        if cand.is_file():
            return ResolvedWeights(cand, "mirror", str(cand), _verified(spec, cand, str(cand)))
        raise WeightsError(f"weights mirror folder {path} has no {spec.filename} "
                           f"({spec.name}); put that file there or pass the file itself")
    tried = [f"no local file or folder {path}"]
    if store is not None and "://" not in mirror:
        for key in (mirror, join(mirror, spec.filename)):
            try:
                present = store.exists(key)
            except StoreError:
                present = False
            if present:
                local = cache_dir("weights") / spec.filename
                if not (local.is_file() and spec.sha256_prefix
                        and sha256_of(local).startswith(spec.sha256_prefix)):
                    store.get_file(key, local)
                where = store.url(key)
                return ResolvedWeights(local, "mirror", where, _verified(spec, local, where))
        tried.append(f"no key {mirror!r} or {join(mirror, spec.filename)!r} in store "
                     f"{store.uri}")
    raise WeightsError(f"weights mirror {mirror!r} not found for {spec.name}: "
                       f"{'; '.join(tried)}. Fix the `weights` setting (a file, a folder "
                       f"holding {spec.filename}, or a store key), or drop it to use the "
                       "torch hub cache / download")


def resolve_weights(spec: WeightsSpec, mirror: str | None = None, store: Store | None = None,
                    log=None) -> ResolvedWeights:
    """The local file of ``spec``'s weights: mirror, mirror index, hub cache, download."""
    if mirror:
        found = _from_mirror(spec, mirror, store)
        if log:
            log.info("weights %s from mirror %s", spec.name, found.location)
        return found
    indexed, where = mirror_index.lookup(store, mirror_index.torchvision_weights_name(
        spec.filename))
    if indexed is not None:
        if log:
            log.info("weights %s from the store's mirror index: %s", spec.name, where)
        return ResolvedWeights(indexed, "mirror-index", where, _verified(spec, indexed, where))
    hub = hub_checkpoint(spec)
    if hub.is_file():
        if log:
            log.info("weights %s from the torch hub cache %s", spec.name, hub)
        return ResolvedWeights(hub, "hub-cache", str(hub), _verified(spec, hub, str(hub)))
    if offline():
        reason = "not tried: downloads are disabled (VF_OFFLINE=1)"
    else:
        import torch

        hub.parent.mkdir(parents=True, exist_ok=True)
        if log:
            log.info("downloading %s weights from %s to %s", spec.name, spec.url, hub)
        try:
            # writes a temporary file next to ``hub`` and renames it once the hash matches
            torch.hub.download_url_to_file(spec.url, str(hub), hash_prefix=spec.sha256_prefix,
                                           progress=False)
            return ResolvedWeights(hub, "download", spec.url, sha256_of(hub))
        except Exception as exc:  # network and hash errors come in many types
            inner = getattr(exc, "reason", None) or exc
            reason = f"failed ({type(exc).__name__}: {inner})"
    raise WeightsError(
        f"pretrained weights {spec.name} ({spec.filename}) are not available:\n"
        f"  1. mirror: not set (config key `weights`)\n"
        f"  2. {where}\n"
        f"  3. torch hub cache: {hub} does not exist\n"
        f"  4. download {spec.url}: {reason}\n"
        f"Fix: {mirror_index.offline_fix(['q3-segmentation'], store)}; or "
        f"copy {spec.filename} from a connected machine and pass it with "
        f"--set weights=PATH (the file, a folder holding it, or a store key), or put it at "
        f"{hub}; for a plumbing run with random weights use --set pretrained=false")
