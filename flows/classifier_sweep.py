"""The shared body of the Q1 flows: fetch -> train each cell -> evaluate -> report -> publish."""

from __future__ import annotations

import contextvars
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from prefect import get_run_logger

from flows.common import (
    Progress,
    champion_question,
    io_step,
    new_run_id,
    publish,
    remember_flow_run,
    run_step,
)
from flows.compare import finish_run, plan_comparison
from tasks.core.config import Config
from tasks.core.store import join, open_store


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
    log.info("%s run %s (profile %s, %d training runs) -> %s", flow, run_id, profile,
             len(cells), st.url(base))
    data = io_step("fetch-fashion-mnist")("fetch-fashion-mnist", "fashion-mnist.fetch",
                                          cfg.data.model_dump(), st.uri, launcher)
    # progress in epochs: each training counts its epochs, each evaluation one unit
    progress = Progress(sum(c["epochs"] + 1 for c in cells.values()) + 1,
                        f"{flow} {run_id}: {len(cells)} training runs (epochs done / total)")
    parallel = getattr(cfg, "parallel", 1)
    if parallel > 1 and len(cells) > 1:
        log.info("packing: up to %d training runs at once (%s launcher, %s threads each)",
                 parallel, packed_launcher(launcher), packed_env(parallel)["OMP_NUM_THREADS"])
        trained, evaluated = train_packed(cells, base, data["prefix"], st.uri, launcher,
                                          parallel=parallel, flow=flow, eval_fields=eval_fields,
                                          refresh=refresh, progress=progress)
    else:
        trained, evaluated = {}, {}
        for cid, fields in cells.items():
            trained[cid], evaluated[cid] = train_and_evaluate(
                cid, fields, base, data["prefix"], st.uri, launcher, flow=flow,
                eval_fields=eval_fields, refresh=refresh,
                progress=progress.slice(fields["epochs"]))
            progress.advance(fields["epochs"] + 1)
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
    report = run_step("report", "classifier.report", {
        "out": join("reports", flow, run_id), "question": flow, "profile": profile,
        "run_id": run_id, "title": title, "groups": report_groups, "intro": intro,
        "comparison": planned}, st.uri, launcher)
    progress.advance(1)

    def score(cid: str) -> float:
        return {**trained[cid]["metrics"], **evaluated[cid]["metrics"]}[primary]

    best_cell = max(cells, key=score)
    promotion = run_step("promote", "model.promote", {
        "question": champion_question(flow, profile), "run_id": run_id, "metric": primary,
        "value": score(best_cell), "model": trained[best_cell]["prefix"], "profile": profile,
        "out": join(base, "promote")}, st.uri, launcher)
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
              "groups": report["metrics"]["groups"], "metrics": rows}
    steps = [data, report, promotion, *trained.values(), *evaluated.values()]
    return finish_run(flow, cfg, run_id, result, steps, st, launcher, planned)


def train_and_evaluate(cid: str, fields: dict, base: str, data: str, store: str, launcher: str,
                       *, flow: str, eval_fields: dict, refresh: bool | None,
                       progress: dict | None = None, train_launcher: str | None = None,
                       env: dict[str, str] | None = None) -> tuple[dict, dict]:
    """One sweep cell: ``classifier.train`` then ``classifier.evaluate`` on test; manifests."""
    trained = run_step(f"train-{cid}", "classifier.train",
                       {**fields, "out": join(base, f"train-{cid}"), "data": data}, store,
                       train_launcher or launcher, slot=f"{flow}/train-{cid}", refresh=refresh,
                       progress=progress, env=env)
    evaluated = run_step(f"evaluate-{cid}", "classifier.evaluate",
                         {**eval_fields, "out": join(base, f"eval-{cid}"),
                          "train": trained["prefix"]},
                         store, launcher, slot=f"{flow}/evaluate-{cid}", refresh=refresh)
    return trained, evaluated


def cpu_threads() -> int:
    """CPU threads this process may use: ``OMP_NUM_THREADS`` when set, else its CPUs."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def packed_env(parallel: int, total: int | None = None) -> dict[str, str]:
    """Thread counts for one of ``parallel`` concurrent trainings: a 1/``parallel`` share of
    the CPU threads (at least one), so the runs do not oversubscribe the cores."""
    n = str(max(1, (total or cpu_threads()) // parallel))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def packed_launcher(launcher: str) -> str:
    """Concurrent trainings need processes of their own: ``local`` becomes ``subprocess``."""
    return "subprocess" if launcher == "local" else launcher


def train_packed(cells: dict[str, dict], base: str, data: str, store: str, launcher: str, *,
                 parallel: int, flow: str, eval_fields: dict, refresh: bool | None,
                 progress: Progress) -> tuple[dict[str, dict], dict[str, dict]]:
    """Sweep packing: train up to ``parallel`` cells at once on the same device.

    Each training runs in its own process (``python -m tasks classifier.train`` with its
    share of the CPU threads; with the docker launcher a container, limited by
    ``VF_DOCKER_CPUS``); on a GPU the
    small Q1 models then overlap instead of leaving the device idle between kernels. Each
    cell's seeds come from its config, so results equal a one-after-another run at the
    same thread count. The evaluations use the flow's own launcher. The first failure is
    raised once the runs in flight end; cells not yet started are cancelled.
    """
    env = packed_env(parallel)
    train_launcher = packed_launcher(launcher)
    results: dict[str, tuple[dict, dict]] = {}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="vf-pack") as pool:
        futures = {
            # each thread carries this flow run's context, so its task runs belong to it
            pool.submit(contextvars.copy_context().run, train_and_evaluate, cid, fields, base,
                        data, store, launcher, flow=flow, eval_fields=eval_fields,
                        refresh=refresh, train_launcher=train_launcher, env=env): cid
            for cid, fields in cells.items()}
        try:
            for fut in as_completed(futures):
                cid = futures[fut]
                results[cid] = fut.result()
                progress.advance(cells[cid]["epochs"] + 1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    trained = {cid: results[cid][0] for cid in cells}
    evaluated = {cid: results[cid][1] for cid in cells}
    return trained, evaluated
