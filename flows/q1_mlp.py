"""Flow ``q1-mlp``: fetch Fashion-MNIST -> train each sweep cell -> evaluate -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.common import Progress, io_step, new_run_id, publish, run_step, write_flow_manifest
from tasks.experiments import Q1MlpConfig, q1_mlp_cells, resolve_config
from tasks.store import join, open_store

FLOW = "q1-mlp"


@flow(name=FLOW, log_prints=True)
def q1_mlp(profile: str = "smoke", store: str | None = None,
           overrides: dict[str, Any] | None = None, launcher: str = "local",
           run_id: str | None = None) -> dict[str, Any]:
    """Q1-MLP on Fashion-MNIST: batch-size, activation and loss sweeps, metrics and report."""
    log = get_run_logger()
    cfg: Q1MlpConfig = resolve_config(FLOW, profile, overrides)  # type: ignore[assignment]
    st = open_store(store)
    run_id = run_id or new_run_id()
    base = join("runs", FLOW, run_id)
    log.info("q1-mlp run %s (profile %s) -> %s", run_id, profile, st.url(base))

    data = io_step("fetch-fashion-mnist")("fetch-fashion-mnist", "fashion-mnist.fetch",
                                          cfg.data.model_dump(), st.uri, launcher)
    cells, groups = q1_mlp_cells(cfg)
    progress = Progress(2 * len(cells) + 1, f"q1-mlp {run_id}: {len(cells)} training runs")
    trained, evaluated = {}, {}
    for cid, fields in cells.items():
        trained[cid] = run_step(f"train-{cid}", "classifier.train",
                                {**fields, "out": join(base, f"train-{cid}"),
                                 "data": data["prefix"]}, st.uri, launcher)
        progress.step()
        evaluated[cid] = run_step(f"evaluate-{cid}", "classifier.evaluate",
                                  {"out": join(base, f"eval-{cid}"),
                                   "train": trained[cid]["prefix"], "device": cfg.device},
                                  st.uri, launcher)
        progress.step()
    report_groups = [{
        "key": g["key"], "title": g["title"], "select_by": "test/accuracy",
        "runs": [{"name": name, "value": value, "train": trained[cid]["prefix"],
                  "eval": evaluated[cid]["prefix"]} for name, value, cid in g["runs"]],
    } for g in groups]
    report = run_step("report", "classifier.report", {
        "out": join("reports", FLOW, run_id), "question": FLOW, "profile": profile,
        "run_id": run_id, "title": "Q1-MLP: fully connected classifier on Fashion-MNIST",
        "groups": report_groups,
        "intro": [f"Network: 784 -> {' -> '.join(map(str, cfg.hidden))} -> 10, "
                  f"{cfg.optimizer} (lr {cfg.learning_rate}), {cfg.epochs} epochs, seed "
                  f"{cfg.seed}. MSE is computed between softmax(logits) and one-hot targets; "
                  "CrossEntropy on the logits. Dataset: "
                  f"{data['prefix']} ({data['inputs'].get('source', '?')})."],
    }, st.uri, launcher)
    progress.step()
    rows = [{"experiment": cid, **{k: round(v, 4) for k, v in evaluated[cid]["metrics"].items()
                                   if isinstance(v, float)},
             "train_time_s": round(trained[cid]["metrics"]["train/time_s"], 2)}
            for cid in cells]
    report_keys = report["outputs"]
    best = "\n".join(f"- {g['key']}: best {g.get('best')!r} by {g['select_by']}"
                     for g in report["metrics"]["groups"])
    publish(FLOW, run_id, rows, report_keys, st, best)
    result = {"run_id": run_id, "profile": profile, "store": st.uri,
              "config": cfg.model_dump(mode="json"), "data": data["prefix"],
              "train": {c: m["prefix"] for c, m in trained.items()},
              "eval": {c: m["prefix"] for c, m in evaluated.items()},
              "report": report_keys, "groups": report["metrics"]["groups"], "metrics": rows}
    result["manifest"] = write_flow_manifest(st, FLOW, run_id, result)
    return result
