"""How a flow runs its steps: each one submitted to the flow run's Prefect task runner
(``.submit()``), with what the question's resource table says it needs.

- On the thread pool (``ThreadPoolTaskRunner``, the default) at most ``parallel`` steps
  are in flight (the flow config's key; 1: one after another). Concurrent trainings need
  processes of their own (``local`` becomes ``subprocess``), each with 1/``parallel`` of
  the CPU threads, so results equal a one-after-another run at the same thread count.
- On Ray (``RayTaskRunner``) every step runs in a Ray worker with ``remote_options`` from
  the resource table: CPUs, memory, GPUs (0.25: four steps share a GPU), and as many Ray
  retries after a lost worker as the step's Prefect retries. Ray, not ``parallel``,
  decides what runs at once. A step uses as many threads as it asks CPUs.

The step's resources also set the launchers' limits (time under every launcher, local
included; memory, ``/dev/shm``, CPUs, GPU requests under subprocess and docker) unless
``VF_TASK_*`` / ``VF_DOCKER_*`` say otherwise.

**The flow's time limit** (the table's ``flow_time_limit_s``, counted from the flow run's
start): no step is submitted past it (``TaskTimeoutError``), and each step's time limit is
cut to what is left of it when the step is submitted. On the thread pool a step is
submitted when a slot frees, so that is when it starts: a flow run under any launcher ends
within its limit plus at most one step's wait for its inputs.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed

from flows.common import retrying_step
from flows.runners import fits  # noqa: F401 - here too: where a step fits a node
from tasks.core.config import Config
from tasks.core.errors import ConfigError, TaskTimeoutError
from tasks.core.resources import Resources, ResourceTable
from tasks.core.settings import raw

# Prefect retries per step kind, under the one retry rule (flows.common.worth_retrying):
# fetches retry store and network trouble; the others a crash or a lost Ray worker (a
# training resumes from its stored last.pt). A bad config or input is never retried.
RETRIES = {"fetch": 2, "train": 1, "evaluate": 1, "report": 1}


def cpu_threads() -> int:
    """CPU threads this process may use: ``OMP_NUM_THREADS`` when set, else its CPUs."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_env(n: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}


def packed_env(parallel: int, total: int | None = None) -> dict[str, str]:
    """Thread counts for one of ``parallel`` concurrent trainings: a 1/``parallel`` share of
    the CPU threads (at least one), so the runs do not oversubscribe the cores."""
    return threads_env(max(1, (total or cpu_threads()) // parallel))


def packed_launcher(launcher: str) -> str:
    """Concurrent trainings need processes of their own: ``local`` becomes ``subprocess``."""
    return "subprocess" if launcher == "local" else launcher


def step_threads(res: Resources) -> int:
    """Threads of a step on Ray: the CPUs it asks for (at least one)."""
    return max(1, int(res.cpus))


def ray_options(res: Resources, retries: int) -> dict[str, Any]:
    """``prefect_ray.remote_options`` for a step: its CPUs, GPUs and memory; Ray runs it
    again after a lost worker as often as Prefect would retry it."""
    return {"num_cpus": res.cpus, "num_gpus": res.gpus, "memory": res.memory_bytes,
            "max_retries": retries, "retry_exceptions": False}


def is_ray_runner(runner: Any) -> bool:
    """prefect-ray's runner or a subclass (flows.ray_runner), without importing it."""
    return any(c.__module__.startswith("prefect_ray") for c in type(runner).__mro__)


def describe_runner(runner: Any, parallel: int) -> dict[str, Any]:
    """What the flow manifest records about where its steps ran."""
    if is_ray_runner(runner):
        from flows.runners import current_session

        session = current_session()
        out = {"kind": "ray", "address": getattr(runner, "address", None) or "local",
               "nodes": len(session.nodes) if session else None}
        job = (session.job_id if session else None) or raw("VF_RAY_JOB_ID")
        if job:  # submitted: the Ray job it ran as
            out["job_id"] = job
        return out
    return {"kind": "thread", "parallel": parallel}


def _done(future: PrefectFuture) -> bool:
    wrapped = getattr(future, "wrapped_future", None)
    return wrapped.done() if wrapped is not None else future.state.is_final()


def flow_deadline(limit_s: float | None, ctx: FlowRunContext) -> float | None:
    """When the flow run must be done (epoch seconds): its start plus ``limit_s``."""
    if limit_s is None:
        return None
    run = getattr(ctx, "flow_run", None)
    started = getattr(run, "start_time", None) if run is not None else None
    start = started.timestamp() if started is not None else time.time()
    return min(start, time.time()) + limit_s


class Steps:
    """Submits a flow's steps to its task runner; see the module docstring.

    ``kinds`` maps task names to step kinds (the question's ``STEP_KINDS``); ``cfg`` is the
    flow config (its ``resources`` table and ``parallel``).
    """

    def __init__(self, cfg: Config, store: str, launcher: str, kinds: dict[str, str],
                 refresh: bool | None = None):
        ctx = FlowRunContext.get()
        if ctx is None:
            raise RuntimeError("Steps runs inside a flow")
        self.runner = ctx.task_runner
        self.on_ray = is_ray_runner(self.runner)
        self.table: ResourceTable = getattr(cfg, "resources", None) or ResourceTable()
        self.parallel = int(getattr(cfg, "parallel", 1) or 1)
        self.store, self.launcher, self.kinds, self.refresh = store, launcher, kinds, refresh
        self._in_flight: list[PrefectFuture] = []
        self._checked: set[str] = set()
        self.flow_name = ctx.flow.name if ctx.flow else "the flow"
        self.deadline = flow_deadline(self.table.flow_time_limit_s, ctx)
        self.log = get_run_logger()
        if self.on_ray:  # a given cluster: a step no node holds is refused now (a CLI run
            from flows.runners import current_session  # checked before its flow run began)

            session = current_session()
            if session is not None:
                session.check_fit(ctx.flow.name, cfg)
        if self.on_ray and self.parallel > 1:
            self.log.info("on Ray the resource table decides what runs at once "
                          "(parallel=%d does not apply)", self.parallel)

    @property
    def sequential(self) -> bool:
        """Whether one step runs at a time (then a step may report its own progress)."""
        return not self.on_ray and self.parallel == 1

    def describe(self) -> dict[str, Any]:
        return describe_runner(self.runner, self.parallel)

    def kind(self, task_name: str) -> str:
        try:
            return self.kinds[task_name]
        except KeyError:
            raise ConfigError(f"task {task_name} has no step kind in this question's "
                              "STEP_KINDS (tasks/q<N>/plan.py)") from None

    def submit(self, name: str, task_name: str, cfg: dict[str, Any], *,
               slot: str | None = None, progress: dict | None = None,
               upstream: dict[str, Any] | None = None) -> PrefectFuture:
        """Submit one step; returns its future (the step's manifest as a dict).

        ``upstream`` maps config keys to earlier steps' futures: the step waits for them and
        gets their output prefix (``{"train": future}`` sets ``cfg["train"]``).
        """
        kind = self.kind(task_name)
        res = self.within_flow_limit(name, self.table.for_kind(kind))
        retries = RETRIES[kind]
        launcher, env = self.launcher, None
        if self.on_ray:
            res = self._fitted(kind, res)
            env = threads_env(step_threads(res))
        elif self.parallel > 1 and kind == "train":
            launcher, env = packed_launcher(self.launcher), packed_env(self.parallel)
        step = retrying_step(name, retries)
        params = {"slot": slot, "refresh": self.refresh,
                  "progress": progress if self.sequential else None, "env": env,
                  "resources": res.model_dump(mode="json"), "upstream": upstream}
        if self.on_ray:
            from prefect_ray.context import remote_options

            ctx = remote_options(**ray_options(res, retries))
        else:
            self._wait_for_slot()
            ctx = contextlib.nullcontext()
        with ctx:
            future = step.submit(name, task_name, cfg, self.store, launcher, **params)
        if not self.on_ray:
            self._in_flight.append(future)
        return future

    def within_flow_limit(self, name: str, res: Resources) -> Resources:
        """``res`` with its time limit cut to what is left of the flow's; past the flow's
        limit nothing more starts."""
        if self.deadline is None:
            return res
        left = self.deadline - time.time()
        if left <= 0:
            raise TaskTimeoutError(
                f"{self.flow_name} ran past its time limit of "
                f"{self.table.flow_time_limit_s:g}s; step {name} was not started. Give the "
                "flow more time: --set resources.flow_time_limit_s=SECONDS ('null': none)")
        if res.time_limit_s is None or res.time_limit_s > left:
            res = res.model_copy(update={"time_limit_s": left})
        return res

    def run(self, name: str, task_name: str, cfg: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """Submit one step and wait for its manifest."""
        return self.submit(name, task_name, cfg, **kw).result()

    def _wait_for_slot(self) -> None:
        """Block until fewer than ``parallel`` steps are in flight; a failed one raises."""
        while True:
            done = [f for f in self._in_flight if _done(f)]
            for f in done:
                self._in_flight.remove(f)
                f.result()  # a failure stops the fan-out: nothing new starts
            if len(self._in_flight) < self.parallel:
                return
            next(as_completed(list(self._in_flight)))

    def _fitted(self, kind: str, res: Resources) -> Resources:
        """A step no Ray node can hold would wait forever. On the Ray started for this run
        (this machine) it runs with what the machine has, like on the thread pool; on a
        given cluster it waits (an autoscaler may add a node) after a warning."""
        from flows.runners import current_session

        session = current_session()
        msg = unfit(kind, res, session.nodes) if session is not None else None
        if msg is None or session is None:
            return res
        if not session.local:
            if kind not in self._checked:
                self.log.warning("%s; they wait until the cluster has such a node", msg)
        else:
            res = clamped(res, session.nodes[0])
            if kind not in self._checked:
                self.log.warning("%s; on this machine's Ray they run with %g CPUs, %g GPUs "
                                 "and %s memory", msg, res.cpus, res.gpus, res.memory)
        self._checked.add(kind)
        return res


def clamped(res: Resources, node: dict[str, float]) -> Resources:
    """``res`` cut down to what ``node`` offers."""
    memory = min(res.memory_bytes, int(node.get("memory", res.memory_bytes)))
    gpus = min(res.gpus, float(node.get("GPU", 0)))
    return res.model_copy(update={
        "cpus": min(res.cpus, max(float(node.get("CPU", 1)), 0.01)),
        "gpus": float(int(gpus)) if gpus > 1 else gpus, "memory": f"{memory // 2**20}m"})


def unfit(kind: str, res: Resources, nodes: list[dict[str, float]]) -> str | None:
    """Why no node can run a step of ``kind`` (with the fix), or None when one can."""
    if not nodes or any(fits(res, n) for n in nodes):
        return None
    biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
    return (f"{kind} steps ask for {res.cpus:g} CPUs, {res.gpus:g} GPUs and {res.memory} "
            f"memory, more than any Ray node offers (the largest: {biggest.get('CPU', 0):g} "
            f"CPUs, {biggest.get('GPU', 0):g} GPUs, {biggest.get('memory', 0) / 2**30:.1f} "
            f"GiB); lower the table (--set resources.{kind}.cpus=... / .gpus=... / "
            ".memory=...)")
