"""Orchestration overhead: a q1-mlp smoke flow under Prefect vs the same task calls directly.

    python -m bench.orchestration [--repeats 2]

Both run the same steps (fetch, train and evaluate each cell, report, promote) on a local
store; the Prefect side runs against a temporary local server started once (its start-up
is excluded). Prints the medians, the overhead per task run and its share of wall time
(target <= 5 %), and where it goes: the time inside the task functions (which grows in
the flow when the API server and Prefect's background threads share the CPU, and by the
per-epoch progress-artifact updates) vs outside them (task-run and flow-run state calls,
artifacts, cache look-ups).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from bench.common import print_ratios, race

OVERRIDES = {"data": {"n_train": 2000, "n_test": 500}, "epochs": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    import flows.launchers.local
    from flows.q1_mlp import q1_mlp
    from tasks import registry
    from tasks.core.store import join
    from tasks.plans import resolve_config
    from tasks.q1.plan import q1_mlp_cells

    inside = {"s": 0.0}  # seconds spent in the task functions themselves

    def run_task(*a, **k):
        start = time.perf_counter()
        try:
            return registry.run_task(*a, **k)
        finally:
            inside["s"] += time.perf_counter() - start

    flows.launchers.local.run_task = run_task  # the local launcher's call, timed the same way

    cfg = resolve_config("q1-mlp", "smoke", OVERRIDES)
    cells, groups = q1_mlp_cells(cfg)
    n_tasks = 1 + 2 * len(cells) + 2
    counter = {"n": 0}

    def direct():
        counter["n"] += 1
        store = tempfile.mkdtemp(prefix="vf-direct-")
        base = f"runs/q1-mlp/direct-{counter['n']}"
        data = run_task("fashion-mnist.fetch", cfg.data.model_dump(), store)
        runs = {}
        for cid, fields in cells.items():
            t = run_task("classifier.train", {**fields, "out": join(base, f"train-{cid}"),
                                              "data": data.prefix}, store)
            e = run_task("classifier.evaluate", {"out": join(base, f"eval-{cid}"),
                                                 "train": t.prefix, "device": "cpu"}, store)
            runs[cid] = (t, e)
        run_task("classifier.report", {
            "out": join("reports", "q1-mlp", base), "question": "q1-mlp", "profile": "smoke",
            "run_id": base, "title": "bench", "groups": [{
                "key": g["key"], "title": g["title"], "select_by": g["select_by"],
                "runs": [{"name": n, "value": v, "train": runs[c][0].prefix,
                          "eval": runs[c][1].prefix} for n, v, c in g["runs"]]}
                for g in groups]}, store)
        best = max(cells, key=lambda c: runs[c][1].metrics["test/accuracy"])
        run_task("model.promote", {"question": "q1-mlp-bench", "run_id": base,
                                   "metric": "test/accuracy",
                                   "value": runs[best][1].metrics["test/accuracy"],
                                   "model": runs[best][0].prefix, "out": join(base, "promote")},
                 store)

    def prefect():
        q1_mlp(profile="smoke", store=f"file://{tempfile.mkdtemp(prefix='vf-flow-')}",
               overrides=OVERRIDES)

    spent: dict[str, list[float]] = {"direct task calls": [], "prefect flow": []}

    def timed(name, fn):
        def run():
            before = inside["s"]
            fn()
            spent[name].append(inside["s"] - before)
        return run

    with prefect_test_harness(server_startup_timeout=120):
        medians = race({name: timed(name, fn) for name, fn in
                        (("direct task calls", direct), ("prefect flow", prefect))},
                       repeats=args.repeats)
    print_ratios(f"q1-mlp smoke ({n_tasks} task runs)", medians, "direct task calls")
    extra = medians["prefect flow"] - medians["direct task calls"]
    task_s = {k: statistics.median(v[-args.repeats:]) for k, v in spent.items()}
    for name, sec in task_s.items():
        print(f"  {name:<34} inside the tasks {sec:6.3f} s, outside {medians[name] - sec:6.3f} s")
    outside = {k: medians[k] - task_s[k] for k in task_s}
    print(f"RESULT overhead split: tasks slower in the flow by "
          f"{task_s['prefect flow'] - task_s['direct task calls']:.2f} s, outside the tasks "
          f"{outside['prefect flow'] - outside['direct task calls']:.2f} s")
    print(f"RESULT Prefect overhead {extra:.2f} s per flow = {extra / n_tasks * 1000:.0f} ms "
          f"per task run = {extra / medians['prefect flow']:.1%} of wall time (target <= 5 %)")


if __name__ == "__main__":
    main()
