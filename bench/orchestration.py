"""Orchestration overhead: a q1-mlp smoke flow under Prefect vs the same task calls directly.

    python -m bench.orchestration [--repeats 2] [--n-train 2000 --n-test 500 --epochs 2]

Both run the same steps (fetch, train and evaluate each cell, report, promote) on a local
store; the Prefect side runs against a temporary local server started once (its start-up
is excluded). A third contender is Prefect's own floor for the same flow shape: a flow of
no-op tasks, one, then the cells' trainings submitted together, then their evaluations,
then two more (15 task runs for the smoke sweep): what any Prefect flow of this shape costs.
``ours / floor`` compares our overhead per task run (flow minus direct calls) with the
floor's whole cost per task run (target <= 1.1). ``--profile`` adds where our overhead
goes (cProfile of one flow run: identity and cache, progress, artifacts, hashing).
The direct calls run in a worker thread, as the flow's steps do; each contender's time
includes the API server's work on its runs after it returned (not left to the next one).
The work inside the tasks is the smoke profile's (2,000 samples, 2 epochs) unless told;
with ``--n-train 200 --epochs 1`` it is a few milliseconds a step, so what the flow adds
is not lost in how much the same trainings slow down beside the API server (on 2 shared
cores that moves by more than the whole floor from one round to the next).
Prefect's flow-run heartbeat (a thread that sleeps in whole seconds, joined when a flow
returns) makes every flow run end on the next whole second since it began: 0-1 s more per
flow run, the floor's as much as ours, whatever the tasks do. That wait moves our flow's
excess over the direct calls by up to a second from round to round (a whole floor), so the
bench turns heartbeats off for every contender (``--heartbeats`` keeps Prefect's default,
every 180 s).
Prints the medians, the overhead per task run and its share of wall time (target
<= 5 %), ours / floor round by round (median and quartiles: the spread this machine
allows), and where it goes: the time inside the task functions (which grows in
the flow when the API server and Prefect's background threads share the CPU, and by the
per-epoch progress-artifact updates) vs outside them (task-run and flow-run state calls,
artifacts, cache look-ups).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import tempfile
import time

from bench.common import print_ratios, race_times

SMOKE = {"n_train": 2000, "n_test": 500, "epochs": 2}  # the task work, unless told


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", action="store_true",
                    help="also profile one flow run: where the time outside the tasks goes")
    for name, default in SMOKE.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=default,
                        help=f"the q1-mlp smoke flow's {name} (default {default})")
    ap.add_argument("--heartbeats", action="store_true",
                    help="keep Prefect's flow-run heartbeats (each flow run then ends on a "
                         "whole second since its start)")
    args = ap.parse_args()
    overrides = {"data": {"n_train": args.n_train, "n_test": args.n_test},
                 "epochs": args.epochs}
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

    cfg = resolve_config("q1-mlp", "smoke", overrides)
    cells, groups = q1_mlp_cells(cfg)
    n_tasks = 1 + 2 * len(cells) + 2
    counter = {"n": 0}

    # The direct calls run in a worker thread of their own, as the flow's steps do (Prefect's
    # task-runner threads): torch's OpenMP threads, once used from the main thread, slow down
    # the same work started from any other thread on this 2-core machine (measured: 1.6-1.8x
    # for 2-thread matrix products), which would bill the flow for the baseline's footprint.
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct")

    def direct():
        worker.submit(direct_calls).result()

    def direct_calls():
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
               overrides=overrides)

    floor_flow = prefect_floor(len(cells))

    spent: dict[str, list[float]] = {"direct task calls": [], "prefect flow": [],
                                     "prefect floor": []}

    settled: dict[str, list[float]] = {name: [] for name in spent}  # server busy after it
    quiet: dict[str, list[float]] = {name: [] for name in spent}  # the window that showed it

    server_cpu: dict[str, list[float]] = {name: [] for name in spent}  # its CPU seconds

    def timed(name, fn):
        def run():
            before, cpu = inside["s"], server_cpu_s()
            fn()
            spent[name].append(inside["s"] - before)
            busy, still = settle_server()
            settled[name].append(busy)
            server_cpu[name].append(server_cpu_s() - cpu)
            quiet[name].append(still)
        return run

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    beats = {} if args.heartbeats else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with prefect_test_harness(server_startup_timeout=120), temporary_settings(updates=beats):
        times = race_times({name: timed(name, fn) for name, fn in
                            (("direct task calls", direct), ("prefect flow", prefect),
                             ("prefect floor", floor_flow))},
                           repeats=args.repeats, alternate=True)
        # each contender's time includes the API server's work on its runs (states, events,
        # logs), which goes on after the flow returns (left out, it lands in the next
        # contender's time: the floor's no-op tasks leave it to whatever runs next), but not
        # the quiet window that showed the server idle
        times = {name: [t - q for t, q in zip(ts, quiet[name][-len(ts):], strict=True)]
                 for name, ts in times.items()}
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        if args.profile:
            profile_flow(prefect)
    print_ratios(f"q1-mlp smoke ({n_tasks} task runs; {args.n_train} training samples, "
                 f"{args.epochs} epochs)", medians, "direct task calls")
    # the overhead round by round (flow minus direct calls, side by side): steadier than a
    # difference of medians when the load moves between rounds
    diffs = [f - d for f, d in zip(times["prefect flow"], times["direct task calls"],
                                   strict=True)]
    extra = statistics.median(diffs)
    # ours / floor round by round (each round's flow minus its direct calls, over its floor)
    per_round = sorted(d / fl for d, fl in zip(diffs, times["prefect floor"], strict=True))
    task_s = {k: statistics.median(v[-args.repeats:]) for k, v in spent.items()}
    for name, sec in task_s.items():
        server = statistics.median(settled[name][-args.repeats:])
        cpu = statistics.median(server_cpu[name][-args.repeats:])
        print(f"  {name:<34} inside the tasks {sec:6.3f} s, outside {medians[name] - sec:6.3f} s"
              f" (of which the API server's work after it returned {server:5.3f} s); the API "
              f"server's CPU for it {cpu:5.3f} s")
    outside = {k: medians[k] - task_s[k] for k in task_s}
    print(f"RESULT overhead split: tasks slower in the flow by "
          f"{task_s['prefect flow'] - task_s['direct task calls']:.2f} s, outside the tasks "
          f"{outside['prefect flow'] - outside['direct task calls']:.2f} s")
    print(f"RESULT Prefect overhead {extra:.2f} s per flow = {extra / n_tasks * 1000:.0f} ms "
          f"per task run = {extra / medians['prefect flow']:.1%} of wall time (target <= 5 %)")
    floor = medians["prefect floor"] / n_tasks
    print(f"RESULT ours / floor: {extra / n_tasks * 1000:.0f} ms / {floor * 1000:.0f} ms per "
          f"task run = {extra / n_tasks / floor:.3f} (target <= 1.1)")
    # the flow's time outside its task functions, over the floor, round by round: free of
    # how long the same task work took this round (the spread of the figure above), but
    # blind to the tasks' own slowdown in the flow (printed in the split above)
    outside_rounds = sorted(
        (f - inside) / fl for f, inside, fl in zip(
            times["prefect flow"], spent["prefect flow"][-args.repeats:],
            times["prefect floor"], strict=True))
    print("  round by round (s): direct, flow (inside its tasks), floor")
    for d, f, inside, fl in zip(times["direct task calls"], times["prefect flow"],
                                spent["prefect flow"][-args.repeats:], times["prefect floor"],
                                strict=True):
        print(f"    {d:6.3f}  {f:6.3f} ({inside:6.3f})  {fl:6.3f}")
    for label, values in (("ours / floor", per_round),
                          ("ours outside the tasks / floor", outside_rounds)):
        if len(values) >= 4:
            q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
            print(f"RESULT {label} round by round: median {q2:.3f}, quartiles "
                  f"{q1:.3f}-{q3:.3f} ({len(values)} rounds)")


def server_cpu_s() -> float:
    """CPU seconds used so far by this process's child processes that serve Prefect's API
    (the temporary server is ``uvicorn`` in a subprocess)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    me = str(os.getpid())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:  # gone meanwhile
            continue
        if fields[1] == me and b"uvicorn" in cmd:  # fields: state, ppid, ...
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def settle_server(window_s: float = 0.2, busy_s: float = 0.01, limit_s: float = 30.0
                  ) -> tuple[float, float]:
    """Wait until the API server has finished the work the last contender left it (less than
    ``busy_s`` of CPU in a ``window_s`` window). Returns how long it was still busy and the
    quiet window that showed it idle (not to be counted)."""
    start = last_busy = time.perf_counter()
    before = server_cpu_s()
    while last_busy - start < limit_s:
        time.sleep(window_s)
        now, at = server_cpu_s(), time.perf_counter()
        if now - before < busy_s:
            return last_busy - start, at - last_busy
        before, last_busy = now, at
    return last_busy - start, 0.0


def prefect_floor(n_cells: int):
    """A flow of the sweep's shape whose tasks do nothing: 1, n submitted, n submitted, 2."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE)
    def noop(i: int) -> int:
        return i

    @flow(name="floor")
    def floor() -> None:
        noop(0)
        first = [noop.submit(i) for i in range(n_cells)]
        second = [noop.submit(f) for f in first]
        for f in second:
            f.result()
        noop(1)
        noop(2)

    return floor


def profile_flow(fn) -> None:
    """cProfile one flow run; print the cumulative time of our per-step machinery."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    wanted = ("of_step", "components", "lookup", "record", "_claim_prefix", "identity_of",
              "step_sink", "update_progress_artifact", "create_progress_artifact",
              "create_table_artifact", "create_markdown_artifact", "finish", "digest",
              "reuse", "run_task", "launch")
    rows = []
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if name in wanted and ("visionflows" in file or "/tasks/" in file or "/flows/" in file
                               or "prefect/artifacts" in file):
            rows.append((ct, f"{name} ({file.rsplit('/', 2)[-2]}/{file.rsplit('/', 1)[-1]})"))
    print("profile of one flow run (cumulative seconds, includes callees):")
    for ct, label in sorted(rows, reverse=True):
        print(f"  {ct:7.3f} s  {label}")


if __name__ == "__main__":
    main()
