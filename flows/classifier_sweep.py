"""The shared body of the Q1 flows: fetch -> train each cell -> evaluate -> report -> publish.

Every step is submitted to the flow run's Prefect task runner (:class:`flows.fanout.Steps`):
the cells' trainings first, then their evaluations (each waits for its own training), and
the results are taken in the cells' order. On the thread pool up to ``parallel`` cells
train at once (sweep packing: each in its own process with 1/N of the CPU threads); on Ray
as many as the cluster holds with each cell's resources (``resources.train``: 0.25 GPU
packs four cells on one GPU). Each cell's seeds come from its config, so the results equal
a one-after-another run at the same thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger

from flows.common import Progress
from flows.fanout import packed_env, packed_launcher
from flows.question_run import QuestionRun
from tasks.core.config import Config
from tasks.q1 import plan


def run_classifier_sweep(flow: str, profile: str, store: str | None,
                         overrides: dict[str, Any] | None, launcher: str, run_id: str | None,
                         refresh: bool | None, *,
                         cells_of: Callable[[Any], tuple[dict[str, dict], list[dict]]],
                         intro_of: Callable[[Any], list[str]]) -> dict[str, Any]:
    """Run every training cell once, evaluate it, render the question's report, promote the
    best cell and finish the run.

    ``cells_of(cfg)`` and ``intro_of(cfg)`` come from the question's plan
    (``tasks/q1/plan.py``). Returns the flow result (also written as the flow's manifest).
    """
    run = QuestionRun.start(flow, profile, store, overrides, launcher, run_id, refresh,
                            describe=lambda c: f"{len(cells_of(c)[0])} training runs")
    cfg: Config = run.cfg
    cells, groups = cells_of(cfg)
    primary = plan.PRIMARY[flow]
    steps = run.steps
    log = get_run_logger()
    data = steps.run("fetch-fashion-mnist", "fashion-mnist.fetch", cfg.data.model_dump())
    # progress in epochs: each training counts its epochs, each evaluation one unit
    progress = Progress(sum(c["epochs"] + 1 for c in cells.values()) + 1,
                        f"{flow} {run.run_id}: {len(cells)} training runs (epochs done / total)")
    if not steps.on_ray and steps.parallel > 1 and len(cells) > 1:
        log.info("packing: up to %d training runs at once (%s launcher, %s threads each)",
                 steps.parallel, packed_launcher(launcher),
                 packed_env(steps.parallel)["OMP_NUM_THREADS"])
    eval_fields = plan.eval_fields(cfg)
    training = {cid: steps.submit(
        f"train-{cid}", "classifier.train",
        {**fields, "out": run.at(f"train-{cid}"), "data": data["prefix"]},
        slot=f"{flow}/train-{cid}", progress=progress.slice(fields["epochs"]))
        for cid, fields in cells.items()}
    evaluation = {cid: steps.submit(
        f"evaluate-{cid}", "classifier.evaluate", {**eval_fields, "out": run.at(f"eval-{cid}")},
        slot=f"{flow}/evaluate-{cid}", upstream={"train": training[cid]})
        for cid in cells}
    trained: dict[str, dict] = {}
    evaluated: dict[str, dict] = {}
    for cid in cells:  # in order; the first failure fails the flow
        trained[cid] = training[cid].result()
        progress.advance(cells[cid]["epochs"])
    for cid in cells:
        evaluated[cid] = evaluation[cid].result()
        progress.advance(1)
    report_groups = [{
        "key": g["key"], "title": g["title"], "select_by": g["select_by"],
        "numeric": g.get("numeric", False),
        "runs": [{"name": name, "value": value, "train": trained[cid]["prefix"],
                  "eval": evaluated[cid]["prefix"],
                  "repeats": [{"train": trained[r]["prefix"], "eval": evaluated[r]["prefix"]}
                              for r in g.get("repeats", {}).get(cid, [])]}
                 for name, value, cid in g["runs"]],
    } for g in groups]
    intro = [*intro_of(cfg), f"Dataset: {data['prefix']} ({data['inputs'].get('source', '?')})."]
    report = run.report("classifier.report", {
        "question": flow, "title": run.title, "groups": report_groups, "intro": intro})
    progress.advance(1)

    def score(cid: str) -> float:
        return {**trained[cid]["metrics"], **evaluated[cid]["metrics"]}[primary]

    best_cell = max(cells, key=score)
    promotion, champion = run.promote(primary, score(best_cell), trained[best_cell]["prefix"],
                                      best_cell)
    rows = plan.summary_rows(cells, trained, evaluated)
    run.publish(rows, plan.summary_md(report["metrics"]["groups"]))
    runs = [{"group": g["key"], "name": r["name"], "value": r["value"], "train": r["train"],
             "eval": r["eval"]} for g in report_groups for r in g["runs"]]
    return run.finish({
        "data": data["prefix"], "train": {c: m["prefix"] for c, m in trained.items()},
        "eval": {c: m["prefix"] for c, m in evaluated.items()}, "runs": runs,
        "champion": champion, "groups": report["metrics"]["groups"], "metrics": rows,
    }, [data, report, promotion, *trained.values(), *evaluated.values()])
