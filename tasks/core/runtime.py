"""Task runtime: the manifest and the output writer every task uses.

A task writes its outputs first and ``manifest.json`` last. A prefix without a manifest
is a task that did not finish, whatever files it holds. The manifest records the sha256
and size of every output (``digests``) and a fingerprint of every upstream manifest it
read (``upstream``), so that a reader can tell a result that is whole from one that was
damaged or computed from other inputs:

- :func:`reuse` is how a task decides whether the result already at its prefix is its
  own: same config (else ``PrefixConflictError``, before anything is computed), same
  inputs (else it is recomputed), outputs intact (else ``IntegrityError`` naming the
  object and the fix);
- :func:`verify` / :func:`find_verified` / :func:`read_verified` check outputs before a
  cache hit, a report, a promotion or the final report uses them.

``STOP`` is set when the run is being interrupted (Ctrl-C, SIGTERM): long loops call
:func:`check_stop` between batches and stop with ``StopRequested``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.core import identity as step_identity
from tasks.core import progress
from tasks.core.config import Config, config_hash
from tasks.core.errors import (
    ConfigError,
    DataError,
    MissingKeyError,
    StoreError,
    TaskNotRunError,
)
from tasks.core.files import sha256_file, work_dir
from tasks.core.log import get_logger
from tasks.core.settings import raw, setting
from tasks.core.store import Store, join

MANIFEST = "manifest.json"
# Written first at a step's own prefix: the identity its partial results (checkpoints) were
# computed under. Partial results of another identity are set aside, never continued.
MARKER = "identity.json"

# Set when the run is being stopped (Ctrl-C, SIGTERM); see check_stop().
STOP = threading.Event()
# Config fields that name an upstream task's prefix: its manifest is an input.
UPSTREAM_FIELDS = ("data", "train", "ingest", "segment", "model")


class StopRequested(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """The run is being stopped (Ctrl-C, SIGTERM): not an error of the task, never retried."""


def check_stop() -> None:
    """Raise ``StopRequested`` when the run is being stopped (call it between batches)."""
    if STOP.is_set():
        raise StopRequested("stop requested")


class IntegrityError(DataError):
    """A stored result does not match what its manifest recorded (damaged or replaced)."""


class PrefixConflictError(ConfigError):
    """A prefix already holds a result computed with another config (a reused run id)."""


class Manifest(BaseModel):
    """What a finished task produced: resolved config, inputs, outputs, metrics, provenance."""

    model_config = ConfigDict(extra="allow")

    task: str
    prefix: str
    store: str
    config: dict[str, Any]
    config_hash: str
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    started_at: str
    finished_at: str
    duration_s: float
    provenance: dict[str, Any] = Field(default_factory=dict)
    digests: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="output name -> {sha256, size} (recorded at write)")
    upstream: dict[str, str] = Field(
        default_factory=dict, description="config field -> fingerprint of the manifest read")
    identity: dict[str, Any] | None = Field(
        None, description="the step's identity when it ran: key, basis and parts "
                          "(tasks.core.identity); None: written by an older visionflows")

    @property
    def fingerprint(self) -> str:
        """Identifies this result: its config and the bytes of its outputs."""
        return step_identity.fingerprint(self.model_dump(mode="json"))

    def output_key(self, name: str) -> str:
        try:
            return self.outputs[name]
        except KeyError:
            raise MissingKeyError(
                f"task {self.task} at {self.prefix} has no output {name!r}; "
                f"it has: {', '.join(sorted(self.outputs)) or 'none'}") from None


def manifest_key(prefix: str) -> str:
    return join(prefix, MANIFEST)


def read_manifest(store: Store, prefix: str) -> Manifest:
    """The manifest at ``prefix``; TaskNotRunError when the task did not finish there."""
    try:
        data = store.get_json(manifest_key(prefix))
    except MissingKeyError:
        raise TaskNotRunError(
            f"no manifest at {store.url(manifest_key(prefix))}: that task has not run "
            "(or crashed before finishing); run it first") from None
    return Manifest.model_validate(data)


def find_manifest(store: Store, prefix: str) -> Manifest | None:
    """The manifest at ``prefix`` or None."""
    try:
        return read_manifest(store, prefix)
    except TaskNotRunError:
        return None


def verify(store: Store, manifest: Manifest) -> list[str]:
    """What is wrong with the stored outputs of ``manifest`` (empty when all are intact).

    Each output with a recorded digest must exist with that size and sha256 (S3 answers from
    the object's metadata, a local store hashes the file once per change). Manifests written
    before digests were recorded cannot be checked and pass.
    """
    problems = []
    for name, want in manifest.digests.items():
        key = manifest.outputs.get(name)
        if key is None:
            continue
        try:
            size, sha = store.digest(key)
        except MissingKeyError:
            problems.append(f"{store.url(key)} is missing")
            continue
        if size != want.get("size") or sha != want.get("sha256"):
            problems.append(f"{store.url(key)} has sha256 {sha[:12]}... and {size} bytes, but "
                            f"its manifest recorded {str(want.get('sha256'))[:12]}... and "
                            f"{want.get('size')} bytes")
    return problems


def require_intact(store: Store, manifest: Manifest, fix: str | None = None) -> Manifest:
    """``manifest``, or ``IntegrityError`` naming each damaged object and the fix."""
    problems = verify(store, manifest)
    if problems:
        raise IntegrityError(
            f"the result of {manifest.task} at {store.url(manifest.prefix)} is damaged: "
            + "; ".join(problems) + ". " + (fix or "Recompute it: rerun with --refresh (the "
                                            "damaged copy is moved aside)"))
    return manifest


def find_verified(store: Store, prefix: str) -> Manifest | None:
    """The manifest at ``prefix`` with its outputs checked, or None when the task did not
    finish there; ``IntegrityError`` when its outputs are damaged."""
    m = find_manifest(store, prefix)
    return None if m is None else require_intact(store, m)


def read_verified(store: Store, prefix: str) -> Manifest:
    """As :func:`read_manifest`, with its outputs checked (``IntegrityError`` if damaged)."""
    return require_intact(store, read_manifest(store, prefix))


def shared_result(store: Store, prefix: str) -> tuple[Manifest | None, str | None]:
    """A shared prefix's (a dataset's) published result when it is intact; otherwise None
    and, when a damaged one is there, the version token to replace it with (``finish(
    replace=...)``): the fetch then repairs it."""
    got = store.get_versioned(manifest_key(prefix))
    if got is None:
        return None, None
    manifest = Manifest.model_validate(json.loads(got[0]))
    problems = verify(store, manifest)
    if not problems:
        return manifest, None
    get_logger("runtime").warning("%s is damaged (%s): fetching it again to repair it",
                                  store.url(prefix), "; ".join(problems))
    return None, got[1]


def upstream_of(cfg: Config, store: Store) -> dict[str, str]:
    """Fingerprints of the upstream manifests ``cfg`` names (its data, train, ... prefix)."""
    out = {}
    for field in UPSTREAM_FIELDS:
        value = getattr(cfg, field, None)
        if isinstance(value, str) and value and (m := find_manifest(store, value)) is not None:
            out[field] = m.fingerprint
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each top-level key that differs."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def set_aside(store: Store, prefix: str, why: str) -> str:
    """Move everything under ``prefix`` to ``trash/<UTC time>/<prefix>`` (kept, not
    deleted); return where it went."""
    dest = join("trash", datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"), prefix)
    moved = store.move_prefix(prefix, dest)
    if moved:
        get_logger("runtime").warning("%s: %s; moved its %d objects to %s", store.url(prefix),
                                      why, len(moved), store.url(dest))
    return dest


def set_aside_object(store: Store, key: str, why: str) -> str:
    """Move one object to ``trash/<UTC time>/<key>``; return where it went."""
    dest = join("trash", datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"), key)
    store.put_bytes(dest, store.get_bytes(key))
    store.delete(key)
    get_logger("runtime").warning("%s: %s; moved to %s", store.url(key), why, store.url(dest))
    return dest


def identity_of(task: str, cfg: Config, store: Store) -> step_identity.Identity:
    """The identity of this process running ``task`` with ``cfg`` (its code, environment,
    device, inputs and local files: :mod:`tasks.core.identity`)."""
    return step_identity.of_step(task, cfg.model_dump(mode="json"), store)


def identity_changes(recorded: dict[str, Any] | None, config: dict[str, Any],
                     now: step_identity.Identity) -> list[str]:
    """Why a result or checkpoint recorded under ``recorded`` may not be reused or continued
    by a step of identity ``now`` (configs aside: each task checks those its own way);
    empty when it may."""
    if not isinstance(recorded, dict) or "basis" not in recorded:
        return ["it records no identity (written by an older visionflows)"]
    if recorded["basis"] == now.basis:
        return []
    old = step_identity.Identity.from_record(recorded, config).parts
    new = {k: v for k, v in now.parts.items() if k != "config"}
    return [r for r in step_identity.explain({**old, "config": {}}, {**new, "config": {}})]


def reuse(store: Store, task: str, cfg: Config, prefix: str) -> Manifest | None:
    """The result already at ``prefix`` when it is this task's with this config, intact,
    computed under the same identity; None when there is none (or it was set aside).

    - another config at the prefix (a run id reused with new settings): ``PrefixConflictError``
      naming the keys that differ, before anything is computed;
    - the same config but another identity (the code, the environment, the device, an input
      or a local file changed; or a result written by an older visionflows): the old result
      is set aside with one line naming what changed, and None returned, so the task
      computes it afresh from scratch;
    - damaged outputs: ``IntegrityError`` naming them and the fix.
    """
    existing = find_manifest(store, prefix)
    if existing is None:
        return None
    if existing.task != task or existing.config_hash != config_hash(cfg):
        diff = config_diff(existing.config, cfg.model_dump(mode="json")) or [
            f"task {existing.task} -> {task}"]
        raise PrefixConflictError(
            f"{store.url(prefix)} already holds a {existing.task} result computed with "
            f"another config ({'; '.join(diff)}). Nothing was run. Use a new run id (omit "
            "--run-id), or rerun with --refresh to recompute it there (the old result is "
            "moved aside, not deleted)")
    changed = identity_changes(existing.identity, existing.config, identity_of(task, cfg, store))
    if changed:
        set_aside(store, prefix, "computed under another identity, recomputing from scratch: "
                  + "; ".join(changed))
        return None
    return require_intact(store, existing)


_COMMIT: str | None = None


def git_commit() -> str:
    """The source commit: ``VF_GIT_COMMIT`` (set in images) or this checkout's ``HEAD``."""
    global _COMMIT
    if env := raw("VF_GIT_COMMIT"):
        return env
    if _COMMIT is None:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                 capture_output=True, text=True, timeout=5, check=True)
            _COMMIT = out.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=Path(__file__).parent, capture_output=True, text=True,
                                   timeout=5)
            if dirty.stdout.strip():
                _COMMIT += "-dirty"
        except (OSError, subprocess.SubprocessError):
            _COMMIT = "unknown"
    return _COMMIT


def ray_context() -> dict[str, Any] | None:
    """Where this process runs on Ray (node id, worker pid, the GPU ids Ray assigned, the
    Ray job id of a ``visionflows submit``), or None off Ray. A task's child process (the
    subprocess or docker launcher inside a Ray worker) reads what its worker passed on:
    ``VF_RAY_NODE_ID``, ``VF_RAY_WORKER_PID``."""
    ray = sys.modules.get("ray")  # never imported here: only a Ray worker has it loaded
    if ray is not None:
        try:
            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                if ctx.get_task_id() is not None:  # inside a Ray task, not a driver
                    out = {"node_id": ctx.get_node_id(), "worker_pid": os.getpid(),
                           "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
                    if job := raw("VF_RAY_JOB_ID"):  # a visionflows submit
                        out["job_id"] = job
                    return out
        except Exception:  # noqa: BLE001 - provenance never fails a task
            pass
    if node := raw("VF_RAY_NODE_ID"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        out = {"node_id": node, "worker_pid": setting("VF_RAY_WORKER_PID"),
               "gpu_ids": [g for g in visible.split(",") if g]}
        if job := raw("VF_RAY_JOB_ID"):
            out["job_id"] = job
        return out
    return None


def provenance() -> dict[str, Any]:
    """Where and with what a task ran: code, image, host, process, threads, device, Ray."""
    info: dict[str, Any] = {
        "git_commit": git_commit(),
        "image_tag": setting("VF_IMAGE_TAG"),
        "hostname": platform.node(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ray": ray_context(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        cuda = torch.cuda.is_available()
        info["cuda"] = torch.cuda.get_device_name(0) if cuda else None
        info["device"] = (f"cuda ({info['cuda']}, {torch.cuda.device_count()} visible)"
                          if cuda else "cpu")
    except ImportError:  # torch-free tasks still get a manifest
        info["torch"] = None
    if visible := os.environ.get("CUDA_VISIBLE_DEVICES"):
        info["cuda_visible_devices"] = visible
    return info


class TaskRun:
    """Collects one task's outputs under ``prefix`` and writes the manifest last.

    Use as a context manager; a temporary work folder is available as ``workdir`` and is
    removed afterwards. ``finish()`` must be called for the run to count.
    """

    def __init__(self, task: str, cfg: Config, store: Store, prefix: str,
                 inputs: dict[str, str] | None = None, shared: bool = False):
        self.task, self.cfg, self.store, self.prefix = task, cfg, store, prefix.strip("/")
        self.inputs = dict(inputs or {})
        self.outputs: dict[str, str] = {}
        self.digests: dict[str, dict[str, Any]] = {}
        self.upstream = upstream_of(cfg, store)
        self.identity = identity_of(task, cfg, store)
        self.started = time.time()
        self.started_at = datetime.now(UTC).isoformat()
        self.workdir = work_dir("vf-task-")
        self.log = get_logger(task)
        self.shared = shared
        self._ticker: progress.Ticker | None = None
        # a shared prefix (a dataset several runs may fetch at once) gets its outputs under a
        # folder of this attempt, published by a conditional write of the manifest
        self.out_prefix = (join(self.prefix, f"v-{os.urandom(4).hex()}") if shared
                           else self.prefix)
        self._done: Manifest | None = None
        self._claimed = shared  # a shared prefix is published whole, by compare-and-swap
        if not shared:
            self._set_aside_others()

    def _set_aside_others(self) -> None:
        """Set aside what another identity left at this prefix (a checkpoint of other code,
        or anything written without a marker by an older visionflows), so that what is
        continued here was computed under this identity."""
        marker = join(self.prefix, MARKER)
        if self.store.exists(marker):
            changed = identity_changes(self.store.get_json(marker), self.cfg.model_dump(
                mode="json"), self.identity)
            if not changed:
                self._claimed = True  # its marker is this identity's already
                return
        else:
            leftovers = [k for k in self.store.list(self.prefix)
                         if k != manifest_key(self.prefix)]
            if not leftovers and not self.store.exists(manifest_key(self.prefix)):
                changed = []
            else:
                changed = ["its partial results record no identity (an older visionflows)"]
        if changed:
            set_aside(self.store, self.prefix, "left by another identity, starting from "
                      "scratch: " + "; ".join(changed))

    def claim(self) -> None:
        """Write this step's identity marker at its prefix, once, before its first output:
        ``put_*`` call it; a task that writes at its prefix any other way (the YOLO worker,
        a counter written with the store directly) calls it first. A task that fails before
        writing anything leaves nothing behind."""
        if not self._claimed:
            self.store.put_json(join(self.prefix, MARKER), self.identity.record())
            self._claimed = True

    def __enter__(self) -> TaskRun:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.shared and self._done is None:  # failed before publishing: nothing stays
            try:
                for key in self.store.list(self.out_prefix):
                    self.store.delete(key)
            except StoreError as exc:  # the task's own error is the one to report
                self.log.warning("could not remove the unpublished %s: %s",
                                 self.store.url(self.out_prefix), exc)

    def key(self, rel: str) -> str:
        return join(self.out_prefix, rel)

    def progress(self, done: int, total: int, unit: str = "epoch",
                 info: dict[str, Any] | None = None) -> None:
        """Report this task's progress (epochs or images done, with e.g. the current loss):
        the flow's progress artifact and the terminal's bars (tasks.core.progress)."""
        if self._ticker is None or self._ticker.unit != unit:
            self._ticker = progress.Ticker(self.prefix, self.label, total, unit,
                                           interval_s=0.0)
        self._ticker.total = total
        self._ticker.tick(done, info)

    @property
    def label(self) -> str:
        """A short name for people: the task and the last part of its prefix."""
        return f"{self.prefix.rsplit('/', 1)[-1]}"

    def batches(self, epoch: int):
        """``with run.batches(epoch):`` a bar of the epoch's batches (the loop ticks it)."""
        return progress.batches(f"{self.prefix}#batches", f"  epoch {epoch} batches")

    def put_file(self, name: str, path: str | os.PathLike, rel: str | None = None) -> str:
        self.claim()
        key = self.key(rel or Path(path).name)
        self.store.put_file(key, path)
        self.record(name, key, os.path.getsize(path), sha256_file(path))
        return key

    def put_bytes(self, name: str, data: bytes, rel: str) -> str:
        self.claim()
        key = self.key(rel)
        self.store.put_bytes(key, data)
        self.record(name, key, len(data), hashlib.sha256(data).hexdigest())
        return key

    def put_json(self, name: str, obj: Any, rel: str) -> str:
        return self.put_bytes(name, json.dumps(obj, indent=2, sort_keys=True).encode(), rel)

    def record(self, name: str, key: str, size: int | None = None,
               sha256: str | None = None) -> None:
        """Count ``key`` as output ``name``; without a size and sha256 (an object written by
        another process), they are read from the store when the manifest is written."""
        self.outputs[name] = key
        if size is not None and sha256 is not None:
            self.digests[name] = {"sha256": sha256, "size": size}
        else:
            self.digests.pop(name, None)

    def finish(self, metrics: dict[str, Any] | None = None, *,
               replace: str | None = None, **extra: Any) -> Manifest:
        """Write ``manifest.json`` (last) and return it.

        On a ``shared`` prefix the manifest is published by a compare-and-swap: only when the
        prefix has none (or, with ``replace``, still has the one with that version token);
        when another writer got there first, its manifest is returned (this attempt's
        outputs are removed) — both runs then use the same, verified copy.
        """
        for name, key in self.outputs.items():
            if name not in self.digests:
                size, sha = self.store.digest(key)
                self.digests[name] = {"sha256": sha, "size": size}
        now = time.time()
        manifest = Manifest(
            task=self.task, prefix=self.prefix, store=self.store.uri,
            config=self.cfg.model_dump(mode="json"), config_hash=config_hash(self.cfg),
            inputs=self.inputs, outputs=self.outputs, metrics=metrics or {},
            started_at=self.started_at, finished_at=datetime.now(UTC).isoformat(),
            duration_s=round(now - self.started, 3), provenance=provenance(),
            digests=self.digests, upstream=self.upstream, identity=self.identity.record(),
            **extra)
        body = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True).encode()
        if not self.shared:
            self.store.put_bytes(manifest_key(self.prefix), body)
        elif not self.store.put_if(manifest_key(self.prefix), body, replace):
            winner = read_manifest(self.store, self.prefix)
            self.log.info("%s was published by another run at the same time: using its copy "
                          "(%s)", self.store.url(self.prefix), winner.finished_at)
            for key in self.store.list(self.out_prefix):
                self.store.delete(key)
            manifest = require_intact(self.store, winner)
        self._done = manifest
        return manifest
