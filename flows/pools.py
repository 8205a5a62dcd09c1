"""The work pools, defined once in ``prefect.yaml`` (``definitions.work_pools``: name, type,
worker image, base job template), and the command that creates them on a Prefect server.

``infra/setup-work-pools.sh`` runs ``python -m flows.pools apply``; the deployments in
``prefect.yaml`` point at the same YAML anchors; ``infra/docker-compose.yml`` and
``infra/k8s/worker.yaml`` start workers for them (``tests/test_work_pools.py`` fails when
any of them disagrees with the definition).

    python -m flows.pools list                 # name, type, worker image, template
    python -m flows.pools apply [POOL ...]     # create or update pools (PREFECT_API_URL)
    python -m flows.pools deployments [POOL ...]   # their deployments, as FLOW/NAME
    python -m flows.pools check                # compose, k8s worker and deployments agree
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = ROOT / "prefect.yaml"
TYPES = ("process", "docker", "kubernetes")
# What the docker pool's default env reads at run time (infra/docker/base-job-template.json),
# and the environment variable each is created from by `apply`.
DOCKER_STORE_VARIABLES = {"vf_store": "VF_STORE", "vf_s3_endpoint_url": "VF_S3_ENDPOINT_URL"}
DOCKER_STORE_SECRETS = {"vf-tasks-access-key": "VF_TASKS_ACCESS_KEY",
                        "vf-tasks-secret-key": "VF_TASKS_SECRET_KEY"}


@dataclass(frozen=True)
class WorkPool:
    key: str  # process | docker | kubernetes: the entry in definitions.work_pools
    name: str
    type: str
    worker_image: str | None = None  # the image a worker for this pool runs (compose, k8s)
    base_job_template: str | None = None  # a JSON file, relative to the project root

    def template(self, root: Path = ROOT) -> dict[str, Any] | None:
        if self.base_job_template is None:
            return None
        return json.loads((root / self.base_job_template).read_text())


def _spec(path: Path | str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def load_pools(path: Path | str = PREFECT_YAML) -> dict[str, WorkPool]:
    """Every pool of ``definitions.work_pools`` in ``prefect.yaml``, by key."""
    spec = _spec(path)
    pools = (spec.get("definitions") or {}).get("work_pools")
    if not isinstance(pools, dict) or not pools:
        raise ConfigError(f"{path}: no definitions.work_pools; each pool needs a name and type")
    out = {}
    for key, p in pools.items():
        unknown = set(p) - {"name", "type", "worker_image", "base_job_template"}
        if unknown or not p.get("name") or p.get("type") not in TYPES:
            raise ConfigError(f"{path}: definitions.work_pools.{key} needs a name and a type "
                              f"({', '.join(TYPES)}); unknown keys: {sorted(unknown) or 'none'}")
        out[key] = WorkPool(key=key, **p)
    return out


# The files that start a worker for a pool: (file, how to find the worker in it).
COMPOSE = "infra/docker-compose.yml"
K8S_WORKER = "infra/k8s/worker.yaml"
DEPLOYMENT_POOL = {"nightly": "process", "nightly-docker": "docker", "nightly-k8s": "kubernetes"}


def _worker_command(cmd: list[str]) -> dict[str, str | None]:
    def opt(name: str) -> str | None:
        return cmd[cmd.index(name) + 1] if name in cmd else None

    return {"pool": opt("--pool"), "type": opt("--type")}


def disagreements(root: Path = ROOT) -> list[str]:
    """Where ``prefect.yaml``'s deployments, ``infra/docker-compose.yml`` and
    ``infra/k8s/worker.yaml`` disagree with ``definitions.work_pools`` (empty: they agree)."""
    import yaml

    pools = load_pools(root / "prefect.yaml")
    problems = []
    docs = [("compose service prefect-worker", pools.get("docker"), yaml.safe_load(
        (root / COMPOSE).read_text())["services"]["prefect-worker"], "command"),
            ("infra/k8s/worker.yaml", pools.get("kubernetes"), next(
                d["spec"]["template"]["spec"]["containers"][0] for d in yaml.safe_load_all(
                    (root / K8S_WORKER).read_text()) if d and d["kind"] == "Deployment"),
             "command")]
    for what, pool, container, key in docs:
        if pool is None:
            problems.append(f"{what} starts a worker, but prefect.yaml defines no such pool")
            continue
        got = _worker_command([str(x) for x in container.get(key) or []])
        for field, want in (("pool", pool.name), ("type", pool.type)):
            if got[field] != want:
                problems.append(f"{what}: worker --{field} {got[field]!r}, but prefect.yaml "
                                f"defines the {pool.key} pool's {field} as {want!r}")
        if container.get("image") != pool.worker_image:
            problems.append(f"{what}: image {container.get('image')!r}, but prefect.yaml "
                            f"defines the {pool.key} pool's worker_image as "
                            f"{pool.worker_image!r}")
    for pool in pools.values():
        template = pool.template(root)
        if template is not None:
            kind = "job_manifest" if pool.type == "kubernetes" else "container_create_kwargs" \
                if pool.type == "docker" else None
            if kind and kind not in template.get("job_configuration", {}):
                problems.append(f"{pool.base_job_template} is not a {pool.type} template "
                                f"(no {kind})")
    by_name = {p.name: p for p in pools.values()}
    for dep in _spec(root / "prefect.yaml")["deployments"]:
        where = f"deployment {dep['name']} ({dep['entrypoint']})"
        pool = by_name.get(dep["work_pool"]["name"])
        if pool is None:
            problems.append(f"{where}: pool {dep['work_pool']['name']!r} is not defined")
            continue
        expected = DEPLOYMENT_POOL.get(dep["name"])
        if expected and pool.key != expected:
            problems.append(f"{where}: on the {pool.key} pool, expected {expected}")
        if pool.type != "process" and not (dep["work_pool"].get("job_variables") or {}).get(
                "image"):
            problems.append(f"{where}: a {pool.type} pool runs flows in an image, but the "
                            "deployment sets none (job_variables.image)")
    return problems


def select(pools: dict[str, WorkPool], keys: list[str]) -> dict[str, WorkPool]:
    """The pools named by key (all when ``keys`` is empty); an unknown key is an error."""
    unknown = [k for k in keys if k not in pools]
    if unknown:
        raise ConfigError(f"unknown work pool {', '.join(unknown)}; prefect.yaml defines: "
                          f"{', '.join(pools)}")
    return {k: p for k, p in pools.items() if not keys or k in keys}


def deployments(pools: dict[str, WorkPool], path: Path | str = PREFECT_YAML) -> list[str]:
    """``FLOW/DEPLOYMENT`` of every deployment in ``prefect.yaml`` on one of ``pools``."""
    from flows.registry import FLOWS, REPORT_FLOW

    by_function = {target.split(":")[1]: name
                   for name, target in {**FLOWS, "report": REPORT_FLOW}.items()}
    names = {p.name for p in pools.values()}
    return [f"{by_function[d['entrypoint'].rsplit(':', 1)[1]]}/{d['name']}"
            for d in _spec(path)["deployments"] if d["work_pool"]["name"] in names]


async def apply(pools: dict[str, WorkPool], env: dict[str, str] | None = None,
                out=print) -> list[str]:
    """Create each pool with its type and template, or update the template of an existing
    one; a pool of another type is an error (a type cannot change: delete it first). Then
    the docker pool's store variables and Secret blocks from ``env`` (those given).

    Returns the names of the docker store settings that are still missing on the server.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    env = dict(os.environ if env is None else env)
    async with get_client() as client:
        for pool in pools.values():
            template = pool.template()
            try:
                existing = await client.read_work_pool(pool.name)
            except ObjectNotFound:
                await client.create_work_pool(WorkPoolCreate(
                    name=pool.name, type=pool.type, **(
                        {"base_job_template": template} if template else {})))
                out(f"created work pool {pool.name} ({pool.type})")
                continue
            if existing.type != pool.type:
                raise ConfigError(
                    f"work pool {pool.name} exists with type {existing.type!r}, but prefect.yaml "
                    f"defines it as {pool.type!r}; a pool's type cannot change. Delete it "
                    f"(prefect work-pool delete {pool.name}) and run this again")
            if template and existing.base_job_template != template:
                await client.update_work_pool(pool.name, WorkPoolUpdate(
                    base_job_template=template))
                out(f"updated the base job template of {pool.name}")
            else:
                out(f"work pool {pool.name} ({pool.type}) is up to date")
        if not any(p.type == "docker" for p in pools.values()):
            return []
        return await _docker_store_settings(client, env, out)


async def _docker_store_settings(client, env: dict[str, str], out) -> list[str]:
    from prefect.blocks.system import Secret
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate

    missing = []
    for var, env_name in DOCKER_STORE_VARIABLES.items():
        value = env.get(env_name)
        current = await client.read_variable_by_name(var)
        if value:
            if current is None:
                await client.create_variable(VariableCreate(name=var, value=value))
            elif current.value != value:
                await client.update_variable(VariableUpdate(name=var, value=value))
            out(f"variable {var} = {value}")
        elif current is None:
            missing.append(f"variable {var} (from ${env_name})")
    for block, env_name in DOCKER_STORE_SECRETS.items():
        value = env.get(env_name)
        if value:
            await Secret(value=value).asave(block, overwrite=True, client=client)
            out(f"secret block {block} saved (from ${env_name})")
        else:
            try:
                await client.read_block_document_by_name(block, "secret", include_secrets=False)
            except Exception:
                missing.append(f"secret block {block} (from ${env_name})")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pools", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--prefect-yaml", default=str(PREFECT_YAML))
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print each pool: name, type, worker image, template")
    sub.add_parser("check", help="fail when compose, the k8s worker or a deployment disagrees")
    for cmd, text in (("apply", "create or update pools on the Prefect API"),
                      ("deployments", "print the pools' deployments as FLOW/NAME")):
        sub.add_parser(cmd, help=text).add_argument(
            "pools", nargs="*", metavar="POOL", help=f"{', '.join(TYPES)} (default: all)")
    args = parser.parse_args(argv)
    try:
        pools = load_pools(args.prefect_yaml)
        if args.cmd == "list":
            for p in pools.values():
                print("\t".join([p.name, p.type, p.worker_image or "-",
                                 p.base_job_template or "-"]))
            return 0
        if args.cmd == "check":
            problems = disagreements(Path(args.prefect_yaml).resolve().parent)
            for p in problems:
                print(f"disagrees: {p}", file=sys.stderr)
            print("work pools: " + ("disagreements found" if problems else "all agree"))
            return 1 if problems else 0
        pools = select(pools, args.pools)
        if args.cmd == "deployments":
            print("\n".join(deployments(pools, args.prefect_yaml)))
            return 0
        missing = asyncio.run(apply(pools))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if missing:
        print("warning: nightly-docker runs need " + "; ".join(missing) + ". Set them in "
              "infra/.env (VF_STORE=s3://BUCKET/PREFIX, VF_S3_ENDPOINT_URL, VF_TASKS_ACCESS_KEY, "
              "VF_TASKS_SECRET_KEY), `set -a; . infra/.env; set +a`, and run this again",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
