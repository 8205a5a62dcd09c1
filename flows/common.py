"""Prefect building blocks shared by every flow: run a task via the launcher, artifacts, ids."""

from __future__ import annotations

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

from flows.launcher import launch
from tasks.runtime import Manifest
from tasks.store import Store, join, open_store


def new_run_id() -> str:
    """Sortable and unique: UTC time plus 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@task(name="run-task", task_run_name="{name}", cache_policy=NO_CACHE, retries=0)
def run_step(name: str, task_name: str, cfg: dict[str, Any], store: str,
             launcher: str = "local") -> dict[str, Any]:
    """One task run in Prefect: launch ``task_name`` and return its manifest as a dict."""
    manifest = launch(task_name, cfg, store, launcher)
    get_run_logger().info("%s done in %.1fs -> %s", name, manifest.duration_s,
                          f"{manifest.store}/{manifest.prefix}")
    return manifest.model_dump(mode="json")


def io_step(name: str):
    """``run_step`` with retries, for fetches and other I/O-bound steps."""
    return run_step.with_options(retries=2, retry_delay_seconds=5, task_run_name=name)


class Progress:
    """A Prefect progress artifact updated as steps finish."""

    def __init__(self, total: int, description: str):
        self.total, self.done = max(total, 1), 0
        self.id = create_progress_artifact(0.0, description=description)

    def step(self) -> None:
        self.done += 1
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
    store.put_json(key, {"flow": flow, "run_id": run_id, **payload})
    store.put_json(join("runs", flow, "latest.json"), {"run_id": run_id, "manifest": key})
    return key


def manifests_table(manifests: dict[str, Manifest]) -> list[dict]:
    return [{"step": name, "duration_s": m.duration_s, **{
        k: v for k, v in m.metrics.items() if isinstance(v, int | float)}}
            for name, m in manifests.items()]


__all__ = ["io_step", "new_run_id", "open_store", "publish", "run_step", "write_flow_manifest",
           "Progress"]
