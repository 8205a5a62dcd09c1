"""The Kubernetes stack of ``infra/k8s/``: the overlay ``infra/k8s/deploy.sh`` applies.

``python -m flows.k8s overlay DIR`` writes a kustomization into DIR (a fresh folder; the
script uses a temporary one and deletes it) that adds to ``infra/k8s`` what must not live
in git, from ``infra/.env``'s variables:

- Secret ``visionflows-store``: ``VF_STORE``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
  (the tasks' key), ``VF_S3_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION`` when set: what every
  flow-run pod reads through ``secretKeyRef`` (the base job template);
- Secret ``minio-root`` and ConfigMap ``minio-init`` (``infra/minio/init.sh`` and
  ``tasks-policy.json``) for the in-cluster MinIO, unless ``VF_K8S_MINIO=0`` (an existing
  S3 or MinIO: then ``VF_STORE`` is required and ``VF_S3_ENDPOINT_URL`` names a non-AWS
  endpoint);
- Secret ``prefect-auth`` (``auth-string``: ``PREFECT_AUTH_STRING``, ``user:password``): the
  Prefect API's basic auth, read by the server, the worker and every flow-run pod;
- Secret ``prefect-db`` (``driver``, ``host``, ``port``, ``user``, ``name``, ``password``):
  the server's PostgreSQL, the in-cluster StatefulSet (``PREFECT_DB_PASSWORD``) unless
  ``VF_K8S_POSTGRES=0`` (an existing database: ``PREFECT_DB_HOST`` and optionally
  ``PREFECT_DB_PORT``, ``PREFECT_DB_USER``, ``PREFECT_DB_NAME``);
- ``VF_REGISTRY``: where the cluster pulls the worker image from.

Example and short secrets are refused before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from flows.work_pools import STORE_SECRET, check_secret, load_pools, project_root
from tasks.core.errors import ConfigError
from tasks.core.settings import raw, setting

K8S_DIR = Path("infra") / "k8s"
WORKER_IMAGE_NAME = "visionflows-worker"


def _env_file(path: Path, values: Mapping[str, str]) -> None:
    for k, v in values.items():
        if "\n" in v:
            raise ConfigError(f"{k} holds a line break")
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


def store_secret(env: Mapping[str, str], minio: bool, namespace: str) -> dict[str, str]:
    """The keys of the Secret ``visionflows-store``."""
    access = raw("VF_TASKS_ACCESS_KEY", env) or env.get("AWS_ACCESS_KEY_ID")
    secret = raw("VF_TASKS_SECRET_KEY", env) or env.get("AWS_SECRET_ACCESS_KEY")
    if not access:
        raise ConfigError("VF_TASKS_ACCESS_KEY is not set (infra/.env)")
    values = {"AWS_ACCESS_KEY_ID": access,
              "AWS_SECRET_ACCESS_KEY": check_secret("VF_TASKS_SECRET_KEY", secret)}
    if minio:
        bucket = setting("VF_BUCKET", env)
        values["VF_STORE"] = raw("VF_STORE", env) or f"s3://{bucket}/vf"
        values["VF_S3_ENDPOINT_URL"] = f"http://minio.{namespace}.svc.cluster.local:9000"
    else:
        if not (raw("VF_STORE", env) or "").startswith("s3://"):
            raise ConfigError("VF_K8S_MINIO=0 needs VF_STORE=s3://BUCKET/PREFIX (the existing "
                              "store), and VF_S3_ENDPOINT_URL unless it is AWS S3")
        values["VF_STORE"] = raw("VF_STORE", env)
        if endpoint := raw("VF_S3_ENDPOINT_URL", env):
            values["VF_S3_ENDPOINT_URL"] = endpoint
    if env.get("AWS_DEFAULT_REGION"):
        values["AWS_DEFAULT_REGION"] = env["AWS_DEFAULT_REGION"]
    return values


def auth_secret(env: Mapping[str, str]) -> dict[str, str]:
    """The key of the Secret ``prefect-auth``: the API's ``user:password``."""
    auth = env.get("PREFECT_AUTH_STRING") or ""
    user, sep, password = auth.partition(":")
    if not sep or not user:
        raise ConfigError("PREFECT_AUTH_STRING must be user:password (infra/.env), e.g. "
                          "vf:<a long random password>")
    check_secret("PREFECT_AUTH_STRING's password", password)
    return {"auth-string": auth}


def db_secret(env: Mapping[str, str], postgres: bool, namespace: str) -> dict[str, str]:
    """The keys of the Secret ``prefect-db``: the server's PostgreSQL, by parts."""
    password = check_secret("PREFECT_DB_PASSWORD", env.get("PREFECT_DB_PASSWORD"))
    if postgres:
        host, port, user, name = f"postgres.{namespace}.svc.cluster.local", "5432", "prefect", \
            "prefect"
    else:
        host = env.get("PREFECT_DB_HOST") or ""
        if not host:
            raise ConfigError("VF_K8S_POSTGRES=0 needs PREFECT_DB_HOST (the existing "
                              "PostgreSQL), and PREFECT_DB_PORT/USER/NAME where they are not "
                              "5432/prefect/prefect")
        port = env.get("PREFECT_DB_PORT") or "5432"
        user = env.get("PREFECT_DB_USER") or "prefect"
        name = env.get("PREFECT_DB_NAME") or "prefect"
        if not port.isdigit():
            raise ConfigError(f"PREFECT_DB_PORT={port!r} is not a port number")
    return {"driver": "postgresql+asyncpg", "host": host, "port": port, "user": user,
            "name": name, "password": password}


def write_overlay(out: Path | str, env: Mapping[str, str] | None = None,
                  root: Path | None = None) -> Path:
    """Write the overlay kustomization (with the secrets) into the empty folder ``out``."""
    env = dict(os.environ if env is None else env)
    root = project_root(root)
    pool = load_pools(root).get("visionflows-k8s")
    namespace = pool.namespace or "visionflows"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ConfigError(f"{out} is not empty")
    minio = setting("VF_K8S_MINIO", env) == "1"
    postgres = setting("VF_K8S_POSTGRES", env) == "1"
    base = Path(os.path.relpath((root / K8S_DIR).resolve(), out.resolve()))
    resources = [str(base / "core")] + ([str(base / "minio")] if minio else []) + (
        [str(base / "postgres")] if postgres else [])

    # every check first: nothing is written when one fails
    store = store_secret(env, minio, namespace)
    root_account = None
    if minio:
        user = env.get("MINIO_ROOT_USER") or ""
        if not user:
            raise ConfigError("MINIO_ROOT_USER is not set (infra/.env)")
        password = check_secret("MINIO_ROOT_PASSWORD", env.get("MINIO_ROOT_PASSWORD"))
        if user == store["AWS_ACCESS_KEY_ID"]:
            raise ConfigError("VF_TASKS_ACCESS_KEY must differ from MINIO_ROOT_USER")
        root_account = {"MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password}
    auth = auth_secret(env)
    database = db_secret(env, postgres, namespace)

    _env_file(out / "store.env", store)
    _env_file(out / "prefect-auth.env", auth)
    _env_file(out / "prefect-db.env", database)
    secrets = [{"name": STORE_SECRET, "namespace": namespace, "envs": ["store.env"]},
               {"name": "prefect-auth", "namespace": namespace, "envs": ["prefect-auth.env"]},
               {"name": "prefect-db", "namespace": namespace, "envs": ["prefect-db.env"]}]
    config_maps = []
    if root_account:
        _env_file(out / "minio-root.env", root_account)
        secrets.append({"name": "minio-root", "namespace": namespace,
                        "envs": ["minio-root.env"]})
        for name in ("init.sh", "tasks-policy.json"):
            (out / name).write_bytes((root / "infra" / "minio" / name).read_bytes())
        config_maps.append({"name": "minio-init", "namespace": namespace,
                            "files": ["init.sh", "tasks-policy.json"]})
    kustomization: dict = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": resources, "secretGenerator": secrets,
        # fixed names: the base job template names the store Secret at run time
        "generatorOptions": {"disableNameSuffixHash": True,
                             "labels": {"app.kubernetes.io/part-of": "visionflows"}}}
    if config_maps:
        kustomization["configMapGenerator"] = config_maps
    if registry := raw("VF_REGISTRY", env):
        kustomization["images"] = [{"name": WORKER_IMAGE_NAME, "newName":
                                    f"{registry.rstrip('/')}/{WORKER_IMAGE_NAME}"}]
    (out / "kustomization.yaml").write_text(
        "# Written by `python -m flows.k8s overlay`; it holds secrets: delete it after use.\n"
        + yaml.safe_dump(kustomization, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.k8s",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ov = sub.add_parser("overlay", help="write the overlay kustomization into DIR")
    ov.add_argument("dir")
    args = parser.parse_args(argv)
    try:
        write_overlay(args.dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
