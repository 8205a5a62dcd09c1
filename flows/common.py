"""Prefect building blocks shared by every flow: run a task via the launcher, with explainable
caching and live progress; artifacts; run ids; the flow manifest."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.launchers import launch
from flows.registry import new_run_id  # noqa: F401 (the flows' run ids)
from flows.session import BARS, FLOW_RUNS, reclaim_sigterm
from tasks.core import cache, promote
from tasks.core import progress as vf_progress
from tasks.core.config import validate
from tasks.core.errors import is_transient
from tasks.core.layout import flow_manifest_key, latest_key
from tasks.core.log import get_logger
from tasks.core.resources import Resources
from tasks.core.runtime import STOP, find_manifest, ray_context, require_intact, set_aside
from tasks.core.settings import setting
from tasks.core.store import Store, open_store
from tasks.questions import cached_tasks
from tasks.registry import resolve

# Steps cached across runs by tasks.core.cache (their identity: tasks.core.identity) are
# each question's ``cached_tasks``. Fetches are cached by dataset version instead (their
# output prefix is the version).


def refresh_default() -> bool:
    return setting("VF_REFRESH")


def run_step_fn(name: str, task_name: str, cfg: dict[str, Any], store: str,
                launcher: str = "local", slot: str | None = None,
                refresh: bool | None = None, progress: dict | None = None,
                env: dict[str, str] | None = None, resources: dict[str, Any] | None = None,
                upstream: dict[str, Any] | None = None) -> dict[str, Any]:
    """One task run in Prefect: launch ``task_name`` and return its manifest as a dict.

    With ``slot`` (a stable step name like ``<flow>/train-b64-relu-cross_entropy``) and a
    task in its question's ``cached_tasks``, a previous result with the same cache key is
    reused once its outputs are checked against their recorded sha256; a miss is logged
    with the parts that changed. ``refresh`` (or ``VF_REFRESH=1``) recomputes: a result
    already at the step's own prefix is moved aside first. Without it, a prefix holding
    another config's result (a reused run id) is refused by the task before anything runs.
    ``progress`` (from ``Progress.slice``) maps the task's own progress onto the flow's
    progress artifact.
    ``env`` sets the task's thread counts (``OMP_NUM_THREADS``: a child process's
    environment; in-process, torch's thread count for the call). ``resources`` (a row of the
    question's resource table) sets the subprocess and docker launchers' limits.
    ``upstream`` maps config keys to earlier steps' manifests (submitted futures, resolved by
    Prefect): each key gets that step's output prefix.
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
    if slot and task_name in cached_tasks():
        _, cfg_cls = resolve(task_name)
        full = validate(cfg_cls, cfg, what=f"task {task_name!r}").model_dump(mode="json")
        image = None
        if launcher == "docker":  # the image stands for the code and environment it holds
            from flows.launchers.container import image_id

            image = image_id(task_name)
        parts = cache.components(task_name, full, st, image_id=image)
        if refresh:
            log.info("cache skipped for %s (--refresh)", slot)
            if find_manifest(st, cfg["out"]) is not None:
                set_aside(st, cfg["out"], "recomputed (--refresh)")
        else:
            hit, reasons = cache.lookup(st, task_name, slot, parts)
            if hit is not None:
                require_intact(st, hit, f"The cache entry for {slot} points at it: rerun with "
                                        "--refresh to compute the step afresh")
                log.info("cache hit for %s: reusing %s (key %s)", slot, st.url(hit.prefix),
                         cache.cache_key(parts))
                return hit.model_dump(mode="json")
            log.info("cache miss for %s: %s", slot, "; ".join(reasons))
    token = vf_progress.SINK.set(step_sink(progress))
    try:
        manifest = launch(task_name, cfg, store, launcher, env=env,
                          resources=Resources.model_validate(resources) if resources else None)
    finally:
        vf_progress.SINK.reset(token)
    if parts is not None:
        cache.record(st, task_name, slot, parts, manifest)
    log.info("%s done in %.1fs -> %s", name, manifest.duration_s,
             f"{manifest.store}/{manifest.prefix}")
    return manifest.model_dump(mode="json")


# When each progress artifact was last updated (artifact id -> monotonic seconds). Each
# update is an API call, made in the step's thread while it trains: a step's own updates and
# the flow's advances share one throttle, so a flow of many short steps makes a few calls,
# not one or two per step (the flow's end always moves the bar to where it is).
_LAST_UPDATE: dict[str, float] = {}
PROGRESS_EVERY_S = 2.0


def move_progress(ident: str, pct: float, force: bool = False) -> None:
    """Move progress artifact ``ident`` to ``pct`` unless it moved less than
    ``PROGRESS_EVERY_S`` ago (``force``: move it now)."""
    now = time.monotonic()
    if force or now - _LAST_UPDATE.get(ident, float("-inf")) >= PROGRESS_EVERY_S:
        update_progress_artifact(ident, min(100.0, pct))
        _LAST_UPDATE[ident] = now


def step_sink(artifact: dict | None):
    """Where a step's progress updates go: the terminal's bars, and its task-level updates
    (epochs, images) onto the flow's Prefect progress artifact as they happen (throttled
    with the flow's own updates; the flow moves the bar past the step when it ends)."""

    def sink(update: dict) -> None:
        if BARS:
            BARS[0].update(update)
        if artifact and update.get("unit") != "batch" and update.get("unit") != "B" \
                and update.get("total"):
            move_progress(artifact["id"], artifact["start"]
                          + artifact["width"] * update["done"] / update["total"])

    return sink


def remember_flow_run() -> None:
    """Note this flow run's id, so that a stopped command marks it Cancelled
    (:mod:`flows.session`). Call it first thing in every flow."""
    from prefect.runtime import flow_run

    if flow_run.id:
        FLOW_RUNS.append(str(flow_run.id))
    reclaim_sigterm()  # a SIGTERM stops the run like Ctrl-C, not after the running tasks


# The Prefect task around it. The plain function stays importable by its own name, so a Ray
# worker unpickles it by reference (from the code the run ships) instead of by value.
run_step = task(name="run-task", task_run_name="{name}", cache_policy=NO_CACHE,
                retries=0)(run_step_fn)


def worth_retrying(_task, _task_run, state) -> bool:
    """The one retry rule of every flow (Prefect's ``retry_condition_fn``): retry what may
    pass (store or network trouble, a crash), never a bad input or config. The error is the
    same class with the same ``transient`` under every launcher (tasks.core.errors)."""
    if STOP.is_set():  # the run is being stopped: nothing is retried
        return False
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - the failed task's own error, judged below
        return is_transient(exc)
    return False


def retrying_step(name: str, retries: int, delay_s: float | None = None):
    """``run_step`` named ``name`` (Ray shows it as ``ray::<name>``) with ``retries`` under
    the one retry rule, :func:`worth_retrying` (``VF_RETRY_DELAY_S``, default 5 s, between
    attempts). :class:`flows.fanout.Steps` gets every step from here."""
    delay = setting("VF_RETRY_DELAY_S") if delay_s is None else delay_s
    return _step_task(name, retries, float(delay))


@functools.lru_cache(maxsize=1024)
def _step_task(name: str, retries: int, delay: float):
    """One Prefect task object per (name, retries, delay), made once (``with_options``
    builds a new Task, ~2 ms, and a flow asks for its steps' again on every rerun)."""
    return run_step.with_options(name=name, task_run_name=name, retries=retries,
                                 retry_delay_seconds=delay, retry_condition_fn=worth_retrying)


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
        """Count ``weight`` units done; the artifact moves at most every 2 s (a step's own
        updates included), and always at the end."""
        self.done = min(self.total, self.done + weight)
        move_progress(str(self.id), 100.0 * self.done / self.total,
                      force=self.done >= self.total)


def report_links(store: Store, keys: dict[str, str]) -> dict[str, Any]:
    """Addresses a browser opens for a report's HTML and Markdown: ``file://`` URIs for a
    local store, presigned URLs for S3 (valid ``VF_LINK_EXPIRY``, default 7 days; a bad
    value is logged and the links are left out rather than failing a finished run)."""
    from tasks.core.errors import ConfigError
    from tasks.core.store import link_expiry_seconds

    out: dict[str, Any] = {"html": None, "md": None, "expires_s": None, "until": None}
    try:
        expires = link_expiry_seconds()
    except ConfigError as exc:
        get_logger("flows").warning("no report links: %s", exc)
        return out
    out["html"] = store.presign(keys["report.html"], expires)
    out["md"] = store.presign(keys["report.md"], expires) if "report.md" in keys else None
    if out["html"] and not out["html"].startswith("file://"):
        out["expires_s"] = expires
        out["until"] = (datetime.now(UTC) + timedelta(seconds=expires)).strftime(
            "%Y-%m-%d %H:%M UTC")
    return out


def links_markdown(store: Store, keys: dict[str, str], links: dict[str, Any]) -> str:
    """Markdown lines with real links to a report, and its URIs in the store."""
    lines = []
    if links["html"]:
        valid = f" (link valid until {links['until']})" if links["until"] else ""
        lines.append(f"- **[Open the HTML report]({links['html']})**{valid}")
    if links["md"]:
        lines.append(f"- [Markdown version]({links['md']})")
    lines.append(f"- In the store: `{store.url(keys['report.html'])}`")
    return "\n".join(lines) + "\n"


def publish(flow: str, run_id: str, rows: list[dict], report_keys: dict[str, str],
            store: Store, summary_md: str = "") -> None:
    """Table artifact of the metrics, a markdown artifact with links to the report, and a
    link artifact (presigned for S3, valid ``VF_LINK_EXPIRY``)."""
    key = flow.replace("_", "-")
    create_table_artifact(table=rows, key=f"{key}-metrics",
                          description=f"{flow} run {run_id}: metrics per experiment")
    links = report_links(store, report_keys)
    text = f"# {flow} report\n\nRun `{run_id}`.\n\n" + links_markdown(store, report_keys,
                                                                          links)
    create_markdown_artifact(markdown=text + "\n" + summary_md, key=f"{key}-report",
                             description=f"{flow} report for run {run_id}")
    if links["html"]:
        create_link_artifact(link=links["html"], link_text=f"{flow} report (HTML)",
                             key=f"{key}-report-link",
                             description=f"{flow} report for run {run_id}")


def write_flow_manifest(store: Store, flow: str, run_id: str, payload: dict[str, Any]) -> str:
    """The flow's own manifest (written last) and the ``latest.json`` pointer."""
    key = flow_manifest_key(flow, run_id)
    finished = datetime.now(UTC)
    try:
        started = datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        duration = (finished - started).total_seconds()
    except ValueError:  # a run id given by the user
        duration = None
    store.put_json(key, {"flow": flow, "run_id": run_id, "finished_at": finished.isoformat(),
                         "duration_s": duration, **payload})
    store.put_json(latest_key(flow), {"run_id": run_id, "manifest": key})
    return key


def champion_question(flow: str, profile: str) -> str:
    """Champions are kept per profile: ``<flow>`` for full runs, ``<flow>-smoke`` for smoke."""
    return promote.champion_question(flow, profile)
