"""Fan-out: a whole Q1 sweep on a local Ray vs Prefect's thread pool vs one cell after
another (one run each, the same flow, store and data), and the Prefect + Ray overhead per
trivial step.

    python -m bench.fanout [--flow q1-cnn] [--profile smoke] [--parallel 2] [--tasks 100]
                           [--gpu-share 0] [--set KEY=VALUE ...] [--only sweep,overhead]
                           [--runners seq,pool,ray]

- ``one after another``: the thread-pool runner with ``parallel=1`` (every cell in this
  process, with all its threads);
- ``thread pool``: ``parallel=N`` (each training in a child process with 1/N of the threads);
- ``local Ray``: a Ray started for the run with N CPUs (and one GPU with ``--gpu-share``),
  each training asking ``resources.train.cpus`` = 1/N of the threads and ``--gpu-share`` of
  the GPU (0.25: four cells on one GPU; evaluations too); Ray's start is timed apart.

Every sweep recomputes (``refresh``); the dataset is fetched once beforehand. Prints the wall
times, ratios to one-after-another, images/s of each sweep (training images / wall time)
and, where ``nvidia-smi`` exists, the GPU utilisation during each. The overhead part runs
``--tasks`` trivial steps (``selftest.sleep`` of 0 s: a task that writes its manifest) through
each runner and directly (no Prefect), and prints seconds per step. Where Ray binds to every
interface, run it where that is fine (the tests use a loopback-only network namespace).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow


class _TrivialCfg:
    """What ``Steps`` reads of a flow config: a small resource table and ``parallel``."""

    def __init__(self, parallel: int):
        from tasks.core.resources import Resources, ResourceTable

        self.parallel = parallel
        small = Resources(cpus=1, memory="256m", time_limit_s=600)
        self.resources = ResourceTable(fetch=small, train=small, evaluate=small, report=small)


@flow(name="bench-fanout-trivial")
def trivial_steps(store: str, n: int, parallel: int) -> float:
    """``n`` trivial steps submitted at once through the flow's task runner; seconds from the
    first submission to the last result."""
    from flows.fanout import Steps

    steps = Steps(_TrivialCfg(parallel), store, "local", {"selftest.sleep": "report"})
    start = time.perf_counter()
    futures = [steps.submit(f"trivial-{i}", "selftest.sleep",
                            {"out": f"runs/bench-trivial/{parallel}-{i}", "seconds": 0})
               for i in range(n)]
    for f in futures:
        f.result()
    return time.perf_counter() - start


@contextlib.contextmanager
def gpu_sampler() -> Iterator[dict[str, float]]:
    """GPU utilisation (nvidia-smi every 0.5 s) while the block runs: mean and max %."""
    out: dict[str, float] = {}
    try:
        proc = subprocess.Popen(
            ["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu", "--format=csv,noheader,"
             "nounits", "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
    except OSError:
        yield out
        return
    try:
        yield out
    finally:
        proc.terminate()
        text, _ = proc.communicate(timeout=10)
        vals = [float(v) for v in text.split() if v.replace(".", "", 1).isdigit()]
        if vals:
            out.update(mean=sum(vals) / len(vals), max=max(vals), n=len(vals))


def images(result: dict[str, Any], samples: int) -> int:
    from tasks.core.store import join, open_store

    st = open_store(result["store"])
    return sum(samples * int(st.get_json(join(p, "manifest.json"))["metrics"].get("epochs") or 1)
               for p in result["train"].values())


def timed(fn: Callable[[], Any]) -> tuple[float, Any, dict[str, float]]:
    with gpu_sampler() as gpu:
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
    return seconds, value, gpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", default="q1-cnn", choices=["q1-mlp", "q1-cnn"])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--parallel", type=int, default=None,
                    help="cells at once (default: this machine's CPU threads, at most 4)")
    ap.add_argument("--tasks", type=int, default=100, help="trivial steps for the overhead")
    ap.add_argument("--gpu-share", type=float, default=0.0,
                    help="GPUs per training on Ray (0.25: four cells share one GPU)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--only", default="sweep,overhead", help="sweep, overhead or both")
    ap.add_argument("--runners", default="seq,pool,ray",
                    help="sweep contenders: seq (one after another), pool, ray")
    ap.add_argument("--store", default=None, help="default: a temporary file:// folder")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from flows.fanout import cpu_threads, threads_env
    from flows.registry import load_flow
    from flows.runners import ray_session, require_ray, task_runner
    from tasks.core.config import deep_merge, parse_sets
    from tasks.plans import resolve_config
    from tasks.registry import run_task

    try:
        require_ray()
    except Exception as exc:  # noqa: BLE001 - the bench says why and stops
        print(f"RESULT fanout skipped: {exc}")
        return
    only = set(args.only.split(","))
    threads = cpu_threads()
    n = args.parallel or max(1, min(threads, 4))
    each = max(1, threads // n)
    overrides = parse_sets(args.set)
    cfg = resolve_config(args.flow, args.profile, overrides)
    samples = cfg.data.n_train  # training images per epoch
    store = args.store or f"file://{tempfile.mkdtemp(prefix='vf-bench-fanout-')}"
    run_task("fashion-mnist.fetch", cfg.data.model_dump(), store)  # shared by every sweep
    sweep = load_flow(args.flow)
    runners = set(args.runners.split(","))
    ray_table = {"resources": {"train": {"cpus": each, "gpus": args.gpu_share},
                               "evaluate": {"cpus": 1, "gpus": args.gpu_share}}}
    harness = contextlib.nullcontext()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.testing.utilities import prefect_test_harness

        harness = prefect_test_harness(server_startup_timeout=120)
    rows: dict[str, tuple[float, Any, dict]] = {}
    with harness:
        def run(kind: str, parallel: int, extra: dict, session=None):
            def go():
                return sweep.with_options(task_runner=task_runner(kind, parallel, session))(
                    profile=args.profile, store=store, refresh=True,
                    overrides=deep_merge(deep_merge(overrides, extra), {"parallel": parallel}))
            return go

        if "sweep" in only and "seq" in runners:
            rows["one after another"] = timed(run("thread", 1, {}))
        if "sweep" in only and "pool" in runners:
            rows[f"thread pool (parallel={n})"] = timed(run("thread", n, {}))
        ray_start = time.perf_counter()
        gpus = 1 if args.gpu_share > 0 else None
        with ray_session(None, num_cpus=n * each, num_gpus=gpus) as session:
            ray_start = time.perf_counter() - ray_start
            import ray

            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
            if "sweep" in only and "ray" in runners:
                rows[f"local Ray ({n * each} CPUs"
                     + (f", {args.gpu_share:g} GPU per cell)" if gpus else ")")] = timed(
                    run("ray", 1, ray_table, session))
            overhead: dict[str, float] = {}
            if "overhead" in only:
                overhead["Prefect + Ray"] = trivial_steps.with_options(
                    task_runner=task_runner("ray", 1, session))(store, args.tasks, n)
        if "overhead" in only:
            overhead[f"Prefect thread pool (parallel={n})"] = trivial_steps.with_options(
                task_runner=task_runner("thread", n))(store, args.tasks, n)
            start = time.perf_counter()
            for i in range(args.tasks):
                run_task("selftest.sleep", {"out": f"runs/bench-trivial/direct-{i}",
                                            "seconds": 0}, store)
            overhead["direct (no Prefect)"] = time.perf_counter() - start

    print(f"\nfan-out: {args.flow} {args.profile} sweep ({cfg.epochs} epochs, "
          f"{samples} training images per epoch), {threads} CPU threads, {n} cells at once "
          f"({threads_env(each)['OMP_NUM_THREADS']} threads each); local Ray started in "
          f"{ray_start:.1f} s (not counted below)")
    base = rows.get("one after another", (None,))[0]
    for name, (sec, result, gpu) in rows.items():
        imgs = images(result, samples)
        util = (f", GPU util mean {gpu['mean']:.0f}% max {gpu['max']:.0f}%" if gpu else "")
        ratio = f"{sec / base:.3f}" if base else "n/a"
        print(f"  {name:<34} {sec:8.1f} s   ratio vs one after another: {ratio}")
        print(f"THROUGHPUT {name}: {len(result['train'])} trainings, {imgs} images in "
              f"{sec:.1f} s wall = {imgs / sec:,.0f} images/s{util}")
    if base:
        print("RESULT sweep " + " ".join(
            f"{name.split(' (')[0].replace(' ', '-')}={sec / base:.3f}"
            for name, (sec, _r, _g) in rows.items()))
    if overhead:
        direct = overhead.get("direct (no Prefect)")
        print(f"\ntrivial steps ({args.tasks} x selftest.sleep 0 s, submitted at once):")
        for name, sec in overhead.items():
            extra = (f"   overhead vs direct: {(sec - direct) / args.tasks * 1000:7.1f} ms/step"
                     if direct is not None and name != "direct (no Prefect)" else "")
            print(f"  {name:<34} {sec:8.2f} s = {sec / args.tasks * 1000:7.1f} ms/step{extra}")
        print("RESULT overhead_ms_per_step " + " ".join(
            f"{name.split(' (')[0].replace(' ', '-')}={sec / args.tasks * 1000:.1f}"
            for name, sec in overhead.items()))


if __name__ == "__main__":
    main()
