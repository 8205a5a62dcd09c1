"""Flow ``q4-yolo``: YOLO export -> train (one task run per model) -> evaluate -> report ->
publish -> promote."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.common import Progress
from flows.question_run import QuestionRun
from tasks.q4 import plan
from tasks.q4.yolo import model_label, model_slug

FLOW = "q4-yolo"


@flow(name=FLOW, log_prints=True)
def q4_yolo(profile: str = "smoke", store: str | None = None,
            overrides: dict[str, Any] | None = None, launcher: str = "local",
            run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q4: train each YOLO model on the detection export, evaluate it, report vs reference."""
    # task INFO lines reach the run log: flows.launchers.show_task_logs (called by launch)
    run = QuestionRun.start(FLOW, profile, store, overrides, launcher, run_id, refresh,
                            describe=lambda c: f"models {', '.join(c.models)}")
    cfg: plan.Q4YoloConfig = run.cfg
    steps = run.steps
    data = steps.run("fetch-yolo-export", "yolo-export.fetch", cfg.data.model_dump(mode="json"))
    progress = Progress(2 * len(cfg.models) + 1,
                        f"{FLOW} {run.run_id}: {len(cfg.models)} models")
    # the models are independent: every training at once (as the runner allows: on Ray a
    # whole GPU each by the resource table), then each evaluation after its own training
    training, evaluation = {}, {}
    for model in cfg.models:
        slug = model_slug(model)
        training[model] = steps.submit(f"train-{slug}", "yolo.train", plan.train_config(
            cfg, model, run.at(f"train-{slug}"), data["prefix"]),
            slot=f"{FLOW}/train-{slug}")
    for model in cfg.models:
        slug = model_slug(model)
        evaluation[model] = steps.submit(f"evaluate-{slug}", "yolo.evaluate", plan.eval_config(
            cfg, run.at(f"eval-{slug}"), ""),  # "train": from its training
            slot=f"{FLOW}/evaluate-{slug}", upstream={"train": training[model]})
    trained, evaluated = {}, {}
    for model in cfg.models:
        trained[model] = training[model].result()
        progress.advance()
    for model in cfg.models:
        evaluated[model] = evaluation[model].result()
        progress.advance()
    report = run.report("yolo.report", {
        "models": plan.report_models(cfg, trained, evaluated),
        "intro": plan.report_intro(cfg, data)})
    progress.advance()

    rows = plan.summary_rows(cfg, trained, evaluated)
    per_class = plan.per_class_rows(cfg, evaluated)
    create_table_artifact(table=per_class, key=f"{FLOW}-per-class",
                          description=f"{FLOW} run {run.run_id}: per-class validation metrics")
    groups = report["metrics"]["groups"]
    run.publish(rows, plan.summary_md(groups))
    champion, promotion = {}, None
    if groups:
        top = next(m for m in cfg.models if model_label(m) == groups[0]["best"])
        promotion, champion = run.promote(groups[0]["select_by"], groups[0]["best_score"],
                                          trained[top]["prefix"], model_label(top))
    return run.finish({
        "data": data["prefix"], "train": {m: t["prefix"] for m, t in trained.items()},
        "eval": {m: e["prefix"] for m, e in evaluated.items()}, "groups": groups,
        "metrics": rows, "per_class": per_class, "champion": champion,
    }, [data, report, promotion, *trained.values(), *evaluated.values()])
