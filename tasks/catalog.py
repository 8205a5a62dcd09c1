"""Air-gapped operation: copy every input the ``full`` profiles need into the store.

``mirror(store, questions)`` runs on a connected machine. The catalog (:func:`catalog`)
asks each question for its inputs (its descriptor's ``mirror`` function, e.g.
``tasks/q<N>/plan.py``: ``mirror_entries``):
Fashion-MNIST's four IDX files, the STL10 archive, the ResNet18 / VGG16 / DeepLabV3 /
YOLOv5s / YOLOv5x weights, and the Q4 Roboflow export when a URL is given. For each entry it
downloads the published file through the one downloader (:mod:`tasks.inputs.download`,
which resumes a partial download with an HTTP Range request where the server allows),
verifies it against its published checksum where one exists (torchvision's md5 table, the
sha256 prefix in torchvision's weight file names; ultralytics publishes none, so its files
are checked to be torch checkpoints), writes it to the store at ``mirror/<name>`` and then
records it in ``mirror/index.json`` (name, source URL, sha256, size, date) with a
compare-and-swap, so a crash never leaves an index entry without its object. A rerun skips
every entry whose stored object still has the indexed sha256 and re-fetches the others.

This module sits on top: it reads the questions' descriptors (``tasks.registry``); nothing
imports it but the CLI.
Resolvers find mirrored files through :mod:`tasks.inputs.mirror_index`.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.core.config import did_you_mean
from tasks.core.descriptor import load
from tasks.core.errors import ConfigError, DataError, StoreError
from tasks.core.files import cache_dir, sha256_file
from tasks.core.log import get_logger
from tasks.core.settings import raw
from tasks.core.store import Store
from tasks.inputs import mirror_index
from tasks.inputs.download import DownloadError, download, public_url
from tasks.inputs.mirror_index import Entry
from tasks.inputs.weights import looks_like_torch_checkpoint
from tasks.questions import question_flows

# Tests (and unusual setups) fetch every catalogued file from another server: the
# published URL's path is appended to this base.
SOURCE_BASE_ENV = "VF_MIRROR_SOURCE_BASE"


def parse_questions(questions: Iterable[str] | str | None) -> tuple[str, ...]:
    """``None``/``all`` -> every question; otherwise names, comma-separated or listed."""
    known = tuple(question_flows())
    if questions is None:
        return known
    if isinstance(questions, str):
        questions = [questions]
    names = [q.strip() for item in questions for q in item.split(",") if q.strip()]
    if not names or "all" in names:
        return known
    unknown = [q for q in names if q not in known]
    if unknown:
        hints = "".join(did_you_mean(q, known) for q in unknown)
        raise ConfigError(f"unknown question(s) {', '.join(unknown)}{hints}; use any of "
                          f"{', '.join(known)} or all")
    return tuple(q for q in known if q in names)


def catalog(questions: Iterable[str] | str | None = None,
            q4_export_url: str | None = None) -> list[Entry]:
    """Every input the ``full`` profiles of ``questions`` need, from the libraries' metadata.

    URLs come from torchvision (``FashionMNIST.mirrors``, ``STL10.url``, the weights enums'
    ``.url``) and from the ultralytics release Q4 downloads from; md5 sums from the tables
    our fetchers check (the same as torchvision's ``resources`` / ``tgz_md5``). Which models
    come from each question's ``full`` profile. ``q4_export_url`` goes to the questions
    whose inputs include a user's export (``mirror_export``).
    """
    qs = parse_questions(questions)
    flows = question_flows()
    takes_export = [q for q, f in flows.items() if f.mirror_export]
    if q4_export_url and not set(takes_export) & set(qs):
        raise ConfigError(f"--q4-export is the {', '.join(takes_export)} dataset: add "
                          f"{' or '.join(takes_export)} to --questions")
    entries: dict[str, Entry] = {}
    for q in qs:
        spec = flows[q]
        if spec.mirror is None:
            continue
        source = load(spec.mirror)
        for entry in (source(q4_export_url) if spec.mirror_export else source()):
            if entry.name in entries:  # shared by several questions
                old = entries[entry.name]
                entry = Entry(**{**old.__dict__, "questions": tuple(
                    dict.fromkeys(old.questions + entry.questions))})
            entries[entry.name] = entry
    return list(entries.values())


def _stored_sha256(store: Store, key: str, work: Path) -> str | None:
    """sha256 of the stored object (None when absent); reads the file in place when local."""
    local = store.local_path(key)
    if local is not None:
        return sha256_file(local) if local.is_file() else None
    if not store.exists(key):
        return None
    tmp = work / (".check-" + hashlib.sha256(key.encode()).hexdigest()[:12])
    try:
        store.get_file(key, tmp)
        return sha256_file(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def verify(entry: Entry, path: Path) -> str | None:
    """None when ``path`` passes the entry's structure check; else what is wrong with it.

    (Published checksums are checked by the downloader itself.)"""
    if entry.check == "torch" and not looks_like_torch_checkpoint(path):
        return "not a torch checkpoint (a torch.save zip of more than 100 kB)"
    if entry.check == "zip" and not zipfile.is_zipfile(path):
        return "not a zip archive"
    return None


def _published_matches(entry: Entry, record: dict[str, Any]) -> bool:
    """Whether an index record is of the file the catalog now names (same checksums)."""
    if entry.md5 and record.get("md5") != entry.md5:
        return False
    if entry.sha256_prefix and not str(record.get("sha256", "")).startswith(
            entry.sha256_prefix):
        return False
    if entry.check == "zip":  # the Q4 export: the same (public) URL
        return record.get("url") == public_url(entry.url)
    return True


@dataclass
class Result:
    """What ``mirror`` did with one entry: fetched, re-fetched, skipped or failed."""

    name: str
    status: str
    size: int | None = None
    sha256: str | None = None
    detail: str = ""
    questions: tuple[str, ...] = field(default_factory=tuple)


def _source_url(entry: Entry, base: str | None) -> str:
    if not base or entry.check == "zip":  # the Q4 export URL is the user's own
        return entry.url
    return base.rstrip("/") + urllib.parse.urlparse(entry.url).path


def mirror(store: Store, questions: Iterable[str] | str | None = None, *,
           q4_export_url: str | None = None, source_base: str | None = None,
           progress: bool = True, entries: list[Entry] | None = None,
           log: logging.Logger | None = None, results: list[Result] | None = None
           ) -> list[Result]:
    """Download, verify and store every input of ``questions``; update ``mirror/index.json``.

    Resumable: an entry already indexed whose stored object still has the indexed sha256
    is skipped without any network request; a missing or corrupt one is fetched again, and
    an interrupted download continues from its partial file. A failed entry does not stop
    the others; see each :class:`Result`.
    """
    log = log or get_logger("mirror")
    todo = entries if entries is not None else catalog(questions, q4_export_url)
    base = source_base or raw(SOURCE_BASE_ENV)
    partial = cache_dir("mirror-partial")
    index = mirror_index.read_index(store)
    results = [] if results is None else results  # the caller may watch it fill
    for entry in todo:
        record = index.get(entry.name)
        if record is not None and _published_matches(entry, record):
            stored = _stored_sha256(store, entry.key, partial)
            if stored == record.get("sha256"):
                log.info("%s: already mirrored (%s, sha256 verified)", entry.name,
                         store.url(entry.key))
                results.append(Result(entry.name, "skipped", record.get("size"), stored,
                                      questions=entry.questions))
                continue
            why = "missing" if stored is None else f"corrupt (sha256 {stored[:12]}...)"
            log.warning("%s: the stored copy is %s: fetching it again", entry.name, why)
            status = "re-fetched"
        else:
            status = "fetched"
        url = _source_url(entry, base)
        shown = public_url(url)
        dest = partial / entry.name.replace("/", "__")
        try:
            got = download(url, dest, md5=entry.md5, sha256_prefix=entry.sha256_prefix,
                           label=entry.name, progress=progress, log=log)
            if (problem := verify(entry, got.path)) is not None:
                got.path.unlink(missing_ok=True)
                raise DataError(f"{shown}: {problem}; not stored")
            store.put_file(entry.key, got.path)  # the object first, then its index entry
            mirror_index.add_entry(store, {
                "name": entry.name, "key": entry.key, "url": public_url(entry.url),
                **({"fetched_from": shown} if shown != public_url(entry.url) else {}),
                "sha256": got.sha256, "md5": got.md5, "size": got.size,
                "date": datetime.now(UTC).isoformat(), "questions": list(entry.questions),
                "verified": entry.published(), "what": entry.what})
            got.path.unlink(missing_ok=True)
            log.info("%s: %s (%d bytes, %s) -> %s", entry.name, status, got.size,
                     entry.published(), store.url(entry.key))
            results.append(Result(entry.name, status, got.size, got.sha256,
                                  questions=entry.questions))
        except (DownloadError, DataError, StoreError, OSError) as exc:
            detail = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
            log.error("%s: failed: %s", entry.name, detail)
            results.append(Result(entry.name, "failed", detail=detail,
                                  questions=entry.questions))
    return results
