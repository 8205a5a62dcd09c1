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

from typing import Any

from prefect import get_run_logger

from flows.common import (
    Progress,
    champion_question,
    new_run_id,
    publish,
    remember_flow_run,
)
from flows.compare import finish_run, plan_comparison
from flows.fanout import Steps, packed_env, packed_launcher
from tasks.core.config import Config
from tasks.core.store import join, open_store
from tasks.q1.plan import STEP_KINDS


def run_classifier_sweep(flow: str, cfg: Config, cells: dict[str, dict], groups: list[dict],
                         *, profile: str, store: str | None, launcher: str,
                         run_id: str | None, title: str, intro: list[str],
                         eval_fields: dict, primary: str, refresh: bool | None = None
                         ) -> dict[str, Any]:
    """Run every training cell once, evaluate it on test, and render the question's report.

    ``cells`` and ``groups`` come from the question's planner in ``tasks.plans``.
    Returns the flow result (also written as the flow's manifest).
    """
    remember_flow_run()
    log = get_run_logger()
    st = open_store(store)
    run_id = run_id or new_run_id()
    base = join("runs", flow, run_id)
    steps = Steps(cfg, st.uri, launcher, STEP_KINDS, refresh=refresh)
    log.info("%s run %s (profile %s, %d training runs) -> %s", flow, run_id, profile,
             len(cells), st.url(base))
    data = steps.run("fetch-fashion-mnist", "fashion-mnist.fetch", cfg.data.model_dump())
    # progress in epochs: each training counts its epochs, each evaluation one unit
    progress = Progress(sum(c["epochs"] + 1 for c in cells.values()) + 1,
                        f"{flow} {run_id}: {len(cells)} training runs (epochs done / total)")
    if not steps.on_ray and steps.parallel > 1 and len(cells) > 1:
        log.info("packing: up to %d training runs at once (%s launcher, %s threads each)",
                 steps.parallel, packed_launcher(launcher),
                 packed_env(steps.parallel)["OMP_NUM_THREADS"])
    training = {cid: steps.submit(
        f"train-{cid}", "classifier.train",
        {**fields, "out": join(base, f"train-{cid}"), "data": data["prefix"]},
        slot=f"{flow}/train-{cid}", progress=progress.slice(fields["epochs"]))
        for cid, fields in cells.items()}
    evaluation = {cid: steps.submit(
        f"evaluate-{cid}", "classifier.evaluate", {**eval_fields, "out": join(base, f"eval-{cid}")},
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
    intro = [*intro, f"Dataset: {data['prefix']} ({data['inputs'].get('source', '?')})."]
    planned = plan_comparison(flow, profile, run_id, st)
    report = steps.run("report", "classifier.report", {
        "out": join("reports", flow, run_id), "question": flow, "profile": profile,
        "run_id": run_id, "title": title, "groups": report_groups, "intro": intro,
        "comparison": planned})
    progress.advance(1)

    def score(cid: str) -> float:
        return {**trained[cid]["metrics"], **evaluated[cid]["metrics"]}[primary]

    best_cell = max(cells, key=score)
    promotion = steps.run("promote", "model.promote", {
        "question": champion_question(flow, profile), "run_id": run_id, "metric": primary,
        "value": score(best_cell), "model": trained[best_cell]["prefix"], "profile": profile,
        "out": join(base, "promote")})
    rows = [{"experiment": cid,
             **{k: round(v, 4) for k, v in evaluated[cid]["metrics"].items()
                if isinstance(v, float)},
             **{k: round(v, 4) for k, v in trained[cid]["metrics"].items()
                if k.startswith("dev/") or k == "best/dev/accuracy"},
             "train_time_s": round(trained[cid]["metrics"]["train/time_s"], 2)}
            for cid in cells]
    best = "\n".join(f"- {g['key']}: best {g.get('best')!r} by {g['select_by']}"
                     for g in report["metrics"]["groups"])
    publish(flow, run_id, rows, report["outputs"], st, best)
    runs = [{"group": g["key"], "name": r["name"], "value": r["value"], "train": r["train"],
             "eval": r["eval"]} for g in report_groups for r in g["runs"]]
    result = {"run_id": run_id, "profile": profile, "store": st.uri,
              "config": cfg.model_dump(mode="json"), "data": data["prefix"],
              "train": {c: m["prefix"] for c, m in trained.items()},
              "eval": {c: m["prefix"] for c, m in evaluated.items()},
              "runs": runs, "report": report["outputs"],
              "champion": {"best_cell": best_cell, "metric": primary,
                           "value": score(best_cell), **promotion["metrics"]},
              "groups": report["metrics"]["groups"], "metrics": rows,
              "task_runner": steps.describe()}
    done = [data, report, promotion, *trained.values(), *evaluated.values()]
    return finish_run(flow, cfg, run_id, result, done, st, launcher, planned)
