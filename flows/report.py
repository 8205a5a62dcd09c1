"""Flow ``report``: the final comparison report across every question."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.common import new_run_id, remember_flow_run, run_step
from tasks.core.store import join, open_store
from tasks.reporting.final import QUESTIONS

FLOW = "report"


def copy_local(store, keys: dict[str, str], out_dir: str | Path = "reports/out") -> Path:
    """Copy report.html / report.md to ``reports/out/`` (a local, git-ignored folder)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("report.html", "report.md"):
        dest = out / name
        local = store.local_path(keys[name])
        if local is not None:
            shutil.copyfile(local, dest)
        else:
            store.get_file(keys[name], dest)
    return (out / "report.html").resolve()


@flow(name=FLOW, log_prints=True)
def report(store: str | None = None, questions: list[str] | None = None,
           run_ids: dict[str, str] | None = None, failures: dict[str, str] | None = None,
           local_copy: bool = True) -> dict[str, Any]:
    """Assemble the comparison report from the latest (or given) run of every question."""
    remember_flow_run()
    st = open_store(store)
    run_id = new_run_id()
    result = run_step("final-report", "report.final", {
        "out": join("reports", "final", run_id), "questions": questions or QUESTIONS,
        "run_ids": run_ids or {}, "failures": failures or {}}, st.uri)
    keys = result["outputs"]
    local = copy_local(st, keys) if local_copy else None
    create_markdown_artifact(
        markdown=(f"# Final comparison report\n\n- HTML: `{st.url(keys['report.html'])}`\n"
                  f"- Markdown: `{st.url(keys['report.md'])}`\n"
                  + (f"- Local copy: file://{local}\n" if local else "")
                  + "\n| question | status |\n|---|---|\n"
                  + "".join(f"| {q} | {s} |\n" for q, s in result["metrics"]["questions"].items())),
        key="final-report", description=f"final report {run_id}")
    url = st.url(keys["report.html"])
    if url.startswith(("http://", "https://", "file://")):
        create_link_artifact(link=url, link_text="final report (HTML)", key="final-report-link")
    get_run_logger().info("final report: %s", local or url)
    return {"run_id": run_id, "report": keys, "local": str(local) if local else None,
            "questions": result["metrics"]["questions"],
            "experiments": result["metrics"]["experiments"]}
