"""Which Prefect task runner a flow run uses, and the Ray cluster behind ``--task-runner ray``.

- ``thread`` (the default): Prefect's ``ThreadPoolTaskRunner`` with as many workers as the
  flow config's ``parallel`` (1: one step after another).
- ``ray``: ``prefect_ray.RayTaskRunner``. Without an address a local Ray is started for the
  run (one machine: fractional GPUs pack steps on a device); with ``--ray-address``
  (``ray://HOST:10001``, ``HOST:6379`` or ``auto``) an existing cluster, e.g. KubeRay.

:func:`ray_session` connects (or starts Ray) once per command, before any flow runs, and
fails within ``VF_RAY_CONNECT_TIMEOUT_S`` (30 s) when the address does not answer. The
workers get this checkout's code (``py_modules``: ``tasks``, ``flows``, ``reports``) and
what the steps need from this environment (the Prefect API URL, the store's endpoint and
credentials, the offline switch) through Ray's runtime environment: never on a command
line, in a log line or in a manifest. ``ray`` and ``prefect-ray`` are an optional extra
(``pip install -e '.[ray]'``); nothing here imports them until a Ray run asks for it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tasks.core.errors import ConfigError, VisionflowsError
from tasks.core.log import get_logger
from tasks.core.settings import raw, setting

RUNNERS = ("thread", "ray")
INSTALL_HINT = "pip install -e '.[ray]' (or: pip install 'ray[default]' prefect-ray)"
INIT_TIMEOUT_S = 300.0  # an answering cluster that does not open a session within this
# What a step needs from the launching environment (as the docker launcher forwards it).
WORKER_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_REGION", "VF_S3_ENDPOINT_URL", "VF_S3_REGION", "VF_S3_MAX_ATTEMPTS", "VF_OFFLINE",
    "VF_RETRY_DELAY_S", "VF_REFRESH", "VF_TASK_TIMEOUT_S", "VF_TASK_MEMORY",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_ANALYTICS_ENABLED",
    "DO_NOT_TRACK", "VF_RAY_JOB_ID",
)
# What the cluster's nodes use where their names differ from this machine's (a port-forward:
# here http://127.0.0.1:9000, in the cluster http://minio.vf.svc:9000); see docs/ray.md.
CLUSTER_ENDPOINT = "VF_RAY_S3_ENDPOINT_URL"
CLUSTER_API_URL = "VF_RAY_PREFECT_API_URL"

CODE_PACKAGES = ("tasks", "flows", "reports")


class RayUnavailableError(VisionflowsError):
    """Ray or prefect-ray is not installed, or the cluster does not answer."""


def require_ray():
    """The ``ray`` module, after checking that ``prefect_ray`` imports too; else how to
    install them."""
    try:
        import prefect_ray  # noqa: F401
        import ray
    except ImportError as exc:
        raise RayUnavailableError(
            f"--task-runner ray needs Ray and prefect-ray, which are not installed here "
            f"({exc.name or exc} is missing): {INSTALL_HINT}") from None
    return ray


def choose_runner(task_runner: str | None, address: str | None,
                  env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The runner kind and Ray address from the CLI's options and ``VF_TASK_RUNNER`` /
    ``VF_RAY_ADDRESS``: an address means Ray."""
    env = os.environ if env is None else env
    address = (address or raw("VF_RAY_ADDRESS", env) or "").strip() or None
    kind = (task_runner or raw("VF_TASK_RUNNER", env) or ("ray" if address else "thread"))
    kind = kind.strip().lower()
    if kind not in RUNNERS:
        raise ConfigError(f"unknown task runner {kind!r} (from VF_TASK_RUNNER?); use one of: "
                          f"{', '.join(RUNNERS)}")
    if address and kind != "ray":
        raise ConfigError(f"a Ray address ({address}) needs --task-runner ray; drop "
                          "--ray-address / VF_RAY_ADDRESS to run on the thread pool")
    if address:
        address_host(address)  # validates the form
    return kind, address


def address_host(address: str) -> str | None:
    """The host of a Ray address (``ray://HOST:PORT``, ``HOST:PORT``), None for ``auto``."""
    if address == "auto":
        return None
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in text:
        raise ConfigError(f"Ray address {address!r}: use ray://HOST:10001 (Ray Client, e.g. "
                          "KubeRay's head service), HOST:6379 (the cluster's GCS) or auto")
    return host.strip("[]")


def is_loopback(host: str | None) -> bool:
    if host is None:
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_cluster_setup(address: str | None, store_uri: str,
                        env: Mapping[str, str] | None = None,
                        api_url: str | None = None) -> None:
    """Refuse, before anything runs, a setup whose Ray nodes could not reach the store or the
    Prefect API. ``address`` None (a local Ray on this machine) needs nothing. A loopback
    address may still be a remote cluster (a port-forward): :func:`check_nodes_reach` tells
    once the cluster's nodes are known."""
    if address is None:
        return
    env = os.environ if env is None else env
    if store_uri.startswith("file://"):
        raise ConfigError(
            f"the store {store_uri} is a folder on this machine, which the Ray cluster at "
            f"{address} cannot see from its nodes: use a store every node reaches (S3/MinIO: "
            "--store s3://BUCKET/PREFIX, with VF_S3_ENDPOINT_URL for MinIO), or leave out "
            "--ray-address (and VF_RAY_ADDRESS) to start a local Ray on this machine")
    if not is_loopback(address_host(address)):  # surely elsewhere: no need to ask it
        check_nodes_reach(["remote"], address, env, api_url)


def local_ips() -> set[str]:
    """This machine's own addresses (a node at one of them is on this machine)."""
    ips = {"127.0.0.1", "::1"}
    with contextlib.suppress(OSError):
        ips.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return ips


def check_nodes_reach(node_ips: list[str], address: str, env: Mapping[str, str] | None = None,
                      api_url: str | None = None) -> None:
    """Refuse loopback store and Prefect URLs when any node of the cluster at ``address`` is
    on another machine (``node_ips``; "remote" when only the address is known): the nodes
    would read 127.0.0.1 as themselves. The fix names the setting: the cluster-side URL
    (``VF_RAY_S3_ENDPOINT_URL`` / ``VF_RAY_PREFECT_API_URL``, e.g. in-cluster service
    names behind a port-forward) or a routable one."""
    env = os.environ if env is None else env
    here = local_ips()
    remote = [ip for ip in node_ips if ip not in here and not is_loopback(ip)]
    if not remote:
        return
    where = f"the Ray nodes at {address}" + (
        f" ({', '.join(sorted(set(remote))[:3])})" if remote != ["remote"] else "")
    endpoint = raw(CLUSTER_ENDPOINT, env) or raw("VF_S3_ENDPOINT_URL", env)
    if endpoint and is_loopback(urlsplit(endpoint).hostname):
        name = CLUSTER_ENDPOINT if raw(CLUSTER_ENDPOINT, env) else "VF_S3_ENDPOINT_URL"
        raise ConfigError(
            f"{name}={endpoint} is this machine's loopback address, which {where} would read "
            f"as their own: set {CLUSTER_ENDPOINT} to the store's address as the nodes see it "
            "(e.g. http://minio.vf.svc:9000 behind a port-forward; docs/ray.md); nothing ran")
    cluster_api = raw(CLUSTER_API_URL, env) or api_url
    if not cluster_api or is_loopback(urlsplit(cluster_api).hostname):
        shown = cluster_api or "the temporary local Prefect server"
        raise ConfigError(
            f"{where} must report to a Prefect server they reach, and {shown} is this "
            f"machine's loopback: set {CLUSTER_API_URL} to the server's address as the nodes "
            "see it (e.g. http://prefect-server.vf.svc:4200/api), or PREFECT_API_URL to a "
            "routable one (`prefect server start --host 0.0.0.0`); nothing ran")


def fits(res, node: dict[str, float]) -> bool:
    """Whether a Ray node (its resources) holds a step's needs (``Resources``)."""
    return (node.get("CPU", 0) >= res.cpus and node.get("GPU", 0) >= res.gpus
            and node.get("memory", float("inf")) >= res.memory_bytes)


def fit_error(flow: str, kind: str, res, nodes: list[dict[str, float]]) -> str:
    """The one line that refuses a step no node holds."""
    biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0), n.get("memory", 0)),
                  default={})
    return (f"{flow}: {kind} steps need {res.cpus:g} CPUs, {res.gpus:g} GPUs and {res.memory} "
            f"memory, and no Ray node holds that (the largest: {biggest.get('CPU', 0):g} "
            f"CPUs, {biggest.get('GPU', 0):g} GPUs, {biggest.get('memory', 0) / 2**30:.1f} GiB "
            f"of {len(nodes)} node(s)); lower it (--set resources.{kind}.cpus=... / .gpus=... "
            "/ .memory=...) or add a node that large; nothing ran")


def check_fit(flow: str, cfg, nodes_now, wait_s: float | None = None,
              env: Mapping[str, str] | None = None, request=None) -> list[dict[str, float]]:
    """Refuse, before anything runs, a flow with a step kind no node of the cluster can hold
    (its needs from the resource table against each node's CPUs, GPUs and memory).
    ``nodes_now()`` lists the nodes' resources; with ``wait_s`` (``VF_RAY_FIT_WAIT_S``:
    a cluster with an autoscaler) it is asked again until a node fits or the time is up,
    after ``request(bundle)`` (the autoscaler asked for such a node). Returns the nodes last
    seen."""
    from tasks.plans import step_kinds

    env = os.environ if env is None else env
    if wait_s is None:
        wait_s = setting("VF_RAY_FIT_WAIT_S", env)
    kinds = sorted(set(step_kinds(flow).values()))
    table = cfg.resources
    deadline = time.monotonic() + wait_s
    while True:
        nodes = nodes_now()
        unfit = [k for k in kinds if not any(fits(table.for_kind(k), n) for n in nodes)]
        if not unfit:
            return nodes
        if time.monotonic() >= deadline:
            raise ConfigError(fit_error(flow, unfit[0], table.for_kind(unfit[0]), nodes))
        if wait_s:
            get_logger("ray").info("waiting up to %gs for a Ray node that holds %s steps "
                                   "(VF_RAY_FIT_WAIT_S)", wait_s, unfit[0])
            if request is not None:
                res = table.for_kind(unfit[0])
                request({k: v for k, v in (("CPU", res.cpus), ("GPU", res.gpus),
                                           ("memory", float(res.memory_bytes))) if v})
            wait_s = 0.0  # said once
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def _flow_configs():
    from tasks.questions import question_flows

    return question_flows()


def ray_auth_token(env: Mapping[str, str] | None = None) -> str | None:
    """The cluster's token for Ray's token authentication: ``RAY_AUTH_TOKEN``, else the file
    at ``RAY_AUTH_TOKEN_PATH``, else Ray's own ``~/.ray/auth_token``; None without one.
    A secret: never printed or logged."""
    env = os.environ if env is None else env
    if token := (env.get("RAY_AUTH_TOKEN") or "").strip():
        return token
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def use_ray_auth(env: dict[str, str] | None = None) -> bool:
    """Switch this process's Ray client to token mode when a token is at hand and
    ``RAY_AUTH_MODE`` is not set (Ray reads the token itself, from the same places)."""
    env = os.environ if env is None else env
    if env.get("RAY_AUTH_MODE"):
        return env["RAY_AUTH_MODE"].lower() == "token"
    if ray_auth_token(env) is None:
        return False
    env["RAY_AUTH_MODE"] = "token"
    return True


def configured_api_url() -> str | None:
    """The Prefect API URL this process is set to use (settings or environment)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL") or None


@contextlib.contextmanager
def prefect_api_for_workers() -> Iterator[str]:
    """An API URL the Ray workers can use: the configured one, else Prefect's temporary
    local server, started now and set for this process, so the flow and its workers share
    it (PrefectHQ/prefect#18485: workers do not find the temporary server by themselves).
    """
    url = configured_api_url()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()  # the instance Prefect's own temporary mode uses
    server.start(timeout=120)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield server.api_url


def code_dirs() -> list[str]:
    """This checkout's packages, shipped to the workers (the code this process runs)."""
    import importlib

    return [str(Path(importlib.import_module(p).__file__).parent) for p in CODE_PACKAGES]


def shipped_code() -> dict[str, list[str]]:
    """The ``runtime_env`` keys that ship this checkout's packages to a Ray cluster, for the
    steps' workers and for a submitted job's driver alike: each package one of
    ``py_modules``, without bytecode or the reports written into ``reports/out``. Not a
    ``working_dir``: Ray re-creates that on each node that needs it, removing the folder
    first, and nodes on one machine share it, so a driver lost the code it was importing."""
    return {"py_modules": code_dirs(), "excludes": ["__pycache__", "*.pyc", "out"]}


def worker_runtime_env(api_url: str, env: Mapping[str, str] | None = None,
                       local: bool = False) -> dict[str, Any]:
    """Ray's runtime environment for the steps: this code, the API URL, the store's
    endpoint and credentials (and, for a Ray on this machine, the download cache folder).
    Holds secrets: never log it."""
    from tasks.core.runtime import git_commit

    env = os.environ if env is None else env
    names = (*WORKER_ENV, "VF_CACHE_DIR") if local else WORKER_ENV
    env_vars = {k: env[k] for k in names if env.get(k)}
    from prefect.settings import get_current_settings

    auth = get_current_settings().api.auth_string  # set in a profile rather than the env
    if auth is not None:
        env_vars.setdefault("PREFECT_API_AUTH_STRING", auth.get_secret_value())
    if endpoint := raw(CLUSTER_ENDPOINT, env):
        env_vars["VF_S3_ENDPOINT_URL"] = endpoint
    api_url = raw(CLUSTER_API_URL, env) or api_url
    env_vars.update({"PREFECT_API_URL": api_url, "VF_GIT_COMMIT": git_commit(),
                     "PREFECT_LOGGING_EXTRA_LOGGERS": "visionflows", "PYTHONUNBUFFERED": "1",
                     "RAY_USAGE_STATS_ENABLED": "0"})
    return {**shipped_code(), "env_vars": env_vars}


@dataclass
class RaySession:
    """The Ray cluster of this command: where it is and what its nodes offer."""

    address: str | None
    nodes: list[dict[str, float]] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)
    # the Ray job of a `visionflows submit` this command runs as (read once, at connection)
    job_id: str | None = field(default_factory=lambda: raw("VF_RAY_JOB_ID"))

    @property
    def local(self) -> bool:
        """A Ray started for this run on this machine (no address given)."""
        return self.address is None

    def check_fit(self, flow: str, cfg) -> None:
        """On a given cluster, refuse a flow with a step no node holds (see
        :func:`check_fit`); a local Ray fits steps to this machine instead."""
        if self.local or flow not in _flow_configs():
            return
        import ray
        from ray.autoscaler.sdk import request_resources

        def ask(bundle: dict[str, float]) -> None:
            request_resources(bundles=[bundle])
            asked.append(bundle)

        asked: list = []
        try:
            self.nodes = check_fit(flow, cfg, lambda: _alive_nodes(ray), request=ask)
        finally:
            if asked:
                request_resources(bundles=[])  # the steps themselves ask from now on

    def describe(self) -> str:
        where = "a local Ray started for this run" if self.local else f"Ray at {self.address}"
        offer = "; ".join(", ".join(f"{k} {v:g}" for k, v in sorted(n.items())
                                    if k in ("CPU", "GPU")) for n in self.nodes)
        return f"{where}: {len(self.nodes)} node(s) ({offer})"


_SESSION: RaySession | None = None


def current_session() -> RaySession | None:
    return _SESSION


def probe(address: str, timeout_s: float) -> None:
    """Whether the cluster answers: a TCP connection to the address, then a gRPC handshake
    (Ray Client and the GCS both speak gRPC), so a dead or silent address fails within
    ``timeout_s`` (``ray.init`` itself may wait minutes)."""
    host = address_host(address)
    if host is None:
        return
    port = int(address.rpartition(":")[2])
    deadline = time.monotonic() + timeout_s
    fix = ("check the address (ray://HOST:10001 for Ray Client, HOST:6379 for the GCS), that "
           "the cluster is up (`ray status` on its head) and that this machine reaches it (a "
           "port-forward for KubeRay); nothing ran")
    try:
        with socket.create_connection((host, port), timeout=min(timeout_s, 10.0)):
            pass
    except OSError as exc:
        raise RayUnavailableError(
            f"the Ray cluster at {address} does not answer ({type(exc).__name__}: "
            f"{exc.strerror or exc}); {fix}") from None
    if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
        return  # a TLS cluster: the plain handshake below would not tell
    import grpc

    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(
            timeout=max(0.5, deadline - time.monotonic()))
    except grpc.FutureTimeoutError:
        raise RayUnavailableError(
            f"the Ray cluster at {address} does not answer: a connection opens but no Ray "
            f"(gRPC) service replies within {timeout_s:g}s; {fix}") from None
    finally:
        channel.close()


def _alive_nodes(ray) -> list[dict[str, float]]:
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def _alive_ips(ray) -> list[str]:
    return [n.get("NodeManagerAddress", "") for n in ray.nodes() if n.get("Alive")]


@contextlib.contextmanager
def ray_session(address: str | None, *, connect_timeout_s: float | None = None,
                num_cpus: int | None = None, num_gpus: int | None = None
                ) -> Iterator[RaySession]:
    """Connect to the Ray cluster at ``address`` (or start a local one) for this command;
    disconnect (or stop it) at the end. Fails within ``connect_timeout_s``
    (``VF_RAY_CONNECT_TIMEOUT_S``, default 30) when the cluster does not answer."""
    global _SESSION
    ray = require_ray()
    if ray.is_initialized():
        raise RayUnavailableError("Ray is already initialised in this process; run one "
                                  "visionflows command at a time")
    timeout = connect_timeout_s or setting("VF_RAY_CONNECT_TIMEOUT_S")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from a run
    log = get_logger("ray")
    if address is not None:
        use_ray_auth()  # the cluster's token, when one is at hand (docs/ray.md)
        probe(address, timeout)  # a dead address fails here, within the timeout
    with prefect_api_for_workers() as api_url:
        kwargs: dict[str, Any] = {"runtime_env": worker_runtime_env(api_url,
                                                                    local=address is None),
                                  "namespace": "visionflows", "log_to_driver": True}
        if address is None:
            kwargs.update(include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus)
        else:
            kwargs["address"] = address
        outcome: dict[str, Any] = {}

        def connect() -> None:
            try:
                outcome["ctx"] = ray.init(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported below, in this thread
                outcome["error"] = exc

        if address is None:  # starting Ray here takes what it takes (no address to doubt)
            connect()
        else:  # it answered; a session may still take a while (a Ray Client server starts
            # a process per driver): wait for it, but not forever
            worker = threading.Thread(target=connect, daemon=True, name="vf-ray-init")
            worker.start()
            worker.join(INIT_TIMEOUT_S)
        if "ctx" not in outcome and "error" not in outcome:
            raise RayUnavailableError(
                f"the Ray cluster at {address} answered but did not open a session within "
                f"{INIT_TIMEOUT_S:g}s; look at its head's logs (`ray status`, "
                "/tmp/ray/session_latest/logs); nothing ran")
        if "error" in outcome:
            exc = outcome["error"]
            what = ("start a local Ray" if address is None
                    else f"connect to the Ray cluster at {address}")
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise RayUnavailableError(f"could not {what}: {type(exc).__name__}: {first}; "
                                      "nothing ran") from None
        try:
            _SESSION = RaySession(address, _alive_nodes(ray), _alive_ips(ray))
            if address is not None:  # a port-forwarded address may hide remote nodes
                check_nodes_reach(_SESSION.ips, address, api_url=api_url)
            log.info("task runner: %s", _SESSION.describe())
            yield _SESSION
        finally:
            _SESSION = None
            ray.shutdown()


def task_runner(kind: str, parallel: int = 1, session: RaySession | None = None):
    """The Prefect task runner for one flow run: a thread pool of ``parallel`` workers, or
    ``RayTaskRunner`` on the session's cluster (connected by :func:`ray_session`)."""
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=max(1, parallel))
    if kind == "ray":
        require_ray()
        from prefect_ray import RayTaskRunner

        if session is None:
            raise RayUnavailableError("--task-runner ray runs inside ray_session(): connect "
                                      "(or start Ray) first")
        return RayTaskRunner(address=session.address)
    raise ConfigError(f"unknown task runner {kind!r}; use one of: {', '.join(RUNNERS)}")
