"""Flow ``q3-segmentation``: ingest images -> DeepLabV3 per image -> report -> comparison
with the previous run of the same profile (Q3 keeps no champion; ``flows/compare.py``).

Every input gets a status. A rejected input (missing, not an image, truncated, too small,
unsupported format, failed download) never loses the others' results: their outputs, the
report (which lists the rejected inputs and why) and the flow manifest are all written
first. Then, when any input was rejected, the flow fails with ``InputsRejectedError``
(Prefect state Failed, CLI exit code 3) unless ``allow_rejected`` is true; a run where no
input could be segmented always fails.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.common import Progress, new_run_id, publish, remember_flow_run
from flows.compare import finish_run, plan_comparison
from flows.fanout import Steps
from tasks.core.store import join, open_store
from tasks.plans import resolve_config
from tasks.q3 import plan
from tasks.q3.images import InputsRejectedError
from tasks.q3.plan import Q3SegmentationConfig

FLOW = "q3-segmentation"


def _summary_line(e: dict[str, Any]) -> str:
    if e["status"] != "ok":
        return f"{e['name']}: REJECTED at {e['stage']}: {e['error']}"
    top = ", ".join(f"{r['name']} {100 * r['share']:.1f}%" for r in e.get("legend", [])[:3])
    return f"{e['name']}: ok {e['size'][0]}x{e['size'][1]} -> {top}"


@flow(name=FLOW, log_prints=True)
def q3_segmentation(profile: str = "smoke", store: str | None = None,
                    overrides: dict[str, Any] | None = None, launcher: str = "local",
                    run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q3: DeepLabV3 class map, overlay and legend for each input image, and a report.

    Nothing is cached across runs (each run segments its inputs afresh), so ``refresh``
    changes nothing; it is accepted like every flow's. ``--run-id`` reuses finished steps.
    """
    remember_flow_run()
    log = get_run_logger()
    cfg: Q3SegmentationConfig = resolve_config(FLOW, profile, overrides)  # type: ignore[assignment]
    st = open_store(store)
    run_id = run_id or new_run_id()
    base = join("runs", FLOW, run_id)
    log.info("q3-segmentation run %s (profile %s, %d image(s)) -> %s", run_id, profile,
             len(cfg.images), st.url(base))
    n = len(cfg.images)
    progress = Progress(n + 2, f"q3-segmentation {run_id}: {n} image(s)")

    # one step after another (each needs the last one's output), each through the task
    # runner: on Ray the segmentation runs where a GPU is (resources.evaluate)
    steps = Steps(cfg, st.uri, launcher, plan.STEP_KINDS)
    ingest = steps.run("ingest-images", "images.ingest",
                       plan.ingest_config(cfg, join(base, "inputs")))
    progress.advance()
    seg = steps.run("segment", "segment.images",
                    plan.segment_config(cfg, join(base, "segment"), ingest["prefix"]),
                    progress=progress.slice(n))
    progress.advance(n)
    planned = plan_comparison(FLOW, profile, run_id, st)
    report = steps.run("report", "segment.report",
                       {"out": join("reports", FLOW, run_id), "segment": seg["prefix"],
                        "profile": profile, "run_id": run_id, "comparison": planned})
    progress.advance()

    images = [{k: e.get(k) for k in ("index", "name", "source", "status", "stage", "error",
                                     "size", "mode", "notes", "legend", "outputs", "infer_s")
               if k in e} for e in seg["images"]]
    ok = [e for e in images if e["status"] == "ok"]
    rejected = [e for e in images if e["status"] != "ok"]
    rows = [{"image": e["name"], "status": e["status"] if e["status"] == "ok"
             else f"rejected ({e['stage']})",
             "size": "x".join(map(str, e["size"])) if e.get("size") else "",
             "top_class": e["legend"][0]["name"] if e.get("legend") else "",
             "top_share": round(e["legend"][0]["share"], 4) if e.get("legend") else None,
             "infer_s": e.get("infer_s")} for e in images]
    summary = [_summary_line(e) for e in images]
    report_keys = report["outputs"]
    publish(FLOW, run_id, rows, report_keys, st, "\n".join(f"- {line}" for line in summary))
    status = "ok" if not rejected else ("partial" if ok else "failed")
    result = {"run_id": run_id, "profile": profile, "store": st.uri, "status": status,
              "config": cfg.model_dump(mode="json"), "ingest": ingest["prefix"],
              "segment": seg["prefix"], "report": report_keys, "images": images,
              "ok": len(ok), "rejected": len(rejected), "metrics": seg["metrics"],
              "summary": summary, "groups": [], "task_runner": steps.describe()}
    result = finish_run(FLOW, cfg, run_id, result, [ingest, seg, report], st, launcher, planned)
    if rejected and (not cfg.allow_rejected or not ok):
        html = report_keys["report.html"]
        where = st.local_path(html) or st.url(html)
        lines = "\n".join(f"  {e['name']} <- {e['source']} ({e['stage']}): {e['error']}"
                          for e in rejected)
        head = (f"all {len(images)} inputs were rejected" if not ok else
                f"{len(rejected)} of {len(images)} inputs rejected ({len(ok)} segmented, "
                "their outputs and the report written)")
        hint = "" if not ok else ("\nSet allow_rejected=true to accept partial runs "
                                  "(exit code 0).")
        raise InputsRejectedError(f"{head}:\n{lines}\nreport:   {where}\nmanifest: "
                                  f"{st.url(result['manifest'])}{hint}")
    return result
