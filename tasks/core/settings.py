"""Every ``VF_*`` environment variable visionflows reads, declared once.

:class:`Settings` (pydantic-settings, prefix ``VF_``) is the one definition: each field is a
variable with its type, default, one-line help, its group, and who sets it (``scope``):

- ``user``: you may set it;
- ``internal``: visionflows sets it for its own child processes, containers and Ray
  workers (listed so that nothing is read unexplained; do not set it by hand);
- ``ci``: read by ``.ci/run`` only; ``test``: read by the test suite only.

Code reads a variable through :func:`setting` (typed, default applied) or :func:`raw` (the
text, for callers with their own parsing). Both read the environment (or a given mapping)
at the moment of the call, so a variable set later in the process counts. Shell scripts
read their variables themselves; their names are declared here too, so that one table
lists everything (``visionflows doctor --settings``, ``docs/settings.md``, regenerated with
``python -m tasks.core.settings --markdown > docs/settings.md``).

An unknown ``VF_*`` variable in the environment is most likely a typo:
:func:`unknown_in_env` names each with the closest declared name.
"""

from __future__ import annotations

import difflib
import functools
import os
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.core.errors import ConfigError

PREFIX = "VF_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
SECRET_PARTS = ("KEY", "SECRET", "PASSWORD", "TOKEN")
GROUPS = {  # section order and titles of the listing
    "store": "Store and inputs",
    "launchers": "Launchers and containers",
    "ray": "Ray",
    "deploy": "Prefect, work pools and Kubernetes",
    "runtime": "Runtime and limits",
    "images": "Image builds (images/*.sh)",
    "ci": "CI only (.ci/run)",
    "tests": "Tests only",
}
SCOPES = ("user", "internal", "ci", "test")


@dataclass(frozen=True)
class Kind:
    """How a type is shown in the listing (``flag``, ``seconds``, ``size``, ...)."""

    name: str


def _flag(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"use 1 or 0 (also true/false, yes/no, on/off), not {value!r}")
    return value


Flag = Annotated[bool, BeforeValidator(_flag), Kind("flag")]
Text = Annotated[str, Kind("text")]
Url = Annotated[str, Kind("url")]
Path_ = Annotated[str, Kind("path")]
Size = Annotated[str, Kind("size (512m, 4g)")]
Seconds = Annotated[float, Kind("seconds")]
Limit = Annotated[str, Kind("seconds | none")]
Csv = Annotated[str, Kind("comma-separated")]
Bit = Annotated[Literal["0", "1"], Kind("0 | 1")]
Number = Annotated[str, Kind("number | none")]
Stage = Annotated[Literal["auto", "0", "1"], Kind("auto | 0 | 1")]
_STAGE = "0 skips it, 1 makes a missing prerequisite an error, auto runs it when it can"


def _s(default: Any, help: str, group: str, scope: str = "user", shown: str | None = None,
       script: str | None = None) -> Any:
    """A setting: ``default`` (``shown`` is how a computed default reads), one-line
    ``help``, its ``group``, who sets it (``scope``) and, for a variable only a shell script
    reads, which one (``script``)."""
    assert group in GROUPS and scope in SCOPES, (group, scope)
    return Field(default, description=help, json_schema_extra={
        "group": group, "scope": scope, "shown": shown, "script": script})


class Settings(BaseSettings):
    """The ``VF_*`` environment variables (field ``store`` is ``VF_STORE``)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # ------------------------------------------------------------------ store and inputs
    store: Text = _s("file://./artifacts", "the artifact store: file://DIR or "
                     "s3://BUCKET/PREFIX (--store wins)", "store")
    s3_endpoint_url: Url | None = _s(None, "S3 endpoint for MinIO or another non-AWS S3, "
                                     "e.g. http://127.0.0.1:9000", "store")
    s3_region: Text | None = _s(None, "region of the S3 store", "store",
                                shown="$AWS_DEFAULT_REGION, else us-east-1")
    s3_max_attempts: int = _s(5, "attempts per S3 call (botocore retries)", "store")
    s3_retry_seconds: Seconds = _s(60.0, "how long S3 calls are retried while the endpoint "
                                   "is unreachable", "store")
    min_free_mb: float = _s(200.0, "free space a file:// store must have, in MB", "store")
    link_expiry: Annotated[str, Kind("duration (3600, 90m, 12h, 7d)")] | None = _s(
        None, "how long the report's presigned S3 links stay valid (at most 7d; "
        "--link-expiry wins)", "store", shown="7d")
    cache_dir: Path_ | None = _s(None, "local cache of datasets, weights and mirrored files",
                                 "store", shown="~/.cache/visionflows")
    offline: Flag = _s(False, "no downloads: inputs come from the config, the store's "
                       "mirror or the cache (--offline)", "store")
    mirror_source_base: Url | None = _s(None, "fetch every catalogued file from this base "
                                        "URL instead (the published path appended)", "store")
    bucket: Text = _s("visionflows", "bucket of the compose stack, the work pools and "
                      "Kubernetes (infra/.env)", "store")
    tasks_access_key: Text | None = _s(None, "the tasks' own S3 access key (infra/.env)",
                                       "store")
    tasks_secret_key: Text | None = _s(None, "the tasks' own S3 secret key (infra/.env)",
                                       "store")

    # ------------------------------------------------------------------ launchers
    launcher: Text = _s("local", "where tasks run: local | subprocess | docker (--launcher "
                        "wins)", "launchers")
    task_timeout_s: Limit | None = _s(None, "time budget per task (local and subprocess "
                                      "launchers); none: no budget", "launchers",
                                      shown="the step's time_limit_s")
    task_memory: Size | None = _s(None, "memory limit per task (subprocess launcher)",
                                  "launchers", shown="the step's memory")
    task_log_tail: int = _s(20, "log lines of a failed task quoted in its error "
                            "(subprocess launcher)", "launchers")
    image: Text | None = _s(None, "docker launcher: the image for every task family",
                            "launchers", shown="visionflows-tasks:<version>-<code hash>")
    image_torch: Text | None = _s(None, "docker launcher: the image of the torch family "
                                  "(wins over VF_IMAGE)", "launchers")
    image_yolo: Text | None = _s(None, "docker launcher: the image of the yolo family "
                                 "(wins over VF_IMAGE)", "launchers")
    image_repository: Text = _s("visionflows-tasks", "repository of the task image this code "
                                "builds and runs (images/build.sh, work pools)", "launchers")
    docker_gpus: Annotated[str, Kind("auto | none | all | COUNT | device=ID,...")] | None = _s(
        None, "GPUs given to task containers", "launchers", shown="the step's gpus, else auto")
    docker_memory: Size | None = _s(None, "container memory limit (no swap beyond it)",
                                    "launchers", shown="the step's memory")
    docker_shm_size: Size | None = _s(None, "/dev/shm size of task containers", "launchers",
                                      shown="the step's shm, else 2g")
    docker_cpus: Number | None = _s(None, "CPUs of a task container", "launchers",
                                   shown="the step's cpus")
    docker_timeout_s: Limit | None = _s(None, "kill a task container after this; none: "
                                        "never", "launchers", shown="the step's time_limit_s")
    docker_user: Text = _s("auto", "container user; auto: the image's, or a file store's "
                           "owner", "launchers")
    docker_cache: Path_ | None = _s(None, "host folder mounted as the containers' task cache",
                                    "launchers")
    docker_log_tail: int = _s(20, "log lines of a failed container quoted in its error",
                              "launchers")
    docker_tmpfs_size: Size | None = _s(None, "size of the containers' /tmp tmpfs",
                                        "launchers", shown="half the RAM")
    docker_mounts: Csv | None = _s(None, "extra bind mounts HOST:CONTAINER[:ro], "
                                   "comma-separated", "launchers")
    docker_pull: Flag = _s(False, "pull a missing task image instead of failing", "launchers")
    docker_keep: Flag = _s(False, "keep finished task containers (debugging)", "launchers")
    docker_read_only: Flag = _s(True, "read-only root filesystem in task containers, tmpfs "
                                "at /tmp", "launchers")
    image_tag: Text = _s("none (in-process)", "the image a task runs in, recorded in its "
                         "manifest", "launchers", "internal")
    image_id: Text | None = _s(None, "the image id a task runs in (step identity)",
                               "launchers", "internal")
    parent_pid: int = _s(0, "pid of the launching process: a task dies with it",
                         "launchers", "internal")
    progress_lines: Flag = _s(False, "a task sends progress as lines on stdout to its "
                              "launcher", "launchers", "internal")
    work_root: Path_ | None = _s(None, "the CLI run's scratch folder, removed on exit",
                                 "launchers", "internal", shown="the system's temp")

    # ------------------------------------------------------------------ ray
    task_runner: Text | None = _s(None, "Prefect task runner: thread | ray (--task-runner "
                                  "wins)", "ray", shown="ray when VF_RAY_ADDRESS is set, "
                                  "else thread")
    ray_address: Text | None = _s(None, "Ray cluster: ray://HEAD:10001, HOST:6379 or auto "
                                  "(--ray-address wins)", "ray", shown="a local Ray")
    ray_connect_timeout_s: Seconds = _s(30.0, "a Ray address that does not answer fails "
                                        "within this", "ray")
    ray_fit_wait_s: Seconds = _s(0.0, "how long a step no Ray node holds waits for the "
                                 "autoscaler", "ray")
    ray_dashboard: Url | None = _s(None, "Ray dashboard for `visionflows submit`: "
                                   "http://HEAD:8265", "ray")
    ray_stop_wait_s: int = _s(20, "seconds a stopped Ray job has to mark its run "
                              "Cancelled", "ray")
    ray_s3_endpoint_url: Url | None = _s(None, "the store's endpoint as the Ray nodes see it",
                                         "ray", shown="$VF_S3_ENDPOINT_URL")
    ray_prefect_api_url: Url | None = _s(None, "the Prefect API as the Ray nodes see it",
                                         "ray", shown="$PREFECT_API_URL")
    ray_image_ref: Text = _s("visionflows-tasks-ray:latest", "image of the rendered "
                             "RayCluster (python -m flows.kuberay)", "ray")
    ray_gpu_min: int = _s(0, "GPU worker replicas at least (rendered RayCluster)", "ray")
    ray_gpu_max: int = _s(4, "GPU worker replicas at most (rendered RayCluster)", "ray")
    ray_cpu_min: int = _s(1, "CPU worker replicas at least (rendered RayCluster)", "ray")
    ray_cpu_max: int = _s(4, "CPU worker replicas at most (rendered RayCluster)", "ray")
    ray_job_id: Text | None = _s(None, "the Ray job a submitted run belongs to", "ray",
                                 "internal")
    ray_node_id: Text | None = _s(None, "the Ray node a step runs on (its manifest)", "ray",
                                  "internal")
    ray_worker_pid: int = _s(0, "the Ray worker a step runs in (its manifest)", "ray",
                             "internal")

    # ------------------------------------------------------------------ deploy
    project_dir: Path_ | None = _s(None, "the project checkout the work pools are read from",
                                   "deploy", shown="this installation's checkout")
    image_pull_secrets: Csv | None = _s(None, "Kubernetes Secrets for pulling images, "
                                        "comma-separated", "deploy")
    registry: Text | None = _s(None, "registry the cluster pulls the worker and task images "
                               "from", "deploy")
    k8s_minio: Bit = _s("1", "deploy an in-cluster MinIO (0: use VF_STORE)", "deploy")
    k8s_postgres: Bit = _s("1", "deploy an in-cluster PostgreSQL (0: use PREFECT_DB_HOST)",
                           "deploy")
    k8s_render: Bit = _s("0", "print the manifests instead of applying them", "deploy",
                          script="infra/k8s/deploy.sh")
    k8s_api_port: int = _s(4200, "local port of the port-forward to the Prefect server",
                           "deploy", script="infra/k8s/deploy.sh")
    task_image: Text = _s("visionflows-tasks:latest", "image of the compose stack's workers",
                          "deploy", script="infra/docker-compose.yml")

    # ------------------------------------------------------------------ runtime
    refresh: Flag = _s(False, "recompute every step, reusing nothing (--refresh)", "runtime")
    retry_delay_s: Seconds = _s(5.0, "wait between a failed step's retries", "runtime")
    no_progress: Flag = _s(False, "no progress bars (--no-progress)", "runtime")
    git_commit: Text | None = _s(None, "the source commit recorded in manifests (set in "
                                 "images)", "runtime", "internal", shown="this checkout's HEAD")

    # ------------------------------------------------------------------ image builds
    version: Text = _s("0.1.0", "package version built into the image (a build argument)",
                       "images", "internal", script="images/build.sh")
    source_hash: Text = _s("unknown", "hash of the code built into the image (a build "
                           "argument)", "images", "internal", script="images/build.sh")
    pip_args: Text | None = _s(None, "extra pip arguments of image builds (--no-index "
                               "--find-links ...)", "images", script="images/build.sh")
    extras: Text | None = _s(None, "package extras of the task image (ray)", "images",
                             script="images/build.sh")
    extra_pins: Text | None = _s(None, "pinned packages of those extras", "images",
                                 script="images/build.sh")
    force_build: Text | None = _s(None, "set (to anything) to rebuild an image that already "
                                  "exists", "images", script="images/build.sh")
    image_cache: Path_ = _s("/var/cache/visionflows-images", "cache of the local base "
                            "build", "images", script="images/build-local-base.sh")
    debian_suite: Text = _s("bookworm", "Debian suite of the local base", "images",
                            script="images/build-local-base.sh")
    debian_mirror: Url = _s("http://deb.debian.org/debian", "Debian mirror of the local base",
                            "images", script="images/build-local-base.sh")
    wheelhouse: Path_ | None = _s(None, "a ready folder of wheels: no download at all",
                                  "images", script="images/build-local-base.sh",
                                  shown="$VF_IMAGE_CACHE/wheelhouse")
    constraints: Path_ | None = _s(None, "pip constraints of the local base", "images",
                                   script="images/build-local-base.sh",
                                   shown="pip freeze of $PYTHON")
    ray_image: Bit = _s("0", "also build the Ray-ready task image", "images",
                         script="images/build-local-base.sh")

    # ------------------------------------------------------------------ CI and tests
    ci_docker: Stage = _s("auto", "container stage: " + _STAGE, "ci", "ci",
                          shown="auto (1 when CI=true)", script=".ci/run")
    ci_ray: Stage = _s("auto", "Ray stage: " + _STAGE, "ci", "ci",
                       shown="auto (1 when CI=true)", script=".ci/run")
    ci_ops: Stage = _s("auto", "operations stage: " + _STAGE, "ci", "ci",
                       shown="auto (1 when CI=true)", script=".ci/run")
    test_s3_endpoint: Url | None = _s(None, "tests use this real MinIO instead of moto",
                                      "tests", "test", shown="moto on 127.0.0.1")
    test_net_log: Path_ | None = _s(None, "file where the Q4 tests log network attempts",
                                    "tests", "test")


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Info:
    """One declared variable, as listed."""

    name: str
    field: str
    type: str
    default: Any
    shown: str  # the default as the listing shows it
    help: str
    group: str
    scope: str
    script: str | None

    @property
    def secret(self) -> bool:
        return any(part in self.name for part in SECRET_PARTS)


def _type_name(annotation: Any, metadata: list[Any]) -> str:
    for m in metadata:
        if isinstance(m, Kind):
            return m.name
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _type_name(args[0], list(args[1:]))
    if args:  # X | None
        names = [_type_name(a, []) for a in args if a is not type(None)]
        return " | ".join(names)
    return getattr(annotation, "__name__", str(annotation))


def _shown_default(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


@functools.cache
def table() -> dict[str, Info]:
    """Every declared variable by name, in declaration order."""
    out = {}
    for field, info in Settings.model_fields.items():
        extra = info.json_schema_extra or {}
        name = PREFIX + field.upper()
        default = info.default
        shown = extra.get("shown") or _shown_default(default)
        out[name] = Info(name=name, field=field, type=_type_name(info.annotation,
                                                                    info.metadata),
                         default=default, shown=shown, help=info.description or "",
                         group=extra["group"], scope=extra["scope"], script=extra["script"])
    return out


@functools.cache
def _adapter(name: str) -> TypeAdapter:
    info = Settings.model_fields[table()[name].field]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata
                       else info.annotation)


def _info(name: str) -> Info:
    try:
        return table()[name]
    except KeyError:
        raise KeyError(f"{name} is not declared in tasks/core/settings.py"
                       f"{_suggest(name)}") from None


def default(name: str) -> Any:
    """The declared default of ``name`` (what :func:`setting` gives when it is unset)."""
    return _info(name).default


def raw(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The text of ``name`` in ``env`` (default: the process environment, read now),
    stripped; ``None`` when unset or empty."""
    _info(name)
    value = (os.environ if env is None else env).get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def setting(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The value of ``name`` parsed to its declared type, or its default when unset or
    empty. A value that does not parse raises :class:`ConfigError` naming the variable,
    the problem and what it means."""
    info = _info(name)
    text = raw(name, env)
    if text is None:
        return info.default
    try:
        return _adapter(name).validate_python(text)
    except ValidationError as exc:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"{name}={text!r} is not a valid {info.type}: {reason} ({name}: "
                          f"{info.help})") from None


def is_secret(name: str) -> bool:
    return any(part in name for part in SECRET_PARTS)


def shown_value(name: str, env: Mapping[str, str] | None = None) -> str:
    """The current value as a listing may print it: secrets masked, ``unset`` if unset."""
    value = (os.environ if env is None else env).get(name)
    if value is None:
        return "unset"
    if is_secret(name) and value:
        return "***"
    return value


# ---------------------------------------------------------------- unknown variables


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(table()), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def unknown_in_env(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning line per ``VF_*`` variable in ``env`` that is not declared (most likely a
    typo), with the closest declared name."""
    env = os.environ if env is None else env
    return [f"warning: {name} is not a visionflows setting{_suggest(name)} "
            "(`visionflows doctor --settings` lists them all)"
            for name in sorted(env) if name.startswith(PREFIX) and name not in table()]


# ---------------------------------------------------------------- listings


def check_all(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every set variable whose value does not parse -> the error."""
    bad = {}
    for name in table():
        try:
            setting(name, env)
        except ConfigError as exc:
            bad[name] = str(exc)
    return bad


def listing(env: Mapping[str, str] | None = None) -> str:
    """Every setting by group: name, type, default, current value (secrets masked), help;
    what ``visionflows doctor --settings`` prints."""
    bad = check_all(env)
    lines = []
    for group, title in GROUPS.items():
        rows = [i for i in table().values() if i.group == group]
        lines.append(f"{title}:")
        for i in rows:
            marks = "; ".join(m for m in (i.scope if i.scope != "user" else "",
                                          f"read by {i.script}" if i.script else "") if m)
            marks = f" [{marks}]" if marks else ""
            now = shown_value(i.name, env)
            lines.append(f"  {i.name} ({i.type}; default {i.shown}) = {now}"
                         + (" INVALID" if i.name in bad else ""))
            lines.append(f"      {i.help}{marks}")
            if i.name in bad:
                lines.append(f"      fix: {bad[i.name]}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """``docs/settings.md``: one table per group."""
    out = ["# Settings: the `VF_*` environment variables", "",
           "Generated from `tasks/core/settings.py` (the one place they are declared) by",
           "`python -m tasks.core.settings --markdown > docs/settings.md`; do not edit by "
           "hand.", "`visionflows doctor --settings` lists them with their current values "
           "(secrets masked).", "A `VF_*` variable that is not listed here gets a warning "
           "when `visionflows` starts.", "",
           "Who sets them: *user* (you), *internal* (visionflows sets it for its own child "
           "processes, containers and Ray workers), *ci* (`.ci/run` only), *test* (the test "
           "suite only). Where a shell script is the only reader, it is named.", ""]
    for group, title in GROUPS.items():
        out += [f"## {title}", "", "| Variable | Type | Default | Set by | Meaning |",
                "|---|---|---|---|---|"]
        for i in (i for i in table().values() if i.group == group):
            who = i.scope + (f" ({i.script})" if i.script else "")
            out.append(f"| `{i.name}` | {_cell(i.type)} | {_cell(i.shown)} | {_cell(who)} | "
                       f"{_cell(i.help)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(markdown())
        return 0
    if not args:
        sys.stdout.write(listing())
        return 0
    print("usage: python -m tasks.core.settings [--markdown]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
