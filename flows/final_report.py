"""Flow ``report``: the final comparison report across every question."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.common import links_markdown, new_run_id, remember_flow_run, report_links, run_step
from tasks.core.layout import final_report_prefix
from tasks.core.resources import ResourceTable
from tasks.core.store import link_expiry_seconds, open_store
from tasks.questions import question_flows

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
        "out": final_report_prefix(run_id), "questions": questions or list(question_flows()),
        "run_ids": run_ids or {}, "failures": failures or {},
        "link_expiry_s": link_expiry_seconds()}, st.uri,
        resources=ResourceTable().report.model_dump(mode="json"))  # its time limit
    keys = result["outputs"]
    local = copy_local(st, keys) if local_copy else None
    links = report_links(st, keys)
    create_markdown_artifact(
        markdown=("# Final comparison report\n\n" + links_markdown(st, keys, links)
                  + (f"- [Local copy]({local.as_uri()})\n" if local else "")
                  + "\n| question | status |\n|---|---|\n"
                  + "".join(f"| {q} | {s} |\n" for q, s in result["metrics"]["questions"].items())),
        key="final-report", description=f"final report {run_id}")
    if links["html"]:
        create_link_artifact(link=links["html"], link_text="final report (HTML)",
                             key="final-report-link")
    get_run_logger().info("final report: %s", local or st.url(keys["report.html"]))
    return {"run_id": run_id, "report": keys, "local": str(local) if local else None,
            "link": links["html"], "link_until": links["until"],
            "questions": result["metrics"]["questions"],
            "experiments": result["metrics"]["experiments"]}
