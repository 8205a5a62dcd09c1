"""The work pools (``infra/work-pools.yaml``, the one definition) and what a flow run on each
asks for.

- ``load_pools()``: every pool's name, type, flow-run image, base job template, namespace.
- ``job_needs(flow)``: one container or Kubernetes Job runs a whole flow run, so it needs
  what the flow's largest step needs, from the question's resource table
  (``tasks/q<N>/plan.py``: ``RESOURCES`` for the step kinds in ``STEP_KINDS``). GPUs there
  are whole: a step asking for a share of one (Q1: 0.25) gets one GPU for the run, and the
  sweep packs ``floor(1 / share)`` cells on it at once (the flow's ``parallel``), each with
  its own CPUs, memory and ``/dev/shm``. Its scratch disk is the largest step's (times the
  cells packed), its time limit the table's ``flow_time_limit_s``.
- ``job_variables(flow, pool)``: those needs as the pool's job variables.
- ``deploy_values()``: the ``prefect.yaml`` build step (id ``vf``) that hands the task image
  of this code and every container deployment's job variables to ``prefect deploy``.

    python -m flows.work_pools list                      # the pools
    python -m flows.work_pools show [--markdown|--limits]  # job variables of every deployment
    python -m flows.work_pools create [--pool NAME]      # create/update pools (PREFECT_API_URL)
    python -m flows.work_pools store-block               # Secret block visionflows-store
    python -m flows.work_pools check-server-secrets      # no example auth/database password
    python -m flows.work_pools get POOL FIELD            # one field, for shell scripts

Reads the definition from the project checkout (``VF_PROJECT_DIR``, else this file's
checkout, else the current folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.core.errors import ConfigError
from tasks.core.settings import raw, setting

POOLS_FILE = Path("infra") / "work-pools.yaml"
TYPES = ("process", "docker", "kubernetes")
TASK_IMAGE = "task"  # flow_run_image: the task image of this code
# The Secret block (docker pool) and the Kubernetes Secret (k8s pool) with the store settings.
STORE_SECRET = "visionflows-store"
STORE_KEYS = ("VF_STORE", "VF_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# What GPU nodes are commonly tainted with (NVIDIA GPU operator, GKE, AKS node pools).
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# Values from infra/.env.example (and MinIO's own default) that must never reach a server.
EXAMPLE_MARKERS = ("change-me", "minioadmin")
MIN_SECRET_LEN = 12
# A Kubernetes Job's activeDeadlineSeconds is the flow's time limit plus this margin: the
# deadline counts from the Job's start, so it also covers scheduling, pulling a multi-GB
# task image and the flow's own start, and lets the flow's own limit (flows.fanout) fire
# first and record why.
DEADLINE_MARGIN_S = 1800
# Container logs and anything else outside /tmp on the node's disk: the ephemeral-storage
# limit is the scratch emptyDir's size limit plus this.
LOG_ALLOWANCE = 1 << 30
# What every worker (and so every flow run it starts: Prefect hands the worker's settings on)
# runs with. With its database down or restarting the Prefect server answers some calls 500
# (a refused connection is not among the errors it maps to 503), and Prefect's client retries
# only 429/502/503 by default: a flow run whose state update met one crashed. These make the
# client retry those too, 6 times with 2, 4, ... 64 s back-off (about 2 min in all), so a
# database that is back within that is a pause, not a crashed run; tests/test_operations.py
# kills PostgreSQL mid-run to prove it.
RUN_CLIENT_ENV = {"PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,502,504",
                  "PREFECT_CLIENT_MAX_RETRIES": "6"}


@dataclass(frozen=True)
class WorkPool:
    name: str
    type: str
    deployment: str  # the name of its deployments in prefect.yaml
    flow_run_image: str | None = None  # "task": the task image of this code
    base_job_template: str | None = None  # a JSON file, relative to the project root
    namespace: str | None = None  # kubernetes
    worker: str = ""

    def template(self, root: Path | None = None) -> dict[str, Any] | None:
        """The pool's base job template, or None for the worker type's default."""
        if self.base_job_template is None:
            return None
        return json.loads((project_root(root) / self.base_job_template).read_text())


@dataclass(frozen=True)
class Pools:
    worker_image: str
    pools: dict[str, WorkPool]

    def get(self, name: str) -> WorkPool:
        if name not in self.pools:
            raise ConfigError(f"unknown work pool {name!r}; {POOLS_FILE} defines "
                              f"{', '.join(self.pools)}")
        return self.pools[name]


def project_root(root: Path | str | None = None) -> Path:
    """The checkout holding ``infra/work-pools.yaml``."""
    candidates = [Path(root)] if root else [
        *([Path(raw("VF_PROJECT_DIR"))] if raw("VF_PROJECT_DIR") else []),
        Path(__file__).resolve().parent.parent, Path.cwd()]
    for c in candidates:
        if (c / POOLS_FILE).is_file():
            return c
    raise ConfigError(f"{POOLS_FILE} not found in {', '.join(map(str, candidates))}: run from "
                      "the project checkout or set VF_PROJECT_DIR")


def load_pools(root: Path | str | None = None) -> Pools:
    """The work pools as ``infra/work-pools.yaml`` defines them (validated)."""
    path = project_root(root) / POOLS_FILE
    data = yaml.safe_load(path.read_text())
    pools: dict[str, WorkPool] = {}
    for entry in data.get("pools") or []:
        unknown = set(entry) - set(WorkPool.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{path}: pool {entry.get('name')!r}: unknown keys "
                              f"{', '.join(sorted(unknown))}")
        pool = WorkPool(**entry)
        if pool.type not in TYPES:
            raise ConfigError(f"{path}: pool {pool.name!r}: type {pool.type!r} is not one of "
                              f"{', '.join(TYPES)}")
        if pool.flow_run_image not in (None, TASK_IMAGE):
            raise ConfigError(f"{path}: pool {pool.name!r}: flow_run_image must be "
                              f"{TASK_IMAGE!r} or null")
        if pool.name in pools:
            raise ConfigError(f"{path}: pool {pool.name!r} is defined twice")
        pools[pool.name] = pool
    if not data.get("worker_image"):
        raise ConfigError(f"{path}: worker_image is missing")
    return Pools(worker_image=data["worker_image"], pools=pools)


# -- what a flow run needs ---------------------------------------------------------------


@dataclass(frozen=True)
class JobNeeds:
    """What one flow run's container or pod needs (sizes in bytes)."""

    gpus: int  # whole GPUs
    gpu_share: float  # the largest GPU share one step asks for
    pack: int  # steps sharing the GPU at once (the flow's ``parallel``); 1: one at a time
    cpus: float
    memory: int  # a step's memory plus its /dev/shm (memory-backed: it counts in the limit)
    shm: int
    scratch: int = 10 << 30  # disk under /tmp
    time_limit_s: float | None = None  # the whole flow run (the table's flow_time_limit_s)

    @property
    def active_deadline_s(self) -> int | None:
        """The Kubernetes Job's activeDeadlineSeconds: the time limit plus the margin."""
        if self.time_limit_s is None:
            return None
        return math.ceil(self.time_limit_s) + DEADLINE_MARGIN_S


# The final report flow's table (it has no question): one report step, two hours at most.
REPORT_TABLE = {"flow_time_limit_s": 2 * 3600.0}


def image_pull_secrets(env: dict[str, str] | None = None) -> list[dict[str, str]]:
    """``VF_IMAGE_PULL_SECRETS`` (comma-separated Secret names) as the pod's
    ``imagePullSecrets``: a private registry without them means ImagePullBackOff."""
    env = os.environ if env is None else env
    names = [n.strip() for n in (raw("VF_IMAGE_PULL_SECRETS", env) or "").split(",")
             if n.strip()]
    for n in names:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", n):
            raise ConfigError(f"VF_IMAGE_PULL_SECRETS: {n!r} is not a Kubernetes Secret name "
                              "(lower-case letters, digits, '-' and '.')")
    return [{"name": n} for n in names]


def _table_and_kinds(flow: str, profile: str, overrides: dict[str, Any] | None):
    from tasks.core.resources import ResourceTable
    from tasks.plans import resolve_config, step_kinds
    from tasks.questions import question_flows

    if flow == "report":  # the final report: one report step, the table's default
        if overrides and set(overrides) - {"resources"}:
            raise ConfigError("the report flow takes only resources overrides")
        table = ResourceTable.model_validate({**REPORT_TABLE,
                                              **(overrides or {}).get("resources", {})})
        return table, ("report",), False
    if flow not in question_flows():
        raise ConfigError(f"unknown flow {flow!r}; known: report, "
                          f"{', '.join(question_flows())}")
    cfg = resolve_config(flow, profile, overrides)
    kinds = tuple(sorted(set(step_kinds(flow).values())))
    return cfg.resources, kinds, "parallel" in type(cfg).model_fields


def job_needs(flow: str, profile: str = "full",
              overrides: dict[str, Any] | None = None) -> JobNeeds:
    """The needs of one flow run: the largest of its steps, from the question's resource table.

    A step asking for a share of a GPU (0 < gpus < 1) makes the run take one whole GPU; when
    the flow packs cells (it has ``parallel``), ``floor(1 / share)`` of them run at once on
    it, so such steps count that many times for CPUs, memory and ``/dev/shm``.
    """
    table, kinds, packs = _table_and_kinds(flow, profile, overrides)
    steps = [table.for_kind(k) for k in kinds]
    share = max(r.gpus for r in steps)
    shared = [r for r in steps if 0 < r.gpus < 1]
    pack = math.floor(1 / max(r.gpus for r in shared)) if packs and shared else 1

    def times(r) -> int:
        return pack if 0 < r.gpus < 1 else 1

    return JobNeeds(
        gpus=max(math.ceil(r.gpus) for r in steps),
        gpu_share=share,
        pack=pack,
        cpus=max(r.cpus * times(r) for r in steps),
        memory=max((r.memory_bytes + r.shm_bytes) * times(r) for r in steps),
        shm=max(r.shm_bytes * times(r) for r in steps),
        scratch=max(r.scratch_bytes * times(r) for r in steps),
        time_limit_s=table.flow_time_limit_s,
    )


def k8s_quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity, rounded up to whole MiB (``40Gi``, ``1536Mi``)."""
    mib = -(-size // (1 << 20))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def k8s_cpu(cpus: float) -> str:
    """CPUs as a Kubernetes quantity: ``8``, ``1500m``."""
    milli = math.ceil(round(cpus * 1000, 6))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def docker_size(size: int) -> str:
    """Bytes as a Docker size, rounded up to whole MiB (``40960m``)."""
    return f"{-(-size // (1 << 20))}m"


def job_variables(flow: str, pool: WorkPool, root: Path | None = None,
                  needs: JobNeeds | None = None) -> dict[str, Any]:
    """The job variables of ``flow``'s deployment on ``pool`` (none on a process pool)."""
    needs = needs or job_needs(flow)
    if pool.type == "kubernetes":
        return {"gpu_count": needs.gpus, "cpu": k8s_cpu(needs.cpus),
                "memory": k8s_quantity(needs.memory), "shm_size": k8s_quantity(needs.shm),
                "scratch_size": k8s_quantity(needs.scratch),
                "ephemeral_storage": k8s_quantity(needs.scratch + LOG_ALLOWANCE),
                "active_deadline_seconds": needs.active_deadline_s,
                "image_pull_secrets": image_pull_secrets(),
                "tolerations": [dict(GPU_TOLERATION)] if needs.gpus else []}
    if pool.type == "docker":
        template = pool.template(root) or {}
        base = (template.get("variables", {}).get("properties", {})
                .get("container_create_kwargs", {}).get("default") or {})
        kwargs = {**base, "shm_size": docker_size(needs.shm),
                  "nano_cpus": int(round(needs.cpus * 1e9))}
        if needs.gpus:  # as `docker run --gpus N`: the engine picks the driver serving "gpu"
            kwargs["device_requests"] = [{"count": needs.gpus, "capabilities": [["gpu"]]}]
        memory = docker_size(needs.memory)
        return {"mem_limit": memory, "memswap_limit": memory,  # no swap beyond the limit
                "container_create_kwargs": kwargs}
    return {}


def flow_overrides(needs: JobNeeds) -> dict[str, Any]:
    """The flow-config overrides a container deployment runs with: packing where it packs."""
    return {"parallel": needs.pack} if needs.pack > 1 else {}


def deploy_values(root: str | None = None) -> dict[str, Any]:
    """``prefect.yaml`` build step (``flows.work_pools.deploy_values``, id ``vf``).

    Returns ``image`` (the task image of this code, ``VF_IMAGE_REPOSITORY`` honoured),
    ``overrides.<flow>`` and ``<pool>.<flow>.<job variable>`` for every pool whose flow runs
    use the task image.
    """
    from flows.deployments import nightly
    from flows.launchers.images import default_image

    pools = load_pools(root)
    out: dict[str, Any] = {"image": default_image(), "overrides": {}}
    table = nightly()
    needs = {flow: job_needs(flow) for flow in table}
    for flow, n in needs.items():  # the nightly switches (fail_on_regression) and packing
        out["overrides"][flow] = {**table[flow].overrides, **flow_overrides(n)}
    for pool in pools.pools.values():
        if pool.flow_run_image == TASK_IMAGE:
            out[pool.name] = {flow: job_variables(flow, pool, root, n)
                              for flow, n in needs.items()}
    return out


def needs_table() -> str:
    """A Markdown table of every flow's needs (docs/deployment.md shows it)."""
    from flows.deployments import nightly

    rows = ["| flow | GPUs | GPU share of a step | cells at once | CPUs | memory (incl. /dev/shm) "
            "| /dev/shm |", "|---|---|---|---|---|---|---|"]
    for flow in nightly():
        n = job_needs(flow)
        rows.append(f"| {flow} | {n.gpus} | {n.gpu_share:g} | {n.pack} | {k8s_cpu(n.cpus)} | "
                    f"{k8s_quantity(n.memory)} | {k8s_quantity(n.shm)} |")
    return "\n".join(rows)


def limits_table() -> str:
    """A Markdown table of every flow's time limit, Job deadline and scratch disk
    (docs/deployment.md shows it)."""
    from flows.deployments import nightly

    rows = ["| flow | flow time limit | Job activeDeadlineSeconds | scratch (/tmp sizeLimit) "
            "| ephemeral-storage |", "|---|---|---|---|---|"]
    for flow in nightly():
        n = job_needs(flow)
        hours = "none" if n.time_limit_s is None else f"{n.time_limit_s / 3600:g} h"
        rows.append(f"| {flow} | {hours} | {n.active_deadline_s} | {k8s_quantity(n.scratch)} "
                    f"| {k8s_quantity(n.scratch + LOG_ALLOWANCE)} |")
    return "\n".join(rows)


# -- secrets and pools on a Prefect server -------------------------------------------------


def check_secret(name: str, value: str | None) -> str:
    """``value``, unless it is unset, an example value or shorter than 12 characters."""
    if not value:
        raise ConfigError(f"{name} is not set (infra/.env)")
    low = value.lower()
    if any(m in low for m in EXAMPLE_MARKERS):
        raise ConfigError(f"{name} is still the example value: set a secret of your own in "
                          "infra/.env")
    if len(value) < MIN_SECRET_LEN:
        raise ConfigError(f"{name} is shorter than {MIN_SECRET_LEN} characters")
    return value


def store_settings(env: dict[str, str] | None = None) -> dict[str, str]:
    """The store settings of flow-run containers, from ``infra/.env``'s variables."""
    env = dict(os.environ if env is None else env)
    bucket = setting("VF_BUCKET", env)
    secret = check_secret("VF_TASKS_SECRET_KEY", raw("VF_TASKS_SECRET_KEY", env))
    access = raw("VF_TASKS_ACCESS_KEY", env)
    if not access:
        raise ConfigError("VF_TASKS_ACCESS_KEY is not set (infra/.env)")
    return {"VF_STORE": raw("VF_STORE", env) or f"s3://{bucket}/vf",
            "VF_S3_ENDPOINT_URL": raw("VF_S3_ENDPOINT_URL", env) or "http://127.0.0.1:9000",
            "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}


def check_server_secrets(env: dict[str, str] | None = None) -> None:
    """The Prefect server's secrets as the compose stack sets them: the API's basic-auth
    password (``PREFECT_API_AUTH_STRING``, ``user:password``) and the database password,
    each refused when it is an example or short value (unset: nothing to check)."""
    env = dict(os.environ if env is None else env)
    if env.get("PREFECT_API_AUTH_STRING"):
        user, sep, password = env["PREFECT_API_AUTH_STRING"].partition(":")
        if not sep or not user:
            raise ConfigError("PREFECT_API_AUTH_STRING must be user:password "
                              "(PREFECT_AUTH_STRING in infra/.env)")
        check_secret("PREFECT_AUTH_STRING's password", password)
    if env.get("PREFECT_DB_PASSWORD"):
        check_secret("PREFECT_DB_PASSWORD", env["PREFECT_DB_PASSWORD"])


async def save_store_block(settings: dict[str, str]) -> None:
    from prefect.blocks.system import Secret

    await Secret(value=settings).save(STORE_SECRET, overwrite=True)


async def create_pools(pools: list[WorkPool], root: Path | None = None,
                       echo=print) -> None:
    """Create each pool with its template, or update the template of one that exists.

    A pool that exists with another type is an error: a worker of the defined type would
    never pick up its runs (what happened when compose ran a docker worker on a pool the
    setup script had created as a process pool).
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.base import BaseWorker

    async with get_client() as client:
        for pool in pools:
            template = pool.template(root)
            if template is None:
                template = BaseWorker.get_worker_class_from_type(
                    pool.type).get_default_base_job_template()
            try:
                existing = await client.read_work_pool(pool.name)
            except ObjectNotFound:
                existing = None
            if existing is None:
                await client.create_work_pool(WorkPoolCreate(
                    name=pool.name, type=pool.type, base_job_template=template))
                echo(f"created work pool {pool.name} ({pool.type})")
            elif existing.type != pool.type:
                raise ConfigError(
                    f"work pool {pool.name} exists with type {existing.type!r}, but "
                    f"{POOLS_FILE} defines it as {pool.type!r}: delete it "
                    f"(prefect work-pool delete {pool.name}) and run this again")
            else:
                await client.update_work_pool(pool.name, WorkPoolUpdate(
                    base_job_template=template))
                echo(f"updated work pool {pool.name} ({pool.type})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.work_pools",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="name, type, flow-run image, template of every pool")
    show = sub.add_parser("show", help="job variables of every container deployment (JSON)")
    show.add_argument("--markdown", action="store_true", help="the needs table instead")
    show.add_argument("--limits", action="store_true",
                      help="the time limits and scratch disk table instead")
    create = sub.add_parser("create", help="create or update the pools on PREFECT_API_URL")
    create.add_argument("--pool", action="append", help="only this pool (repeatable)")
    sub.add_parser("store-block", help="save the Secret block visionflows-store from "
                   "VF_BUCKET, VF_TASKS_ACCESS_KEY, VF_TASKS_SECRET_KEY, VF_S3_ENDPOINT_URL")
    sub.add_parser("check-server-secrets", help="refuse example or short values of "
                   "PREFECT_API_AUTH_STRING's password and PREFECT_DB_PASSWORD, where set")
    get = sub.add_parser("get", help="one field of one pool (worker_image: no pool)")
    get.add_argument("pool")
    get.add_argument("field", nargs="?")
    args = parser.parse_args(argv)
    try:
        pools = load_pools()
        if args.cmd == "list":
            for p in pools.pools.values():
                print(f"{p.name}\t{p.type}\t{p.flow_run_image or '-'}\t"
                      f"{p.base_job_template or '-'}")
        elif args.cmd == "show":
            print(limits_table() if args.limits else needs_table() if args.markdown
                  else json.dumps(deploy_values(), indent=2))
        elif args.cmd == "create":
            chosen = [pools.get(n) for n in args.pool] if args.pool else list(
                pools.pools.values())
            asyncio.run(create_pools(chosen))
        elif args.cmd == "store-block":
            asyncio.run(save_store_block(store_settings()))
            print(f"saved Secret block {STORE_SECRET} ({', '.join(STORE_KEYS)})")
        elif args.cmd == "check-server-secrets":
            check_server_secrets()
            print("server secrets ok")
        elif args.cmd == "get":
            if args.pool == "worker_image":
                print(pools.worker_image)
            else:
                value = getattr(pools.get(args.pool), args.field or "name", None)
                if value is None and args.field not in WorkPool.__dataclass_fields__:
                    raise ConfigError(f"unknown field {args.field!r}; use one of "
                                      f"{', '.join(WorkPool.__dataclass_fields__)}")
                print("" if value is None else value)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
