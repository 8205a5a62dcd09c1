"""Flow ``q3-segmentation``: ingest images -> DeepLabV3 per image -> report -> comparison
with the previous run of the same profile (Q3 keeps no champion; ``flows/champion.py``).

Every input gets a status. A rejected input (missing, not an image, truncated, too small,
unsupported format, failed download) never loses the others' results: their outputs, the
report (which lists the rejected inputs and why) and the flow manifest are all written
first. Then, when any input was rejected, the flow fails with ``InputsRejectedError``
(Prefect state Failed, CLI exit code 3) unless ``allow_rejected`` is true; a run where no
input could be segmented always fails.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Progress
from flows.question_run import QuestionRun
from tasks.q3 import plan
from tasks.q3.photos import InputsRejectedError

FLOW = "q3-segmentation"


@flow(name=FLOW, log_prints=True)
def q3_segmentation(profile: str = "smoke", store: str | None = None,
                    overrides: dict[str, Any] | None = None, launcher: str = "local",
                    run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q3: DeepLabV3 class map, overlay and legend for each input image, and a report.

    Nothing is cached across runs (each run segments its inputs afresh), so ``refresh``
    changes nothing; it is accepted like every flow's. ``--run-id`` reuses finished steps.
    """
    run = QuestionRun.start(FLOW, profile, store, overrides, launcher, run_id,
                            describe=lambda c: f"{len(c.images)} image(s)")
    cfg: plan.Q3SegmentationConfig = run.cfg
    n = len(cfg.images)
    progress = Progress(n + 2, f"{FLOW} {run.run_id}: {n} image(s)")

    # one step after another (each needs the last one's output), each through the task
    # runner: on Ray the segmentation runs where a GPU is (resources.evaluate)
    ingest = run.steps.run("ingest-images", "images.ingest",
                           plan.ingest_config(cfg, run.at("inputs")))
    progress.advance()
    seg = run.steps.run("segment", "segment.images",
                        plan.segment_config(cfg, run.at("segment"), ingest["prefix"]),
                        progress=progress.slice(n))
    progress.advance(n)
    report = run.report("segment.report", {"segment": seg["prefix"]})
    progress.advance()

    images = plan.image_entries(seg)
    ok = [e for e in images if e["status"] == "ok"]
    rejected = [e for e in images if e["status"] != "ok"]
    summary = [plan.summary_line(e) for e in images]
    run.publish(plan.summary_rows(images), "\n".join(f"- {line}" for line in summary))
    status = "ok" if not rejected else ("partial" if ok else "failed")
    result = run.finish({
        "status": status, "ingest": ingest["prefix"], "segment": seg["prefix"],
        "images": images, "ok": len(ok), "rejected": len(rejected), "metrics": seg["metrics"],
        "summary": summary, "groups": []}, [ingest, seg, report])
    if rejected and (not cfg.allow_rejected or not ok):
        html = run.report_keys["report.html"]
        where = run.st.local_path(html) or run.st.url(html)
        lines = "\n".join(f"  {e['name']} <- {e['source']} ({e['stage']}): {e['error']}"
                          for e in rejected)
        head = (f"all {len(images)} inputs were rejected" if not ok else
                f"{len(rejected)} of {len(images)} inputs rejected ({len(ok)} segmented, "
                "their outputs and the report written)")
        hint = "" if not ok else ("\nSet allow_rejected=true to accept partial runs "
                                  "(exit code 0).")
        raise InputsRejectedError(f"{head}:\n{lines}\nreport:   {where}\nmanifest: "
                                  f"{run.st.url(result['manifest'])}{hint}")
    return result
