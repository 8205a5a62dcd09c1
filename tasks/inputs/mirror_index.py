"""The store's mirror index (``mirror/index.json``, written by ``visionflows mirror``, see
:mod:`tasks.catalog`): what every resolver consults after the explicit location in its
config and before the local cache and the internet.

Objects keep their published file names under ``mirror/<kind>/`` (``fashion-mnist/``,
``stl10/``, ``weights/torchvision/``, ``weights/ultralytics/``, a question's own folder), so the
``mirror/`` folder of a ``file://`` store is itself a set of standard-layout mirror folders.
This module also words what resolvers say when they find nothing (:func:`tried_list`,
:func:`offline_fix`, :func:`unavailable_offline`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.core.errors import MissingKeyError, StoreError
from tasks.core.files import cache_dir, sha256_file
from tasks.core.store import Store

PREFIX = "mirror"
INDEX_KEY = f"{PREFIX}/index.json"
INDEX_VERSION = 1


@dataclass(frozen=True)
class Entry:
    """One file to mirror: stored at ``mirror/<name>``, published at ``url``."""

    name: str
    url: str
    questions: tuple[str, ...]
    what: str
    md5: str | None = None            # published md5 (torchvision's tables)
    sha256_prefix: str | None = None  # the hash in torchvision's weight file names
    check: str = "none"               # structure check without a checksum: torch | zip

    @property
    def key(self) -> str:
        return f"{PREFIX}/{self.name}"

    @property
    def filename(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    def published(self) -> str:
        """How the file is verified, in words."""
        if self.md5:
            return f"md5 {self.md5} (published)"
        if self.sha256_prefix:
            return f"sha256 prefix {self.sha256_prefix} (published, in the file name)"
        if self.check == "torch":
            return "no published checksum; checked to be a torch checkpoint"
        if self.check == "zip":
            return "no published checksum; checked to be a zip archive"
        return "no published checksum"


def dataset_name(dataset: str, filename: str) -> str:
    """The index name of a dataset file: ``fashion-mnist/train-images-idx3-ubyte.gz``."""
    return f"{dataset}/{filename}"


def torchvision_weights_name(filename: str) -> str:
    return f"weights/torchvision/{filename}"


def ultralytics_weights_name(filename: str) -> str:
    return f"weights/ultralytics/{filename}"


def read_index(store: Store) -> dict[str, dict[str, Any]]:
    """The entries of the store's ``mirror/index.json`` by name (empty when there is none)."""
    try:
        data = store.get_json(INDEX_KEY)
    except MissingKeyError:
        return {}
    return dict(data.get("entries", {}))


def add_entry(store: Store, entry: dict[str, Any], attempts: int = 20) -> None:
    """Add ``entry`` to the index: read, change, compare-and-swap (safe with other writers)."""
    for _ in range(attempts):
        current = store.get_versioned(INDEX_KEY)
        index = json.loads(current[0]) if current else {"version": INDEX_VERSION, "entries": {}}
        index["entries"][entry["name"]] = entry
        index["updated"] = datetime.now(UTC).isoformat()
        body = json.dumps(index, indent=2, sort_keys=True).encode()
        if store.put_if(INDEX_KEY, body, current[1] if current else None):
            return
        time.sleep(0.05)
    raise StoreError(f"could not update {store.url(INDEX_KEY)}: it kept changing under us")


def lookup(store: Store | None, name: str, url: str | None = None) -> tuple[Path | None, str]:
    """A local, sha256-verified file of mirror entry ``name``, or None and why not.

    Returns ``(path, location)`` when found (``location`` names the store object) and
    ``(None, reason)`` otherwise; the reason reads well in a resolver's list of places
    tried. With ``url`` (public form, no query string), the entry must have been mirrored
    from that URL. A local store's object is used in place; an S3 one is copied into the
    cache (``$VF_CACHE_DIR/mirror/<sha>/``) once.
    """
    if store is None:
        return None, "mirror index: no store given"
    where = store.url(INDEX_KEY)
    try:
        record = read_index(store).get(name)
    except (StoreError, ValueError) as exc:
        return None, f"mirror index {where}: unreadable ({exc})"
    if record is None:
        return None, f"mirror index {where}: no entry {name}"
    if url is not None and record.get("url") != url:
        return None, (f"mirror index {where}: {name} was mirrored from {record.get('url')}, "
                      f"not {url}")
    key, want = record.get("key") or f"{PREFIX}/{name}", record.get("sha256", "")
    obj = store.url(key)
    local = store.local_path(key)
    if local is not None:
        if not local.is_file():
            return None, (f"mirror index {where} lists {name} but {obj} is missing: run "
                          "`visionflows mirror` again to re-fetch it")
        got = sha256_file(local)
        if got != want:
            return None, (f"mirror {obj} is corrupt (sha256 {got[:12]}... but the index says "
                          f"{want[:12]}...): run `visionflows mirror` again to re-fetch it")
        return local, obj
    cached = cache_dir(f"mirror/{want[:16]}") / Path(key).name
    if cached.is_file() and sha256_file(cached) == want:
        return cached, f"{obj} (cached copy)"
    tmp = cached.with_name(f".{cached.name}.part")
    try:
        store.get_file(key, tmp)
    except MissingKeyError:
        return None, (f"mirror index {where} lists {name} but {obj} is missing: run "
                      "`visionflows mirror` again to re-fetch it")
    except StoreError as exc:
        return None, f"mirror {obj}: {exc}"
    got = sha256_file(tmp)
    if got != want:
        tmp.unlink(missing_ok=True)
        return None, (f"mirror {obj} is corrupt (sha256 {got[:12]}... but the index says "
                      f"{want[:12]}...): run `visionflows mirror` again to re-fetch it")
    os.replace(tmp, cached)
    return cached, obj


def mirror_command(questions: Iterable[str], store: Store | None = None,
                   q4_export: bool = False) -> str:
    """The ``visionflows mirror`` command line that provides inputs of ``questions``."""
    cmd = (f"visionflows mirror --questions {','.join(questions)} "
           f"--store {store.uri if store is not None else 'URI'}")
    return cmd + (" --q4-export URL" if q4_export else "")


def offline_fix(questions: Iterable[str], store: Store | None = None,
                q4_export: bool = False) -> str:
    """The sentence every resolver ends its failure with."""
    return (f"on a connected machine run `{mirror_command(questions, store, q4_export)}` "
            "and make that store reachable here (copy the folder, or sync the bucket)")


def tried_list(tried: Iterable[str]) -> str:
    """The places a resolver tried, numbered on one line: ``(1) ...; (2) ...``."""
    return "; ".join(f"({i}) {t}" for i, t in enumerate(tried, 1))


def unavailable_offline(what: str, tried: Iterable[str], questions: Iterable[str],
                        store: Store | None, alternative: str, q4_export: bool = False) -> str:
    """The message of a resolver that found nothing and may not download (``VF_OFFLINE=1``):
    what is missing, every place tried, the ``mirror`` command, then ``alternative``."""
    return (f"{what} is not available offline (VF_OFFLINE=1). Tried: {tried_list(tried)}. "
            f"Fix: {offline_fix(questions, store, q4_export)}{alternative}")
