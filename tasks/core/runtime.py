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
import sys
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


def ray_context() -> dict[str, Any] | None:
    """Where this process runs on Ray (node id, worker pid, the GPU ids Ray assigned), or
    None off Ray. A task's child process (the subprocess or docker launcher inside a Ray
    worker) reads what its worker passed on: ``VF_RAY_NODE_ID``, ``VF_RAY_WORKER_PID``."""
    ray = sys.modules.get("ray")  # never imported here: only a Ray worker has it loaded
    if ray is not None:
        try:
            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                if ctx.get_task_id() is not None:  # inside a Ray task, not a driver
                    return {"node_id": ctx.get_node_id(), "worker_pid": os.getpid(),
                            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
        except Exception:  # noqa: BLE001 - provenance never fails a task
            pass
    if node := os.environ.get("VF_RAY_NODE_ID"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return {"node_id": node, "worker_pid": int(os.environ.get("VF_RAY_WORKER_PID") or 0),
                "gpu_ids": [g for g in visible.split(",") if g]}
    return None


def provenance() -> dict[str, Any]:
    """Where and with what a task ran: code, image, host, process, threads, device, Ray."""
    info: dict[str, Any] = {
        "git_commit": git_commit(),
        "image_tag": os.environ.get("VF_IMAGE_TAG", "none (in-process)"),
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
