"""One small interface over the artifact store: ``file://DIR`` and ``s3://bucket/prefix``.

Keys are relative, ``/``-separated paths such as ``runs/<flow>/<run-id>/train/manifest.json``.
Local writes are atomic (temporary file, then rename); S3 uploads go through boto3's
transfer manager (multipart for large files) with botocore's retries on, and carry their
sha256 as object metadata, so :meth:`Store.digest` answers with a HEAD request.
A full or read-only disk under a ``file://`` store is a one-line ``StoreError`` naming the
path; :meth:`Store.check` finds both (and a missing bucket) before any work starts.
Credentials come from the environment only and are never logged or put in messages.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import urllib.parse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from tasks.core.errors import ConfigError, MissingKeyError, StoreError
from tasks.core.files import sha256_file
from tasks.core.log import get_logger
from tasks.core.settings import default, raw, setting

DEFAULT_STORE = default("VF_STORE")
LINK_EXPIRY_DEFAULT_S = 7 * 24 * 3600
LINK_EXPIRY_MAX_S = 7 * 24 * 3600  # S3 Signature Version 4 allows at most 7 days


def link_expiry_seconds(value: str | int | None = None) -> int:
    """How long presigned report links stay valid, in seconds: ``value`` or
    ``VF_LINK_EXPIRY`` (``3600``, ``90m``, ``12h``, ``7d``), default 7 days, at most 7 days
    (the S3 SigV4 limit)."""
    given = value if value is not None else raw("VF_LINK_EXPIRY")
    if given is None or str(given).strip() == "":
        return LINK_EXPIRY_DEFAULT_S
    text = str(given).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = (float(text[:-1]) * units[text[-1]] if text[-1] in units
                   else float(text))
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise ConfigError(f"link expiry {given!r} is not a duration: use seconds (3600) or a "
                          "number with s, m, h or d (90m, 12h, 7d)")
    if seconds > LINK_EXPIRY_MAX_S:
        raise ConfigError(f"link expiry {given!r} is longer than 7 days, the most an S3 "
                          "presigned URL allows: use 7d or less")
    return int(seconds)


def _check_key(key: str) -> str:
    key = key.strip("/")
    if not key:
        raise StoreError("empty store key")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key {key!r}: no empty, '.' or '..' segments allowed")
    return key


def gave_up(waited_s: float | None) -> str:
    """``gave up after 6.2s of retries``: the time really spent, as measured by the caller,
    rounded down (to 0.1 s, from 10 s on to whole seconds): never more than it was."""
    if waited_s is None:
        return "gave up"
    return f"gave up after {math.floor(waited_s * 10) / 10:.1f}s of retries" if waited_s < 10 \
        else f"gave up after {math.floor(waited_s)}s of retries"


def _s3_client(endpoint_url: str | None, region: str, config):
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region,
                                          config=config)


def join(*parts: str) -> str:
    """Join key parts with '/', dropping empty parts and stray slashes."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def json_bytes(obj: Any) -> bytes:
    """How the store writes JSON (indented, keys sorted: stable bytes, readable diffs)."""
    return json.dumps(obj, indent=2, sort_keys=True).encode()


class Store(ABC):
    """An artifact store rooted at ``uri``."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key``; return the object's URI."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read the object at ``key``; raise MissingKeyError when absent."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> str:
        """Upload a local file to ``key``; return the object's URI."""

    @abstractmethod
    def get_file(self, key: str, path: str | os.PathLike) -> Path:
        """Download ``key`` to ``path`` (atomically); return the path."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` (a folder-like prefix), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at ``key`` if present."""

    @abstractmethod
    def digest(self, key: str) -> tuple[int, str]:
        """``(size, sha256)`` of the object at ``key``; MissingKeyError when absent."""

    @abstractmethod
    def check(self) -> None:
        """Fail early, with a clear message, when the store cannot be written to."""

    def move_prefix(self, src: str, dst: str) -> list[str]:
        """Move every object under ``src`` to ``dst`` (same relative keys); return the moved
        keys. The manifest goes first, so ``src`` never looks finished half-way."""
        keys = self.list(src)
        if not keys:
            return []
        first = sorted(keys, key=lambda k: not k.endswith("/manifest.json"))
        for key in first:
            self.put_bytes(join(dst, key[len(src.strip("/")) + 1:]), self.get_bytes(key))
        for key in first:
            self.delete(key)
        return first

    def url(self, key: str) -> str:
        """The URI of ``key`` in this store."""
        return f"{self.uri.rstrip('/')}/{_check_key(key)}"

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` when the store is local, else None."""
        return None

    def presign(self, key: str, expires_s: int | None = None) -> str | None:
        """An address a browser opens for ``key``: a ``file://`` URI for a local store, a
        presigned HTTPS (or the endpoint's HTTP) URL valid ``expires_s`` seconds (default
        :func:`link_expiry_seconds`) for S3; None when no such address can be made."""
        return None

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object at ``key`` and a version token for ``put_if``; None when absent."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, token: str | None) -> bool:
        """Write only if ``key`` is unchanged since ``token`` was read (None: only if absent).

        Returns False, writing nothing, when another writer got there first. This is the
        compare-and-swap that champion promotion relies on (S3 ``If-Match`` /
        ``If-None-Match``; locally an exclusive ``flock`` around check and rename).
        """

    def put_json(self, key: str, obj: Any) -> str:
        return self.put_bytes(key, json_bytes(obj))

    def put_index(self, key: str, obj: Any) -> str:
        """Write a JSON entry of an index that can be rebuilt (the step cache's entries):
        atomically, as every write, but without waiting for the disk where the store can
        choose (a local store skips the fsync: two per step were ~14 ms of each step's
        orchestration here). A crash may lose such an entry or, on a local disk, leave it
        empty; readers take a missing or unreadable one as absent (a cache miss)."""
        return self.put_json(key, obj)

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_text(self, key: str, text: str) -> str:
        return self.put_bytes(key, text.encode())

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    """A store in a local folder (``file://DIR``; relative DIR is relative to the cwd)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def presign(self, key: str, expires_s: int | None = None) -> str:
        """The object's ``file://`` URI (percent-encoded, so a browser or terminal opens it);
        local files do not expire."""
        return self._path(key).as_uri()

    def _atomic_write(self, dest: Path, write, durable: bool = True) -> None:
        tmp = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise disk_error(exc, dest) from None
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> str:
        self._atomic_write(self._path(key), lambda fh: fh.write(data))
        return self.url(key)

    def put_index(self, key: str, obj: Any) -> str:
        data = json_bytes(obj)
        self._atomic_write(self._path(key), lambda fh: fh.write(data), durable=False)
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        p = self._path(key)
        try:
            return p.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MissingKeyError(f"no object {key!r} in store {self.uri}") from None

    def put_file(self, key: str, path: str | os.PathLike) -> str:
        src = Path(path)
        if not src.is_file():
            raise StoreError(f"cannot upload {src}: not a file")

        def copy(fh):
            with open(src, "rb") as s:
                shutil.copyfileobj(s, fh, 1 << 20)

        self._atomic_write(self._path(key), copy)
        return self.url(key)

    def get_file(self, key: str, path: str | os.PathLike) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise MissingKeyError(f"no object {key!r} in store {self.uri}")
        dest = Path(path)

        def copy(fh):
            with open(src, "rb") as s:
                shutil.copyfileobj(s, fh, 1 << 20)

        self._atomic_write(dest, copy)
        return dest

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def digest(self, key: str) -> tuple[int, str]:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise MissingKeyError(f"no object {key!r} in store {self.uri}") from None
        memo = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = _DIGESTS.get(str(path))
        if cached is not None and cached[0] == memo:
            return st.st_size, cached[1]
        sha = sha256_file(path)
        _DIGESTS[str(path)] = (memo, sha)
        return st.st_size, sha

    def check(self) -> None:
        """The folder can be created and written, and has ``VF_MIN_FREE_MB`` (default 200)
        free: a probe file is written and removed."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, self.root) from None
        self.put_bytes(".visionflows-write-check", b"ok")
        self.delete(".visionflows-write-check")
        floor = setting("VF_MIN_FREE_MB")
        free = shutil.disk_usage(self.root).free / (1 << 20)
        if free < floor:
            raise StoreError(f"store {self.uri} has only {free:.0f} MB free, under the "
                             f"{floor:.0f} MB floor (VF_MIN_FREE_MB): free some space or pick "
                             "another folder with --store file://DIR")

    @staticmethod
    def _token(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get_bytes(key)
        except MissingKeyError:
            return None
        return data, self._token(data)

    def put_if(self, key: str, data: bytes, token: str | None) -> bool:
        import fcntl

        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest.parent / f".{dest.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.get_versioned(key)
            if (current is None) != (token is None) or (
                    current is not None and current[1] != token):
                return False
            self.put_bytes(key, data)
            return True

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        out = []
        for p in base.rglob("*"):
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith((".tmp",
                                                                                  ".lock"))):
                out.append(p.relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise disk_error(exc, self._path(key)) from None


# (size, mtime_ns, inode) -> sha256 of local files already hashed in this process
_DIGESTS: dict[str, tuple[tuple[int, int, int], str]] = {}


def disk_error(exc: OSError, path: Path) -> StoreError:
    """A local write failure as one line that names the path and the fix."""
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(exc.errno)
    if why is None:
        return StoreError(f"cannot write {path}: {exc.strerror or exc}")
    return StoreError(f"cannot write {path}: {why} ({errno.errorcode.get(exc.errno, '?')}); "
                      "free some space or pick a writable folder with --store file://DIR "
                      "(results written before this point are intact)")


class S3Store(Store):
    """A store in an S3 bucket (AWS, MinIO, moto): ``s3://bucket/prefix``.

    Endpoint from ``VF_S3_ENDPOINT_URL`` (MinIO: ``http://127.0.0.1:9000``), region from
    ``VF_S3_REGION`` or ``AWS_DEFAULT_REGION``; credentials through boto3's usual chain
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` ...).
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, max_attempts: int | None = None):
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url or raw("VF_S3_ENDPOINT_URL")
        region = region or raw("VF_S3_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION") or "us-east-1"
        attempts = max_attempts or setting("VF_S3_MAX_ATTEMPTS")
        self.retry_seconds = setting("VF_S3_RETRY_SECONDS")
        cfg = Config(
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=5, read_timeout=60,
            s3={"addressing_style": "path"},
        )
        self.region = region
        self._presigner = None
        self._client = _s3_client(self.endpoint_url, region, cfg)
        self._config, self._probe = cfg, None
        self._transfer = TransferConfig(multipart_threshold=16 << 20,
                                        multipart_chunksize=16 << 20, max_concurrency=8)

    def _key(self, key: str) -> str:
        return join(self.prefix, _check_key(key))

    def _wrap(self, exc: Exception, action: str, key: str = "",
              waited_s: float | None = None) -> StoreError:
        """Our error for ``exc``; ``waited_s`` is the time really spent on the operation
        (retries included), stated in the "unreachable" message."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f"{self.uri}/{key}" if key else self.uri
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return MissingKeyError(f"no object {key!r} in store {self.uri}")
            if code == "NoSuchBucket":
                return StoreError(
                    f"bucket {self.bucket!r} does not exist at "
                    f"{self.endpoint_url or 'AWS'}: create it (e.g. `mc mb`) or fix the store URI")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return StoreError(
                    f"access denied while trying to {action} {where}: check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY and the bucket policy")
            return StoreError(f"could not {action} {where}: S3 error {code or exc}")
        if isinstance(exc, NoCredentialsError):
            return StoreError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(exc, EndpointConnectionError) or self._transient(exc):
            return StoreError(
                f"could not {action} {where}: S3 endpoint {self.endpoint_url or 'AWS'} is "
                f"unreachable ({gave_up(waited_s)}, budget {self.retry_seconds:.0f}s "
                "(VF_S3_RETRY_SECONDS); is MinIO running? check VF_S3_ENDPOINT_URL)")
        if "NoSuchBucket" in str(exc):
            return StoreError(
                f"bucket {self.bucket!r} does not exist at "
                f"{self.endpoint_url or 'AWS'}: create it (e.g. `mc mb`) or fix the store URI")
        if any(s in str(exc) for s in ("InvalidAccessKeyId", "SignatureDoesNotMatch",
                                       "AccessDenied")):
            return StoreError(
                f"access denied while trying to {action} {where}: check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY and the bucket policy")
        return StoreError(f"could not {action} {where}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _transient(exc: Exception) -> bool:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ReadTimeoutError

        if isinstance(exc, BotoConnectionError | ReadTimeoutError):
            return True
        text = str(exc)
        return isinstance(exc, S3UploadFailedError) and any(
            s in text for s in ("Could not connect", "Connection was closed", "timed out",
                                "Connection reset"))

    def _call(self, action: str, key: str, fn, *args, **kwargs):
        """Run one S3 operation; ride out endpoint outages up to ``retry_seconds``.

        botocore retries each request a few times; on top of that a connection failure
        (endpoint down, restarting MinIO) is retried with backoff until the budget
        (``VF_S3_RETRY_SECONDS``, default 60 s) is spent. Every operation here is idempotent
        (whole-object puts and gets), so retrying cannot duplicate or corrupt data.
        """
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        started = time.monotonic()
        deadline = started + self.retry_seconds
        delay = 0.5
        while True:
            try:
                return fn(*args, **kwargs)
            except ClientError as exc:
                raise self._wrap(exc, action, key, time.monotonic() - started) from None
            except (BotoCoreError, S3UploadFailedError) as exc:
                if self._transient(exc) and time.monotonic() + delay < deadline:
                    get_logger("store").warning(
                        "S3 %s of %r failed (%s); retrying in %.1fs", action, key,
                        type(exc).__name__, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 8.0)
                    continue
                raise self._wrap(exc, action, key, time.monotonic() - started) from None

    def put_bytes(self, key: str, data: bytes) -> str:
        self._call("write", key, self._client.put_object, Bucket=self.bucket,
                   Key=self._key(key), Body=data,
                   Metadata={"sha256": hashlib.sha256(data).hexdigest()})
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        resp = self._call("read", key, self._client.get_object, Bucket=self.bucket,
                          Key=self._key(key))
        return resp["Body"].read()

    def put_file(self, key: str, path: str | os.PathLike) -> str:
        if not Path(path).is_file():
            raise StoreError(f"cannot upload {path}: not a file")
        self._call("upload", key, self._client.upload_file, str(path), self.bucket,
                   self._key(key), Config=self._transfer,
                   ExtraArgs={"Metadata": {"sha256": sha256_file(path)}})
        return self.url(key)

    def get_file(self, key: str, path: str | os.PathLike) -> Path:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self._call("download", key, self._client.download_file, self.bucket,
                       self._key(key), tmp, Config=self._transfer)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            resp = self._call("read", key, self._client.get_object, Bucket=self.bucket,
                              Key=self._key(key))
        except MissingKeyError:
            return None
        return resp["Body"].read(), resp["ETag"]

    def put_if(self, key: str, data: bytes, token: str | None) -> bool:
        """Conditional write through the same retry budget as every call. A retry after a
        lost connection may find its own first attempt already there: it then answers
        False, and the caller re-reads (every caller loops read-decide-write)."""
        from botocore.exceptions import ClientError

        cond = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}

        def attempt() -> bool:
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                        Metadata={"sha256": hashlib.sha256(data).hexdigest()},
                                        **cond)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                            "NoSuchKey"):
                    return False
                raise
            return True

        return self._call("write", key, attempt)

    def exists(self, key: str) -> bool:
        try:
            self._call("check", key, self._client.head_object, Bucket=self.bucket,
                       Key=self._key(key))
            return True
        except MissingKeyError:
            return False

    def digest(self, key: str) -> tuple[int, str]:
        """From the object's metadata (our uploads carry it); else read and hashed."""
        head = self._call("check", key, self._client.head_object, Bucket=self.bucket,
                          Key=self._key(key))
        sha = (head.get("Metadata") or {}).get("sha256")
        if sha:
            return int(head["ContentLength"]), sha
        data = self.get_bytes(key)
        return len(data), hashlib.sha256(data).hexdigest()

    def list(self, prefix: str = "") -> list[str]:
        full = join(self.prefix, prefix.strip("/"))
        if full:
            full += "/"

        def collect() -> list[str]:
            out: list[str] = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    k = obj["Key"]
                    out.append(k[len(self.prefix) + 1:] if self.prefix else k)
            return out

        return sorted(self._call("list", prefix, collect))

    def delete(self, key: str) -> None:
        self._call("delete", key, self._client.delete_object, Bucket=self.bucket,
                   Key=self._key(key))

    def check(self) -> None:
        """Fail early, with a clear message, when the bucket is missing or unreachable; an
        endpoint that is restarting is waited for within the retry budget."""
        from botocore.exceptions import ClientError

        if self._probe is None:
            # one attempt per call, so that the waiting is ours alone and stays within
            # retry_seconds (botocore's own back-off on a refused connection took 15-25 s
            # in one call)
            from botocore.config import Config

            self._probe = _s3_client(self.endpoint_url, self.region, self._config.merge(
                Config(retries={"total_max_attempts": 1, "mode": "standard"},
                       connect_timeout=min(5.0, max(1.0, self.retry_seconds)))))

        def head() -> None:
            try:
                self._probe.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("404", "NoSuchBucket", "NotFound"):
                    exc.response["Error"]["Code"] = "NoSuchBucket"
                raise

        self._call("reach", "", head)

    def presign(self, key: str, expires_s: int | None = None) -> str | None:
        """A presigned GET URL for ``key`` (SigV4, ``expires_s`` seconds, default
        :func:`link_expiry_seconds`); None without credentials to sign with. Signing is
        local: nothing is sent to the endpoint."""
        from botocore.exceptions import BotoCoreError

        expires = link_expiry_seconds(expires_s)
        try:
            if self._presigner is None:
                from botocore.config import Config

                # the client's own signer presigns with the legacy SigV2 for S3; SigV4 is
                # what MinIO and every AWS region accept (and allows up to 7 days)
                self._presigner = _s3_client(self.endpoint_url, self.region, Config(
                    signature_version="s3v4", s3={"addressing_style": "path"}))
            return self._presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires)
        except BotoCoreError:  # no credentials
            return None


def store_key(location: str, store: Store | None) -> str | None:
    """The key in ``store`` that ``location`` names (``store:KEY`` or the store's own URI
    form ``s3://bucket/prefix/KEY``), or None when it names no store object."""
    if location.startswith("store:"):
        return location[len("store:"):].strip("/")
    if store is not None and location.startswith(store.uri.rstrip("/") + "/"):
        return location[len(store.uri.rstrip("/")) + 1:].strip("/")
    return None


def open_store(uri: str | None = None) -> Store:
    """Open the store named by ``uri`` (``file://DIR``, a plain path, or ``s3://bucket/prefix``).

    With no URI, uses ``VF_STORE`` or the embedded default ``file://./artifacts``.
    """
    uri = uri or setting("VF_STORE")
    if isinstance(uri, Store):
        return uri
    if uri.startswith("s3://"):
        parsed = urllib.parse.urlparse(uri)
        bucket = parsed.netloc
        if not bucket:
            raise ConfigError(f"store URI {uri!r} has no bucket: use s3://BUCKET/PREFIX")
        return S3Store(bucket, urllib.parse.unquote(parsed.path))
    if uri.startswith("file://"):
        path = urllib.parse.unquote(uri[len("file://"):])
        if not path:
            raise ConfigError(f"store URI {uri!r} has no folder: use file://DIR")
        return LocalStore(path)
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(
            f"unsupported store scheme {scheme!r} in {uri!r}: use file://DIR or s3://BUCKET/PREFIX")
    return LocalStore(uri)
