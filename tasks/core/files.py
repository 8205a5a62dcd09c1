"""Helpers shared by dataset tasks: hashing, cache folder, resolving a source location."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir(sub: str = "") -> Path:
    """The local cache: ``VF_CACHE_DIR`` or ``~/.cache/visionflows`` (created on use)."""
    root = Path(os.environ.get("VF_CACHE_DIR") or Path.home() / ".cache" / "visionflows")
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def offline() -> bool:
    """Whether network downloads are forbidden (``VF_OFFLINE=1``)."""
    return os.environ.get("VF_OFFLINE", "").lower() in ("1", "true", "yes")


def from_local_cache(candidates: Iterable[Path], load: Callable[[Path], Any], tried: list[str],
                     log, what: str, present: Callable[[Path], bool] = Path.exists
                     ) -> tuple[Any, str] | None:
    """A resolver's local-cache step: ``load`` the first candidate that is ``present`` and
    loads, returning ``(result, "cache:<path>")``; each miss is added to ``tried``."""
    from tasks.core.errors import DataError

    for path in candidates:
        if not present(path):
            tried.append(f"cache {path}: not there")
            continue
        try:
            result = load(path)
        except DataError as exc:
            tried.append(f"cache {path}: {exc}")
            continue
        log.info("%s from the local cache %s", what, path)
        return result, f"cache:{path}"
    return None
