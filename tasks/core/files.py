"""File helpers every task uses: the one sha256/md5 of a file, the local cache folder, the
run's work folders, the offline switch, and a resolver's local-cache step."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tasks.core.settings import raw, setting


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """The hex digest of a file's bytes (read in chunks), e.g. ``"sha256"``, ``"md5"``."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def md5_file(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


def cache_dir(sub: str = "") -> Path:
    """The local cache: ``VF_CACHE_DIR`` or ``~/.cache/visionflows`` (created on use)."""
    root = Path(raw("VF_CACHE_DIR") or Path.home() / ".cache" / "visionflows")
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def work_dir(prefix: str = "vf-") -> Path:
    """A fresh temporary folder for a task's scratch files.

    Under ``VF_WORK_ROOT`` when set (the ``visionflows`` CLI sets it to a folder of its own
    run, which it removes on every exit path, a kill included), else the system's temp.
    """
    root = raw("VF_WORK_ROOT")
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def offline() -> bool:
    """Whether network downloads are forbidden (``VF_OFFLINE=1``)."""
    return setting("VF_OFFLINE")


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
