"""Task runtime: the manifest and the output writer every task uses.

A task writes its outputs first and ``manifest.json`` last. A prefix without a manifest
is a task that did not finish, whatever files it holds.
"""

from __future__ import annotations

import contextvars
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.core.config import Config, config_hash
from tasks.core.errors import MissingKeyError, TaskNotRunError
from tasks.core.log import get_logger
from tasks.core.store import Store, join

MANIFEST = "manifest.json"

# Set by whoever runs a task (the Prefect layer) to hear about progress: fn(done, total).
PROGRESS: contextvars.ContextVar = contextvars.ContextVar("vf_progress", default=None)


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


_COMMIT: str | None = None


def git_commit() -> str:
    """The source commit: ``VF_GIT_COMMIT`` (set in images) or this checkout's ``HEAD``."""
    global _COMMIT
    if env := os.environ.get("VF_GIT_COMMIT"):
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


def provenance() -> dict[str, Any]:
    info: dict[str, Any] = {
        "git_commit": git_commit(),
        "image_tag": os.environ.get("VF_IMAGE_TAG", "none (in-process)"),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # torch-free tasks still get a manifest
        info["torch"] = None
    return info


class TaskRun:
    """Collects one task's outputs under ``prefix`` and writes the manifest last.

    Use as a context manager; a temporary work folder is available as ``workdir`` and is
    removed afterwards. ``finish()`` must be called for the run to count.
    """

    def __init__(self, task: str, cfg: Config, store: Store, prefix: str,
                 inputs: dict[str, str] | None = None):
        self.task, self.cfg, self.store, self.prefix = task, cfg, store, prefix.strip("/")
        self.inputs = dict(inputs or {})
        self.outputs: dict[str, str] = {}
        self.started = time.time()
        self.started_at = datetime.now(UTC).isoformat()
        self.workdir = Path(tempfile.mkdtemp(prefix="vf-task-"))
        self.log = get_logger(task)
        self._done: Manifest | None = None

    def __enter__(self) -> TaskRun:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def key(self, rel: str) -> str:
        return join(self.prefix, rel)

    def progress(self, done: int, total: int) -> None:
        """Report progress (e.g. epochs done) to the runner, if it listens."""
        callback = PROGRESS.get()
        if callback is not None:
            callback(done, total)

    def put_file(self, name: str, path: str | os.PathLike, rel: str | None = None) -> str:
        key = self.key(rel or Path(path).name)
        self.store.put_file(key, path)
        self.outputs[name] = key
        return key

    def put_bytes(self, name: str, data: bytes, rel: str) -> str:
        key = self.key(rel)
        self.store.put_bytes(key, data)
        self.outputs[name] = key
        return key

    def put_json(self, name: str, obj: Any, rel: str) -> str:
        key = self.key(rel)
        self.store.put_json(key, obj)
        self.outputs[name] = key
        return key

    def finish(self, metrics: dict[str, Any] | None = None, **extra: Any) -> Manifest:
        """Write ``manifest.json`` (last) and return it."""
        now = time.time()
        manifest = Manifest(
            task=self.task, prefix=self.prefix, store=self.store.uri,
            config=self.cfg.model_dump(mode="json"), config_hash=config_hash(self.cfg),
            inputs=self.inputs, outputs=self.outputs, metrics=metrics or {},
            started_at=self.started_at, finished_at=datetime.now(UTC).isoformat(),
            duration_s=round(now - self.started, 3), provenance=provenance(), **extra)
        self.store.put_json(manifest_key(self.prefix), manifest.model_dump(mode="json"))
        self._done = manifest
        return manifest
