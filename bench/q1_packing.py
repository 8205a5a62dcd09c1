"""Sweep packing: a whole Q1 sweep's wall time with ``parallel`` cells at once vs one after
another, the same flow, store and data, interleaved in one process.

    python -m bench.q1_packing [--flow q1-mlp] [--profile smoke] [--parallel 2,3]
                               [--set KEY=VALUE ...] [--repeats 1]

Sequential is the default path (``parallel=1``: every cell in this process); packed runs
up to N trainings at once, each in a child process with 1/N of the CPU threads (see
``flows.fanout.Steps``). Every run recomputes (``refresh``); the dataset
is fetched once beforehand. Prints the medians and the ratio packed / sequential (< 1:
packing pays).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile

from bench.common import print_ratios, race


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", default="q1-mlp", choices=["q1-mlp", "q1-cnn"])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--parallel", default="2,3", help="comma list of packing widths")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--store", default=None, help="default: a temporary file:// folder")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from flows.fanout import packed_env
    from flows.registry import load_flow
    from tasks.core.config import parse_sets
    from tasks.plans import resolve_config
    from tasks.q1.plan import q1_cnn_cells, q1_mlp_cells
    from tasks.registry import run_task

    overrides = parse_sets(args.set)
    widths = [int(w) for w in args.parallel.split(",") if w.strip()]
    cfg = resolve_config(args.flow, args.profile, overrides)
    cells, _ = (q1_mlp_cells if args.flow == "q1-mlp" else q1_cnn_cells)(cfg)
    store = args.store or f"file://{tempfile.mkdtemp(prefix='vf-bench-pack-')}"
    run_task("fashion-mnist.fetch", cfg.data.model_dump(), store)  # shared by every run
    flow = load_flow(args.flow)

    def sweep(parallel: int):
        return lambda: flow(profile=args.profile, store=store, refresh=True,
                            overrides={**overrides, "parallel": parallel})

    contenders = {"sequential (parallel=1)": sweep(1)}
    contenders.update({f"packed (parallel={w})": sweep(w) for w in widths})
    harness = contextlib.nullcontext()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.testing.utilities import prefect_test_harness

        harness = prefect_test_harness(server_startup_timeout=120)
    with harness:
        medians = race(contenders, repeats=args.repeats, warmup=0)
    print_ratios(f"{args.flow} sweep ({args.profile} profile, {len(cells)} training runs, "
                 f"device {cfg.device}, {cfg.epochs} epochs, {cfg.data.n_train} samples; "
                 f"threads per packed run: " + ", ".join(
                     f"{w}: {packed_env(w)['OMP_NUM_THREADS']}" for w in widths) + ")",
                 medians, "sequential (parallel=1)")
    base = medians["sequential (parallel=1)"]
    print("RESULT packed/sequential " + " ".join(
        f"parallel={w} {medians[f'packed (parallel={w})'] / base:.3f}" for w in widths))


if __name__ == "__main__":
    main()
