"""Air-gapped operation: copy every input the ``full`` profiles need into the store, and
find it there again.

``mirror(store, questions)`` runs on a connected machine. For each entry of the catalog
(:func:`catalog`: Fashion-MNIST's four IDX files, the STL10 archive, the ResNet18 / VGG16 /
DeepLabV3 / YOLOv5s / YOLOv5x weights, and the Q4 Roboflow export when a URL is given) it
downloads the published file (resuming a partial download with an HTTP Range request when
the server allows), verifies it against its published checksum where one exists
(torchvision's md5 table, the sha256 prefix in torchvision's weight file names; ultralytics
publishes none, so its files are checked to be torch checkpoints), writes it to the store at
``mirror/<name>`` and then records it in ``mirror/index.json`` (name, source URL, sha256,
size, date). The index is rewritten after each entry with a compare-and-swap, so a crash
never leaves an index entry without its object. A rerun skips every entry whose stored
object still has the indexed sha256 and re-fetches the others.

Every data and weights resolver looks for its input in this order: the explicit location
in the config, the store's mirror index (:func:`lookup`), the local cache, the internet
(not with ``VF_OFFLINE=1``). :func:`offline_fix` words the fix they print.

Because the objects keep their published file names, the store's ``mirror/`` folder of a
``file://`` store is itself a set of standard-layout mirror folders
(``mirror/fashion-mnist/``, ``mirror/weights/torchvision/`` ...).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.data.common import cache_dir, sha256_file
from tasks.errors import ConfigError, DataError, MissingKeyError, StoreError
from tasks.log import get_logger
from tasks.store import Store

PREFIX = "mirror"
INDEX_KEY = f"{PREFIX}/index.json"
INDEX_VERSION = 1
QUESTIONS = ("q1-mlp", "q1-cnn", "q2-transfer", "q3-segmentation", "q4-yolo")
# Tests (and unusual setups) fetch every catalogued file from another server: the
# published URL's path is appended to this base.
SOURCE_BASE_ENV = "VF_MIRROR_SOURCE_BASE"

FASHION_MNIST_QUESTIONS = ("q1-mlp", "q1-cnn")
STL10_NAME = "stl10/stl10_binary.tar.gz"
Q4_EXPORT_NAME = "q4-yolo/roboflow-export.zip"


def fashion_mnist_name(filename: str) -> str:
    return f"fashion-mnist/{filename}"


def torchvision_weights_name(filename: str) -> str:
    return f"weights/torchvision/{filename}"


def ultralytics_weights_name(filename: str) -> str:
    return f"weights/ultralytics/{filename}"


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


# ---------------------------------------------------------------- catalog

def parse_questions(questions: Iterable[str] | str | None) -> tuple[str, ...]:
    """``None``/``all`` -> every question; otherwise names, comma-separated or listed."""
    if questions is None:
        return QUESTIONS
    if isinstance(questions, str):
        questions = [questions]
    names = [q.strip() for item in questions for q in item.split(",") if q.strip()]
    if not names or "all" in names:
        return QUESTIONS
    unknown = [q for q in names if q not in QUESTIONS]
    if unknown:
        raise ConfigError(f"unknown question(s) {', '.join(unknown)}; use any of "
                          f"{', '.join(QUESTIONS)} or all")
    return tuple(q for q in QUESTIONS if q in names)


def catalog(questions: Iterable[str] | str | None = None,
            q4_export_url: str | None = None) -> list[Entry]:
    """Every input the ``full`` profiles of ``questions`` need, from the libraries' metadata.

    URLs come from torchvision (``FashionMNIST.mirrors``, ``STL10.url``, the weights enums'
    ``.url``) and from the ultralytics release :mod:`tasks.yolo` downloads from; md5 sums
    from the tables our fetchers check (the same as torchvision's ``resources`` /
    ``tgz_md5``). Which models come from each question's ``full`` profile.
    """
    from torchvision.datasets import STL10, FashionMNIST

    from tasks import segment, weights, yolo
    from tasks.data import fashion_mnist, stl10
    from tasks.data.yolo_export import public_location
    from tasks.experiments import resolve_config
    from tasks.transfer import ARCHS

    qs = parse_questions(questions)
    if q4_export_url and "q4-yolo" not in qs:
        raise ConfigError("--q4-export is the Q4 dataset: add q4-yolo to --questions")
    entries: dict[str, Entry] = {}

    def add(entry: Entry) -> None:
        if entry.name in entries:  # shared by several questions
            old = entries[entry.name]
            entry = Entry(**{**old.__dict__,
                             "questions": tuple(dict.fromkeys(old.questions + entry.questions))})
        entries[entry.name] = entry

    for q in qs:
        if q in FASHION_MNIST_QUESTIONS:
            base = FashionMNIST.mirrors[0]
            for filename in fashion_mnist.FILES.values():
                add(Entry(fashion_mnist_name(filename), urllib.parse.urljoin(base, filename),
                          FASHION_MNIST_QUESTIONS, f"Fashion-MNIST {filename}",
                          md5=fashion_mnist.MD5[filename]))
        elif q == "q2-transfer":
            add(Entry(STL10_NAME, STL10.url, (q,), "STL10 binary archive",
                      md5=stl10.TGZ_MD5))
            for arch in resolve_config(q, "full").models:
                url = weights.weights_enum(ARCHS[arch]["weights"]).url
                filename = weights.file_name(url)
                match = weights.HASH_REGEX.search(filename)
                add(Entry(torchvision_weights_name(filename), url, (q,),
                          f"{ARCHS[arch]['weights']} weights",
                          sha256_prefix=match.group(1) if match else None))
        elif q == "q3-segmentation":
            spec = segment.weights_spec(resolve_config(q, "full").arch)
            add(Entry(torchvision_weights_name(spec.filename), spec.url, (q,),
                      f"{spec.name} weights", sha256_prefix=spec.sha256_prefix))
        elif q == "q4-yolo":
            for model in resolve_config(q, "full").models:
                if not model.endswith(".pt"):
                    continue  # a .yaml model trains from scratch: nothing to download
                filename = yolo.weights_name(model)
                url = yolo.WEIGHTS_URL.format(release=yolo.ULTRALYTICS_RELEASE, name=filename)
                add(Entry(ultralytics_weights_name(filename), url, (q,),
                          f"ultralytics {filename} weights", check="torch"))
            if q4_export_url:
                add(Entry(Q4_EXPORT_NAME, q4_export_url, (q,),
                          f"Q4 Roboflow export {public_location(q4_export_url)}", check="zip"))
    return list(entries.values())


# ---------------------------------------------------------------- index

def read_index(store: Store) -> dict[str, dict[str, Any]]:
    """The entries of the store's ``mirror/index.json`` by name (empty when there is none)."""
    try:
        data = store.get_json(INDEX_KEY)
    except MissingKeyError:
        return {}
    return dict(data.get("entries", {}))


def _record(store: Store, record: dict[str, Any], attempts: int = 20) -> None:
    """Add ``record`` to the index: read, change, compare-and-swap (safe with other writers)."""
    for _ in range(attempts):
        current = store.get_versioned(INDEX_KEY)
        index = json.loads(current[0]) if current else {"version": INDEX_VERSION, "entries": {}}
        index["entries"][record["name"]] = record
        index["updated"] = datetime.now(UTC).isoformat()
        body = json.dumps(index, indent=2, sort_keys=True).encode()
        if store.put_if(INDEX_KEY, body, current[1] if current else None):
            return
        time.sleep(0.05)
    raise StoreError(f"could not update {store.url(INDEX_KEY)}: it kept changing under us")


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


# ---------------------------------------------------------------- download

class _Progress:
    """A one-line progress bar on stderr (a terminal), or a log line every 25 % (a pipe)."""

    def __init__(self, label: str, total: int | None, done: int, enabled: bool, log):
        self.label, self.total, self.done, self.enabled, self.log = label, total, done, \
            enabled, log
        self.start, self.start_done = time.monotonic(), done
        self.tty = enabled and sys.stderr.isatty()
        self.next_pct = 25
        self.last_draw = 0.0
        if enabled and not self.tty:
            size = f"{total / 1e6:.1f} MB" if total else "unknown size"
            extra = f", resuming at {done / 1e6:.1f} MB" if done else ""
            log.info("downloading %s (%s%s)", label, size, extra)

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = 100 * self.done / self.total if self.total else None
        now = time.monotonic()
        if self.tty and now - self.last_draw > 0.1:
            self.last_draw = now
            rate = (self.done - self.start_done) / max(now - self.start, 1e-6) / 1e6
            width = 30
            fill = int(width * (pct or 0) / 100)
            bar = "#" * fill + "-" * (width - fill)
            total = f"{self.total / 1e6:.1f}" if self.total else "?"
            pct_s = f"{pct:5.1f}%" if pct is not None else "   ?%"
            sys.stderr.write(f"\r{self.label[:40]:40s} [{bar}] {pct_s} "
                             f"{self.done / 1e6:.1f}/{total} MB {rate:.1f} MB/s")
            sys.stderr.flush()
        elif not self.tty and pct is not None and pct >= self.next_pct and pct < 100:
            self.log.info("  %s: %d%%", self.label, int(pct))
            while self.next_pct <= pct:
                self.next_pct += 25

    def close(self) -> None:
        if self.tty:
            self.last_draw = 0.0
            self.update(0)
            sys.stderr.write("\n")
            sys.stderr.flush()


def download(url: str, dest: Path, *, label: str = "", progress: bool = True,
             timeout: float = 60.0, log=None) -> bool:
    """Fetch ``url`` into ``dest``, resuming a partial ``dest`` when the server allows.

    Returns True when it resumed (appended to an existing partial file).
    """
    log = log or get_logger("mirror")
    have = dest.stat().st_size if dest.exists() else 0
    req = urllib.request.Request(os.path.expandvars(url),
                                 headers={"User-Agent": "visionflows-mirror"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch; verification decides
            return True
        raise
    with resp:
        resumed = bool(have) and resp.status == 206
        if not resumed:
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar = _Progress(label or dest.name, total, have, progress, log)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "ab" if resumed else "wb") as fh:
            while block := resp.read(1 << 20):
                fh.write(block)
                bar.update(len(block))
        bar.close()
    return resumed


def _hashes(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def verify(entry: Entry, path: Path, md5: str, sha256: str) -> str | None:
    """None when ``path`` is the published file; else what is wrong with it."""
    if entry.md5 and md5 != entry.md5:
        return f"md5 {md5} does not match the published {entry.md5}"
    if entry.sha256_prefix and not sha256.startswith(entry.sha256_prefix):
        return (f"sha256 {sha256[:12]}... does not start with the published prefix "
                f"{entry.sha256_prefix}")
    if entry.check == "torch":
        from tasks.yolo import _looks_like_weights

        if not _looks_like_weights(path):
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
        from tasks.data.yolo_export import public_location

        return record.get("url") == public_location(entry.url)
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
           log: logging.Logger | None = None) -> list[Result]:
    """Download, verify and store every input of ``questions``; update ``mirror/index.json``.

    Resumable: an entry already indexed whose stored object still has the indexed sha256
    is skipped without any network request; a missing or corrupt one is fetched again, and
    an interrupted download continues from its partial file. A failed entry does not stop
    the others; see each :class:`Result`.
    """
    from tasks.data.yolo_export import public_location

    log = log or get_logger("mirror")
    todo = entries if entries is not None else catalog(questions, q4_export_url)
    base = source_base or os.environ.get(SOURCE_BASE_ENV) or None
    partial = cache_dir("mirror-partial")
    index = read_index(store)
    results: list[Result] = []
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
        shown = public_location(url)
        part = partial / (entry.name.replace("/", "__") + ".part")
        try:
            for attempt in (1, 2):
                resumed = download(url, part, label=entry.name, progress=progress, log=log)
                md5, sha = _hashes(part)
                problem = verify(entry, part, md5, sha)
                if problem is None:
                    break
                part.unlink(missing_ok=True)
                if not resumed or attempt == 2:
                    raise DataError(f"{shown}: {problem}; not stored")
                log.warning("%s: resumed download fails its check (%s): starting over",
                            entry.name, problem)
            size = part.stat().st_size
            store.put_file(entry.key, part)  # the object first, then its index entry
            _record(store, {
                "name": entry.name, "key": entry.key, "url": public_location(entry.url),
                **({"fetched_from": shown} if shown != public_location(entry.url) else {}),
                "sha256": sha, "md5": md5, "size": size,
                "date": datetime.now(UTC).isoformat(), "questions": list(entry.questions),
                "verified": entry.published(), "what": entry.what})
            part.unlink(missing_ok=True)
            log.info("%s: %s (%d bytes, %s) -> %s", entry.name, status, size, entry.published(),
                     store.url(entry.key))
            results.append(Result(entry.name, status, size, sha, questions=entry.questions))
        except (OSError, http.client.HTTPException, DataError, StoreError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, DataError) else str(exc)
            log.error("%s: failed: %s", entry.name, detail)
            results.append(Result(entry.name, "failed", detail=detail,
                                  questions=entry.questions))
    return results


# ---------------------------------------------------------------- resolvers' side

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
