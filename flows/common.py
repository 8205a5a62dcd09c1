"""Prefect building blocks shared by every flow: run a task via the launcher, with explainable
caching and live progress; artifacts; run ids; the flow manifest."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.launchers import launch
from tasks.core import cache
from tasks.core.errors import is_transient
from tasks.core.resources import Resources
from tasks.core.runtime import PROGRESS, ray_context
from tasks.core.store import Store, join, open_store
from tasks.registry import task_module

# Steps cached across runs by tasks.core.cache (config + imported source + inputs + versions).
# Fetches are cached by dataset version instead (their output prefix is the version).
CACHED_TASKS = {"classifier.train", "classifier.evaluate", "transfer.train", "transfer.finetune",
                "yolo.train", "yolo.evaluate"}


def new_run_id() -> str:
    """Sortable and unique: UTC time plus 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def refresh_default() -> bool:
    return os.environ.get("VF_REFRESH", "").lower() in ("1", "true", "yes")


def run_step_fn(name: str, task_name: str, cfg: dict[str, Any], store: str,
                launcher: str = "local", slot: str | None = None,
                refresh: bool | None = None, progress: dict | None = None,
                env: dict[str, str] | None = None, resources: dict[str, Any] | None = None,
                upstream: dict[str, Any] | None = None) -> dict[str, Any]:
    """One task run in Prefect: launch ``task_name`` and return its manifest as a dict.

    With ``slot`` (a stable step name like ``q1-mlp/train-b64-relu-cross_entropy``) and a
    task in ``CACHED_TASKS``, a previous result with the same cache key is reused; a miss is
    logged with the parts that changed. ``refresh`` (or ``VF_REFRESH=1``) recomputes.
    ``progress`` (from ``Progress.slice``) maps the task's own progress onto the flow's
    progress artifact. ``env`` sets the task's thread counts (``OMP_NUM_THREADS``: a child
    process's environment; in-process, torch's thread count for the call). ``resources``
    (a row of the question's resource table) sets the subprocess and docker launchers'
    limits. ``upstream`` maps config keys to earlier steps' manifests (submitted futures,
    resolved by Prefect): each key gets that step's output prefix.
    """
    log = get_run_logger()
    st = open_store(store)
    if upstream:
        cfg = {**cfg, **{key: m["prefix"] for key, m in upstream.items()}}
    if (ray := ray_context()) is not None:  # a Ray worker: where it ran reaches the manifest
        log.info("%s on Ray node %s, worker pid %d", name, ray["node_id"], ray["worker_pid"])
        env = {**(env or {}), "VF_RAY_NODE_ID": ray["node_id"],
               "VF_RAY_WORKER_PID": str(ray["worker_pid"])}
    refresh = refresh_default() if refresh is None else refresh
    parts = None
    if slot and task_name in CACHED_TASKS:
        parts = cache.components(task_module(task_name), cfg, st)
        if refresh:
            log.info("cache skipped for %s (--refresh)", slot)
        else:
            hit, reasons = cache.lookup(st, task_name, slot, parts)
            if hit is not None:
                log.info("cache hit for %s: reusing %s (key %s)", slot, st.url(hit.prefix),
                         cache.cache_key(parts))
                return hit.model_dump(mode="json")
            log.info("cache miss for %s: %s", slot, "; ".join(reasons))
    token = None
    if progress:
        def report(done: int, total: int) -> None:
            pct = progress["start"] + progress["width"] * done / max(total, 1)
            update_progress_artifact(progress["id"], min(100.0, pct))

        token = PROGRESS.set(report)
    try:
        manifest = launch(task_name, cfg, store, launcher, env=env,
                          resources=Resources.model_validate(resources) if resources else None)
    finally:
        if token is not None:
            PROGRESS.reset(token)
    if parts is not None:
        cache.record(st, task_name, slot, parts, manifest.prefix)
    log.info("%s done in %.1fs -> %s", name, manifest.duration_s,
             f"{manifest.store}/{manifest.prefix}")
    return manifest.model_dump(mode="json")


# The Prefect task around it. The plain function stays importable by its own name, so a Ray
# worker unpickles it by reference (from the code the run ships) instead of by value.
run_step = task(name="run-task", task_run_name="{name}", cache_policy=NO_CACHE,
                retries=0)(run_step_fn)


def worth_retrying(_task, _task_run, state) -> bool:
    """The one retry rule of every flow (Prefect's ``retry_condition_fn``): retry what may
    pass (store or network trouble, a crash), never a bad input or config. The error is the
    same class with the same ``transient`` under every launcher (tasks.core.errors)."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - the failed task's own error, judged below
        return is_transient(exc)
    return False


def io_step(name: str, retries: int = 2, delay_s: float | None = None):
    """``run_step`` with retries under the one retry rule, for fetches, weights and other
    I/O-bound steps (``VF_RETRY_DELAY_S``, default 5 s, between attempts)."""
    delay = float(os.environ.get("VF_RETRY_DELAY_S", "5")) if delay_s is None else delay_s
    return run_step.with_options(retries=retries, retry_delay_seconds=delay,
                                 task_run_name=name, retry_condition_fn=worth_retrying)


class Progress:
    """A Prefect progress artifact: the flow's work in weighted units (e.g. epochs)."""

    def __init__(self, total: float, description: str):
        self.total, self.done, self.reserved = max(float(total), 1.0), 0.0, 0.0
        self.id = create_progress_artifact(0.0, description=description)

    def slice(self, weight: float) -> dict:
        """The share of the bar a step of ``weight`` units fills, for ``run_step``: the next
        one after those handed out (steps submitted ahead of their results)."""
        start = max(self.reserved, self.done)
        self.reserved = start + weight
        return {"id": str(self.id), "start": 100.0 * start / self.total,
                "width": 100.0 * weight / self.total}

    def advance(self, weight: float = 1.0) -> None:
        self.done = min(self.total, self.done + weight)
        update_progress_artifact(self.id, 100.0 * self.done / self.total)


def publish(flow: str, run_id: str, rows: list[dict], report_keys: dict[str, str],
            store: Store, summary_md: str = "") -> None:
    """Table artifact of the metrics and a markdown artifact pointing at the report."""
    key = flow.replace("_", "-")
    create_table_artifact(table=rows, key=f"{key}-metrics",
                          description=f"{flow} run {run_id}: metrics per experiment")
    html = store.url(report_keys["report.html"])
    md = store.url(report_keys["report.md"])
    local = store.local_path(report_keys["report.html"])
    text = f"# {flow} report\n\nRun `{run_id}`.\n\n- HTML: `{html}`\n- Markdown: `{md}`\n"
    if local is not None:
        text += f"- Open locally: file://{local}\n"
    create_markdown_artifact(markdown=text + "\n" + summary_md, key=f"{key}-report",
                             description=f"{flow} report for run {run_id}")


def write_flow_manifest(store: Store, flow: str, run_id: str, payload: dict[str, Any]) -> str:
    """The flow's own manifest (written last) and the ``latest.json`` pointer."""
    key = join("runs", flow, run_id, "manifest.json")
    finished = datetime.now(UTC)
    try:
        started = datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        duration = (finished - started).total_seconds()
    except ValueError:  # a run id given by the user
        duration = None
    store.put_json(key, {"flow": flow, "run_id": run_id, "finished_at": finished.isoformat(),
                         "duration_s": duration, **payload})
    store.put_json(join("runs", flow, "latest.json"), {"run_id": run_id, "manifest": key})
    return key


def champion_question(flow: str, profile: str) -> str:
    """Champions are kept per profile: ``q1-mlp`` for full runs, ``q1-mlp-smoke`` for smoke."""
    return flow if profile == "full" else f"{flow}-{profile}"
