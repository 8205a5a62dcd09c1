"""The one downloader every fetch uses: mirror, datasets, weights, the Roboflow export, Q3's
URL images.

``download(url, dest, ...)`` fetches into ``dest`` through a partial file beside it
(``<dest>.part``) and renames it into place only once it is whole and verified, so a
``dest`` that exists is always a complete, checked file. It:

- refuses with ``VF_OFFLINE=1`` (a ``DownloadError`` that says so);
- stops past ``max_bytes`` (by the announced ``Content-Length`` before reading, and by what
  arrived while reading);
- times out a silent server after ``timeout`` seconds (per read);
- resumes a partial file with an HTTP ``Range`` request where the server allows it (a
  ``206`` answer), else starts over;
- retries transient failures (connection errors, timeouts, HTTP 5xx, 429) with backoff,
  never a 4xx;
- checks ``md5`` / ``sha256`` / ``sha256_prefix`` when given (a resumed file that fails its
  check is fetched again once from the start);
- shows progress (:mod:`tasks.core.progress`: a bar on a terminal, log lines otherwise).

``${VAR}`` in a URL is read from the environment; messages and logs show the URL without
its query string (Roboflow links carry an API key there).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import DataError
from tasks.core.files import offline
from tasks.core.log import get_logger
from tasks.core.progress import ByteProgress

USER_AGENT = "visionflows/0.1"


class DownloadError(DataError):
    """A download failed or its file failed its check; ``transient`` says whether trying
    again later may help (network trouble, 5xx) or not (404, wrong checksum, too large)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Downloaded:
    """A finished download: where it is, its size and hashes, and whether it resumed."""

    path: Path
    size: int
    sha256: str
    md5: str
    resumed: bool


def public_url(url: str) -> str:
    """``url`` without query string, fragment or credentials: safe for logs and manifests."""
    if not url.startswith(("http://", "https://")):
        return url
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    if u.port:
        host += f":{u.port}"
    return urllib.parse.urlunsplit((u.scheme, host, u.path, "", ""))


def hashes(path: str | os.PathLike) -> tuple[str, str]:
    """``(md5, sha256)`` of a file, read once."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def _check(path: Path, md5: str, sha: str, *, want_md5: str | None, want_sha256: str | None,
           want_prefix: str | None) -> str | None:
    if want_md5 and md5 != want_md5:
        return f"md5 {md5} does not match the published {want_md5}"
    if want_sha256 and sha != want_sha256:
        return f"sha256 {sha[:16]}... does not match the expected {want_sha256[:16]}..."
    if want_prefix and not sha.startswith(want_prefix):
        return (f"sha256 {sha[:12]}... does not start with the published prefix {want_prefix}")
    return None


def _fetch_once(url: str, part: Path, *, resume: bool, max_bytes: int | None, timeout: float,
                label: str, progress: bool | None, log) -> bool:
    """One HTTP attempt into ``part``; returns whether it appended to an existing partial."""
    have = part.stat().st_size if (resume and part.exists()) else 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/s only)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: verification decides
            return True
        raise
    with resp:
        resumed = bool(have) and resp.status == 206
        if not resumed:
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if max_bytes is not None and total is not None and total > max_bytes:
            raise DownloadError(f"{public_url(url)} is {total / 1e6:.1f} MB, more than the "
                                f"{max_bytes / 1e6:.1f} MB limit")
        bar = ByteProgress(label or part.name, total, have, progress, log)
        part.parent.mkdir(parents=True, exist_ok=True)
        done = have
        try:
            with open(part, "ab" if resumed else "wb") as fh:
                while block := resp.read(1 << 20):
                    done += len(block)
                    if max_bytes is not None and done > max_bytes:
                        raise DownloadError(f"{public_url(url)} is larger than the "
                                            f"{max_bytes / 1e6:.1f} MB limit")
                    fh.write(block)
                    bar.update(len(block))
        finally:
            bar.close()
    return resumed


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    return f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, urllib.error.URLError | OSError | http.client.HTTPException)


def download(url: str, dest: str | os.PathLike, *, md5: str | None = None,
             sha256: str | None = None, sha256_prefix: str | None = None,
             max_bytes: int | None = None, timeout: float = 60.0, resume: bool = True,
             attempts: int = 3, label: str = "", progress: bool | None = None,
             log=None) -> Downloaded:
    """Fetch ``url`` into ``dest`` (verified, atomically); see the module doc.

    Raises ``DownloadError`` (``transient`` set for network trouble) on failure; a partial
    file stays beside ``dest`` for the next attempt to resume, except when it failed its
    check.
    """
    log = log or get_logger("download")
    shown = public_url(url)
    if offline():
        raise DownloadError(f"cannot download {shown}: downloads are disabled (VF_OFFLINE=1)")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    real = os.path.expandvars(url)
    last: BaseException | None = None
    restarted = False
    attempt = 0
    while attempt < attempts:
        attempt += 1
        try:
            resumed = _fetch_once(real, part, resume=resume, max_bytes=max_bytes,
                                  timeout=timeout, label=label or dest.name,
                                  progress=progress, log=log)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if not _transient(exc):
                part.unlink(missing_ok=True)
                raise DownloadError(f"download of {shown} failed: {_describe(exc)}") from None
            last = exc
            log.warning("download of %s failed (attempt %d/%d): %s", shown, attempt, attempts,
                        _describe(exc))
            if attempt < attempts:
                time.sleep(min(2 ** attempt, 10))
            continue
        got_md5, got_sha = hashes(part)
        problem = _check(part, got_md5, got_sha, want_md5=md5, want_sha256=sha256,
                         want_prefix=sha256_prefix)
        if problem is None:
            size = part.stat().st_size
            os.replace(part, dest)
            return Downloaded(dest, size, got_sha, got_md5, resumed)
        part.unlink(missing_ok=True)
        if resumed and not restarted:  # the old partial was of another file: once more
            restarted = True
            attempt -= 1
            log.warning("%s: resumed download fails its check (%s): starting over", shown,
                        problem)
            continue
        raise DownloadError(f"{shown}: {problem}; the file was not kept")
    raise DownloadError(f"download of {shown} failed after {attempts} attempts "
                        f"({_describe(last)}); check the URL and the network", transient=True)
