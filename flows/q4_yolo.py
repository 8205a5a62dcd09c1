"""Flow ``q4-yolo``: YOLO export -> train (one task run per model) -> evaluate -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.common import Progress, champion_question, new_run_id, publish, remember_flow_run
from flows.compare import finish_run, plan_comparison
from flows.fanout import Steps
from tasks.core.store import join, open_store
from tasks.plans import resolve_config
from tasks.q4 import plan
from tasks.q4.plan import Q4YoloConfig
from tasks.q4.yolo import model_label, model_slug, reference_key

FLOW = "q4-yolo"
METRICS = ("precision", "recall", "mAP50", "mAP50-95")


@flow(name=FLOW, log_prints=True)
def q4_yolo(profile: str = "smoke", store: str | None = None,
            overrides: dict[str, Any] | None = None, launcher: str = "local",
            run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q4: train each YOLO model on the detection export, evaluate it, report vs reference."""
    # task INFO lines reach the run log: flows.launchers.show_task_logs (called by launch)
    return _run(profile, store, overrides, launcher, run_id, refresh)


def _run(profile: str, store: str | None, overrides: dict[str, Any] | None, launcher: str,
         run_id: str | None, refresh: bool = False) -> dict[str, Any]:
    remember_flow_run()
    log = get_run_logger()
    cfg: Q4YoloConfig = resolve_config(FLOW, profile, overrides)  # type: ignore[assignment]
    st = open_store(store)
    run_id = run_id or new_run_id()
    base = join("runs", FLOW, run_id)
    log.info("q4-yolo run %s (profile %s, models %s) -> %s", run_id, profile,
             ", ".join(cfg.models), st.url(base))

    steps = Steps(cfg, st.uri, launcher, plan.STEP_KINDS, refresh=refresh)
    data = steps.run("fetch-yolo-export", "yolo-export.fetch", cfg.data.model_dump(mode="json"))
    progress = Progress(2 * len(cfg.models) + 1, f"q4-yolo {run_id}: {len(cfg.models)} models")
    # the models are independent: every training at once (as the runner allows: on Ray a
    # whole GPU each by the resource table), then each evaluation after its own training
    training, evaluation = {}, {}
    for model in cfg.models:
        slug = model_slug(model)
        training[model] = steps.submit(f"train-{slug}", "yolo.train", plan.train_config(
            cfg, model, join(base, f"train-{slug}"), data["prefix"]),
            slot=f"{FLOW}/train-{slug}")
    for model in cfg.models:
        slug = model_slug(model)
        evaluation[model] = steps.submit(f"evaluate-{slug}", "yolo.evaluate", plan.eval_config(
            cfg, join(base, f"eval-{slug}"), ""),  # "train": from its training
            slot=f"{FLOW}/evaluate-{slug}", upstream={"train": training[model]})
    trained, evaluated = {}, {}
    for model in cfg.models:
        trained[model] = training[model].result()
        progress.advance()
    for model in cfg.models:
        evaluated[model] = evaluation[model].result()
        progress.advance()
    planned = plan_comparison(FLOW, profile, run_id, st)
    report = steps.run("report", "yolo.report", {
        "out": join("reports", FLOW, run_id), "profile": profile, "run_id": run_id,
        "comparison": planned,
        "models": [{"label": model_label(m), "model": m, "reference": reference_key(m),
                    "train": trained[m]["prefix"], "eval": evaluated[m]["prefix"]}
                   for m in cfg.models],
        "intro": [f"Models: {', '.join(cfg.models)}; {cfg.epochs} epochs at {cfg.imgsz} px, "
                  f"batch {cfg.batch}, optimizer {cfg.optimizer}, seed {cfg.seed}. Dataset: "
                  f"{data['prefix']} ({data['inputs'].get('source', '?')}, classes "
                  f"{', '.join(data.get('classes', []))}). Metrics: ultralytics val on the "
                  "validation split."]})
    progress.advance()

    rows = []
    for m in cfg.models:
        em, tm = evaluated[m]["metrics"], trained[m]["metrics"]
        rows.append({"model": model_label(m), "source": "ours",
                     **{k: round(em[f"val/{k}"], 4) for k in METRICS},
                     "train_time_s": round(tm.get("train/time_s") or 0.0, 1),
                     "epochs": tm.get("epochs")})
    from tasks.q4.reference import REFERENCE

    for key, ref in REFERENCE.items():
        rows.append({"model": key, "source": "reference", **{k: ref[k] for k in METRICS},
                     "train_time_s": ref["train_time_s"], "epochs": 100})
    per_class = [{"model": model_label(m), "class": c, **{
        k: (round(v[k], 4) if v.get(k) is not None else None)
        for k in ("instances", *METRICS)}}
        for m in cfg.models for c, v in evaluated[m]["metrics"]["val/per_class"].items()]
    create_table_artifact(table=per_class, key="q4-yolo-per-class",
                          description=f"q4-yolo run {run_id}: per-class validation metrics")
    groups = report["metrics"]["groups"]
    best = "\n".join(f"- best model by {g['select_by']}: {g['best']} ({g['best_score']:.4f})"
                     for g in groups)
    publish(FLOW, run_id, rows, report["outputs"], st, best)
    champion, promotion = {}, None
    if groups:
        top = next(m for m in cfg.models if model_label(m) == groups[0]["best"])
        promotion = steps.run("promote", "model.promote", {
            "question": champion_question(FLOW, profile), "run_id": run_id,
            "metric": groups[0]["select_by"], "value": groups[0]["best_score"],
            "model": trained[top]["prefix"], "profile": profile,
            "out": join(base, "promote")})
        champion = {"best_cell": model_label(top), "metric": groups[0]["select_by"],
                    "value": groups[0]["best_score"], **promotion["metrics"]}
    result = {"run_id": run_id, "profile": profile, "store": st.uri,
              "config": cfg.model_dump(mode="json"), "data": data["prefix"],
              "train": {m: t["prefix"] for m, t in trained.items()},
              "eval": {m: e["prefix"] for m, e in evaluated.items()},
              "report": report["outputs"], "groups": groups, "metrics": rows,
              "per_class": per_class, "champion": champion,
              "task_runner": steps.describe()}
    done = [data, report, promotion, *trained.values(), *evaluated.values()]
    return finish_run(FLOW, cfg, run_id, result, done, st, launcher, planned)
