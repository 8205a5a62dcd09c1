"""Helpers shared by dataset tasks: hashing, cache folder, resolving a source location."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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
