"""The ``docker`` launcher: one task per container, through the Docker SDK.

For each task it creates a container from the image of the task's family
(``visionflows-tasks:<version>-<code hash>`` unless ``VF_IMAGE*`` says otherwise), copies
the task's config into it as a file, and runs the image's entrypoint
``python -m tasks <task> --config FILE --store URI --manifest-out FILE``.

- Store credentials and endpoint travel as environment variables only: never in the
  command line, the labels or the logs (log lines are redacted before they are emitted).
- ``network_mode="host"``: the task reaches MinIO, moto or Prefect on 127.0.0.1 exactly as
  the launching process does. A ``file://`` store folder is bind-mounted at the same path.
- Limits from the step's row of the question's resource table (flows pass it): memory (no
  swap beyond it), ``/dev/shm``, CPUs, time limit, and GPUs (a share of one asks for a
  whole device); ``VF_DOCKER_*`` settings override them. A timeout kills the container
  and reports it.
- GPUs without a table entry: ``device_requests`` follow the task config's ``device``
  (``cuda`` -> one GPU, ``cuda:N`` -> all, so index N exists; ``auto`` -> one GPU when the
  engine has the NVIDIA runtime) unless ``VF_DOCKER_GPUS`` (``none``, ``all``, a count, or
  ``device=0,1``) says so.
- Locked down: a read-only root filesystem (``VF_DOCKER_READ_ONLY=0`` turns it off) with a
  tmpfs at ``/tmp`` where every writable directory points (``HOME``, ``XDG_CACHE_HOME``,
  ``TORCH_HOME``, ``MPLCONFIGDIR``, ``YOLO_CONFIG_DIR``, the task's work folders), the
  image's non-root user (a ``file://`` store's owner where one is mounted), all
  capabilities dropped and ``no-new-privileges``. The config goes in and the manifest comes
  out through a small anonymous volume at ``/vf-io``, removed with the container.
- The container's output is streamed live, line by line, into the ``visionflows.launcher``
  logger (which Prefect shows in the task run's log), a non-zero exit code becomes a
  ``LaunchError`` with the last log lines, and the container is removed afterwards.

Settings come from the environment (``DockerOptions.from_env``) so flows choose the docker
launcher by a parameter and nothing else; see docs/deployment.md, "Containerized tasks".
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import secrets
import tarfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

import flows.launchers.images as images
import flows.launchers.tracking as tracking
from flows.launchers.output import iter_lines, quote_tail, relay
from tasks.core.config import Config, validate
from tasks.core.errors import VisionflowsError, error_from_record
from tasks.core.log import get_logger
from tasks.core.resources import Resources
from tasks.core.runtime import STOP, Manifest, StopRequested
from tasks.core.settings import raw, setting
from tasks.core.store import LocalStore, open_store
from tasks.registry import resolve

# Config in, manifest out: an anonymous volume (writable under a read-only root, readable
# after the container exits, unlike a tmpfs), with out/ open to whichever uid the task runs as.
IO_DIR = "/vf-io"
CONFIG_DIR = IO_DIR
CONFIG_NAME = "vf-task-config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_NAME}"
MANIFEST_PATH = f"{IO_DIR}/out/vf-task-manifest.json"
ERROR_PATH = f"{IO_DIR}/out/vf-task-error.json"
SCRATCH = "/tmp"
# Where tools write under a read-only root: all inside the /tmp tmpfs.
WRITABLE_ENV = {"HOME": SCRATCH, "XDG_CACHE_HOME": f"{SCRATCH}/.cache",
                "TORCH_HOME": f"{SCRATCH}/.cache/torch", "MPLCONFIGDIR": f"{SCRATCH}/matplotlib",
                "YOLO_CONFIG_DIR": f"{SCRATCH}/ultralytics"}
CACHE_MOUNT = "/vf-cache"
LABEL = "org.visionflows"

# What a task needs from the launching process's environment: the store's endpoint, region
# and credentials, the offline switch, proxies. Nothing else leaks into containers.
FORWARD_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_REGION", "VF_S3_ENDPOINT_URL", "VF_S3_REGION", "VF_S3_MAX_ATTEMPTS", "VF_OFFLINE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)

class LaunchError(VisionflowsError):
    """A task container could not be started, failed, or ran past its timeout."""


GpuSetting = Literal["auto", "none", "all"] | int | list[str]


class DockerOptions(Config):
    """How the docker launcher runs containers (from ``VF_DOCKER_*`` / ``VF_IMAGE*``)."""

    image: str | None = Field(None, description="image for every task family (VF_IMAGE)")
    images: dict[str, str] = Field(default_factory=dict,
                                   description="image per family (VF_IMAGE_TORCH, ...)")
    gpus: GpuSetting = Field("auto", description="auto | none | all | COUNT | device=ID,...")
    memory: str | None = Field(None, description="memory limit, e.g. 16g (no swap beyond it)")
    shm_size: str | None = Field("2g", description="/dev/shm size (DataLoader workers)")
    cpus: float | None = Field(None, gt=0)
    timeout_s: float | None = Field(6 * 3600.0, gt=0, description="kill a task after this")
    user: str = Field("auto", description="auto: the image's user; file stores: their owner")
    mounts: list[str] = Field(default_factory=list,
                              description="extra bind mounts HOST:CONTAINER[:ro]")
    cache_dir: str | None = Field(None, description="host folder mounted as the task cache")
    pull: bool = Field(False, description="pull a missing image instead of failing")
    keep: bool = Field(False, description="keep finished containers (debugging)")
    log_tail: int = Field(20, gt=0, description="log lines quoted in a failure")
    read_only: bool = Field(True, description="read-only root filesystem, tmpfs at /tmp")
    tmpfs_size: str | None = Field(None, description="size of the /tmp tmpfs, e.g. 8g (default: "
                                   "the kernel's, half the RAM); it counts toward the memory "
                                   "limit, so mount a cache (VF_DOCKER_CACHE) for big datasets")

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("a GPU count must be >= 0")
        if isinstance(v, list) and not v:
            raise ValueError("give at least one device id")
        return v

    @field_validator("mounts")
    @classmethod
    def _mounts(cls, v: list[str]) -> list[str]:
        for m in v:
            parts = m.split(":")
            if len(parts) not in (2, 3) or not all(parts[:2]) or (
                    len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(f"bad mount {m!r}: use HOST:CONTAINER or HOST:CONTAINER:ro")
        return v

    def with_resources(self, res: Resources | None) -> DockerOptions:
        """The step's limits from the resource table where ``VF_DOCKER_*`` did not set them:
        memory, ``/dev/shm``, CPUs, time limit, and GPUs (a share of one asks for a whole
        device: containers cannot split one; 0 leaves ``auto``, from the config's device)."""
        if res is None:
            return self
        table = {"memory": res.memory, "shm_size": res.shm, "cpus": res.cpus,
                 "timeout_s": res.time_limit_s}
        if res.gpus > 0:
            table["gpus"] = math.ceil(res.gpus)
        update = {k: v for k, v in table.items() if k not in self.model_fields_set}
        return self.model_copy(update=update) if update else self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DockerOptions:
        """Options from ``VF_IMAGE``, ``VF_IMAGE_<FAMILY>`` and ``VF_DOCKER_*`` variables."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        if image := raw("VF_IMAGE", env):
            data["image"] = image
        fams = {fam: value for fam in sorted({images.DEFAULT_FAMILY, *images.FAMILIES.values()})
                if (value := raw(f"VF_IMAGE_{fam.upper()}", env))}
        if fams:
            data["images"] = fams
        if gpus := raw("VF_DOCKER_GPUS", env):
            data["gpus"] = parse_gpus(gpus)
        for key, name in (("memory", "VF_DOCKER_MEMORY"), ("shm_size", "VF_DOCKER_SHM_SIZE"),
                          ("cpus", "VF_DOCKER_CPUS"), ("timeout_s", "VF_DOCKER_TIMEOUT_S"),
                          ("user", "VF_DOCKER_USER"), ("cache_dir", "VF_DOCKER_CACHE"),
                          ("log_tail", "VF_DOCKER_LOG_TAIL"),
                          ("tmpfs_size", "VF_DOCKER_TMPFS_SIZE")):
            if value := raw(name, env):
                data[key] = None if value.lower() in ("none", "off") else value
        if mounts := raw("VF_DOCKER_MOUNTS", env):
            data["mounts"] = [m.strip() for m in mounts.split(",") if m.strip()]
        for key, name in (("pull", "VF_DOCKER_PULL"), ("keep", "VF_DOCKER_KEEP"),
                          ("read_only", "VF_DOCKER_READ_ONLY")):
            if raw(name, env) is not None:
                data[key] = setting(name, env)
        return validate(cls, data, what="docker launcher (VF_DOCKER_* / VF_IMAGE*)")


def parse_gpus(text: str) -> GpuSetting:
    """``auto``, ``none``, ``all``, ``2`` (a count) or ``device=0,1`` (ids), as ``--gpus``."""
    text = text.strip()
    if text in ("auto", "none", "all"):
        return text  # type: ignore[return-value]
    if text.isdigit():
        return int(text)
    if text.startswith("device="):
        ids = [i.strip() for i in text[len("device="):].split(",") if i.strip()]
        if ids:
            return ids
    raise VisionflowsError(f"VF_DOCKER_GPUS={text!r}: use auto, none, all, a count (2) or "
                           "device ids (device=0,1)")


def gpu_requests(gpus: GpuSetting, device: Any, engine_has_gpus: bool) -> list[dict]:
    """The ``device_requests`` for a task: explicit ``gpus``, else the config's ``device``."""
    from docker.types import DeviceRequest

    def req(count: int | None = None, ids: list[str] | None = None) -> dict:
        # As `docker run --gpus`: no driver named, the engine picks the one serving "gpu".
        return DeviceRequest(count=count, device_ids=ids, capabilities=[["gpu"]])

    if gpus == "none" or gpus == 0:
        return []
    if gpus == "all":
        return [req(count=-1)]
    if isinstance(gpus, int):
        return [req(count=gpus)]
    if isinstance(gpus, list):
        return [req(ids=[str(g) for g in gpus])]
    # auto: what the task config asks for
    dev = "" if device is None else str(device)
    if dev == "cuda":
        return [req(count=1)]
    if dev.startswith("cuda:"):
        return [req(count=-1)]  # the index names a host GPU, so it must exist inside
    if dev == "auto" and engine_has_gpus:
        return [req(count=1)]
    return []


def image_for(task: str, opts: DockerOptions) -> str:
    """The image for ``task``: its family's image, else ``image``, else the default tag."""
    return opts.images.get(images.family(task)) or opts.image or images.default_image()


def _parse_mount(spec: str) -> tuple[str, dict]:
    host, bind, *mode = spec.split(":")
    return os.path.abspath(os.path.expanduser(host)), {"bind": bind,
                                                       "mode": mode[0] if mode else "rw"}


def container_spec(task: str, cfg: Mapping[str, Any], store: str, opts: DockerOptions, *,
                   env: Mapping[str, str] | None = None, engine_has_gpus: bool = False,
                   name: str | None = None, extra_env: Mapping[str, str] | None = None
                   ) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create`` (pure: no engine needed).

    ``env`` is the environment forwarded from (default: this process's); ``extra_env`` adds
    the step's own variables (thread counts).
    """
    from docker.types import Mount

    env = os.environ if env is None else env
    st = open_store(store)
    image = image_for(task, opts)
    environment = {k: env[k] for k in FORWARD_ENV if env.get(k)}
    environment.update(extra_env or {})
    environment.update({"PYTHONUNBUFFERED": "1", "VF_IMAGE_TAG": image,
                        "VF_PROGRESS_LINES": "1"})
    volumes: dict[str, dict] = {}
    user = None if opts.user == "auto" else opts.user
    if isinstance(st, LocalStore):
        root = str(st.root)
        volumes[root] = {"bind": root, "mode": "rw"}
        if user is None and os.path.isdir(root):
            stat = os.stat(root)  # write as the folder's owner, so the host can read it back
            user = f"{stat.st_uid}:{stat.st_gid}"
    if opts.cache_dir:
        volumes[os.path.abspath(os.path.expanduser(opts.cache_dir))] = {
            "bind": CACHE_MOUNT, "mode": "rw"}
        environment["VF_CACHE_DIR"] = CACHE_MOUNT
    for m in opts.mounts:
        host, bind = _parse_mount(m)
        volumes[host] = bind
    if user is not None:
        environment["HOME"] = SCRATCH  # an arbitrary uid has no home in the image
    tmpfs = None
    if opts.read_only:
        environment.update(WRITABLE_ENV)
        tmpfs = {SCRATCH: "rw,exec,nosuid,nodev,mode=1777"  # exec: triton/inductor builds
                 + (f",size={opts.tmpfs_size}" if opts.tmpfs_size else "")}
    name = name or f"vf-{re.sub(r'[^a-zA-Z0-9_.-]', '-', task)}-{secrets.token_hex(4)}"
    spec: dict[str, Any] = {
        "image": image,
        "command": [task, "--config", CONFIG_PATH, "--store", st.uri,
                    "--manifest-out", MANIFEST_PATH, "--error-out", ERROR_PATH],
        "name": name,
        "labels": {f"{LABEL}.task": task, f"{LABEL}.launcher": "docker",
                   f"{LABEL}.family": images.family(task)},
        "environment": environment,
        "network_mode": "host",
        "init": True,  # tini as PID 1: signals reach python, DataLoader zombies are reaped
        "detach": True,
        "volumes": volumes,
        "mounts": [Mount(target=IO_DIR, source=None, type="volume")],
        "read_only": opts.read_only,
        "tmpfs": tmpfs,
        "cap_drop": ["ALL"],  # a task needs no capability, root or not
        "security_opt": ["no-new-privileges"],
        "user": user,
        "device_requests": gpu_requests(opts.gpus, cfg.get("device"), engine_has_gpus) or None,
        "shm_size": opts.shm_size,
        "mem_limit": opts.memory,
        "memswap_limit": opts.memory,  # no swap beyond the limit
        "nano_cpus": int(opts.cpus * 1e9) if opts.cpus else None,
    }
    return {k: v for k, v in spec.items() if v not in (None, {})}


def _tar_one(name: str, data: bytes, dirs: Iterable[str] = ()) -> bytes:
    """A tar of one file (0644) and empty folders anyone may write to (1777)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o1777, int(time.time())
            tar.addfile(info)
    return buf.getvalue()


def _untar_one(chunks: Iterable[bytes]) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        fh = tar.extractfile(member)
        assert fh is not None
        return fh.read()


def engine_has_gpus(client) -> bool:
    """Whether the engine can hand out NVIDIA GPUs (NVIDIA runtime or CDI devices)."""
    try:
        info = client.info()
    except Exception:
        return False
    runtimes = json.dumps(info.get("Runtimes") or {})
    devices = json.dumps(info.get("DiscoveredDevices") or [])
    return "nvidia" in runtimes or "nvidia.com/gpu" in devices


def connect():
    """A Docker client for ``DOCKER_HOST`` or the local socket; LaunchError when unreachable."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise LaunchError(
            f"cannot reach the Docker engine ({os.environ.get('DOCKER_HOST') or 'the local socket'}"
            f"): {exc}. Start it (`systemctl start docker`, or `dockerd --bridge=none "
            "--iptables=false &`) or use --launcher local") from None
    return client


def _image_id(found, image: str) -> str:
    """An image's id; its reference where the engine gave no id (a stand-in engine)."""
    return getattr(found, "id", None) or image


def ensure_image(client, image: str, pull: bool) -> str:
    """The id (``sha256:...``) of ``image`` on the engine, pulled first with ``pull``;
    ``LaunchError`` naming the fix when it is not there."""
    import docker

    try:
        return _image_id(client.images.get(image), image)
    except docker.errors.ImageNotFound:
        pass
    if pull:
        try:
            return _image_id(client.images.pull(image), image)
        except docker.errors.APIError as exc:
            raise LaunchError(f"could not pull {image}: {exc.explanation or exc}") from None
    if image == images.default_image():
        raise LaunchError(
            f"the task image for this code, {image}, is not built (its tag is the version "
            "plus a hash of the code): build it with `images/build.sh` (or "
            "`images/build-local-base.sh` without a registry), or set VF_IMAGE")
    raise LaunchError(f"image {image} is not on the Docker engine: build or pull it, or fix "
                      "VF_IMAGE / VF_IMAGE_<FAMILY> (VF_DOCKER_PULL=1 pulls missing images)")


def image_id(task: str, client=None) -> str:
    """The id of the image the docker launcher runs ``task`` in (a step's identity under
    this launcher: the image holds its code and its environment)."""
    opts = DockerOptions.from_env()
    return ensure_image(client or connect(), image_for(task, opts), opts.pull)


def preflight(task: str = "classifier.train") -> str:
    """Fail fast, before a flow starts: settings parse, engine reachable, image present.

    Returns the image ``task`` would run in.
    """
    opts = DockerOptions.from_env()
    client = connect()
    image = image_for(task, opts)
    ensure_image(client, image, opts.pull)
    return image


def _failure(task: str, what: str, tail: Iterable[str]) -> LaunchError:
    return LaunchError(f"task {task} {what}. {quote_tail(tail)}")


def launch_docker(task: str, cfg: Mapping[str, Any], store: str | None,
                  timeout_s: float | None = None, *, client=None,
                  options: DockerOptions | None = None, env: Mapping[str, str] | None = None,
                  resources: Resources | None = None) -> Manifest:
    """Run ``task`` in a container and return its manifest; see the module docstring.

    ``env`` adds variables for the task (thread counts); ``resources`` (the step's row of
    the question's resource table) gives the limits ``VF_DOCKER_*`` does not set.
    """
    import docker

    _func, cfg_cls = resolve(task)
    validate(cfg_cls, cfg, what=f"task {task!r}")  # fail before starting anything
    opts = (options or DockerOptions.from_env()).with_resources(resources)
    timeout = timeout_s if timeout_s is not None else opts.timeout_s
    client = client or connect()
    log = get_logger("launcher")
    st = open_store(store)
    if isinstance(st, LocalStore):
        st.root.mkdir(parents=True, exist_ok=True)
    spec = container_spec(task, cfg, st.uri, opts, extra_env=env,
                          engine_has_gpus=opts.gpus == "auto" and cfg.get("device") == "auto"
                          and engine_has_gpus(client))
    # the image's real id reaches the task: its manifest's identity names the image it ran
    spec["environment"]["VF_IMAGE_ID"] = ensure_image(client, spec["image"], opts.pull)
    try:
        container = client.containers.create(**spec)
    except docker.errors.APIError as exc:
        raise LaunchError(f"could not create a container for {task} from {spec['image']}: "
                          f"{exc.explanation or exc}") from None
    tracking.track("container", container.id)
    name = spec["name"]
    timed_out = threading.Event()
    timer: threading.Timer | None = None
    tail: deque[str] = deque(maxlen=opts.log_tail)
    try:
        container.put_archive(CONFIG_DIR, _tar_one(CONFIG_NAME, json.dumps(cfg).encode(),
                                                   dirs=["out"]))
        try:
            container.start()
        except docker.errors.APIError as exc:
            msg = exc.explanation or str(exc)
            hint = ""
            if spec.get("device_requests") and ("device driver" in msg or "gpu" in msg.lower()):
                hint = (" -- the engine cannot provide GPUs: install the NVIDIA Container "
                        "Toolkit, or run on CPU (set device=cpu, or VF_DOCKER_GPUS=none)")
            raise LaunchError(f"could not start {task} in {name}: {msg}{hint}") from None
        gpus = spec.get("device_requests")
        log.info("%s: container %s started from %s%s", task, name, spec["image"],
                 f" with GPU request {[dict(r) for r in gpus]}" if gpus else "")

        if timeout:
            def _kill() -> None:
                timed_out.set()
                with contextlib.suppress(docker.errors.APIError):  # it may have just ended
                    container.kill()

            timer = threading.Timer(timeout, _kill)
            timer.daemon = True
            timer.start()
        # Logged from this thread, so Prefect attributes the lines to the running task.
        relay(iter_lines(container.logs(stream=True, follow=True)), log, task, tail)
        code = container.wait().get("StatusCode", -1)
        if timer is not None:
            timer.cancel()
        if STOP.is_set() and code != 0:
            raise StopRequested(f"task {task} was stopped (the run is being interrupted)")
        if timed_out.is_set() and code != 0:
            raise _failure(task, f"timed out after {timeout:g}s in container {name} and was "
                                 "killed (if it needs longer: --set "
                                 "resources.<kind>.time_limit_s=SECONDS for a flow's step, "
                                 "or VF_DOCKER_TIMEOUT_S)", tail)
        if code != 0:
            container.reload()
            if container.attrs.get("State", {}).get("OOMKilled"):
                raise _failure(task, f"was killed for memory in container {name} (limit "
                                     f"{opts.memory}; raise it: --set "
                                     "resources.<kind>.memory=... for a flow's step, or "
                                     "VF_DOCKER_MEMORY)", tail)
            try:  # the task's own error, as the same class (see tasks.core.errors)
                record = json.loads(_untar_one(container.get_archive(ERROR_PATH)[0]))
            except (docker.errors.NotFound, json.JSONDecodeError, StopIteration):
                record = None
            if record is not None:
                raise error_from_record(record)
            raise _failure(task, f"failed in container {name} (image {spec['image']}) with "
                                 f"exit code {code}", tail)
        try:
            stream, _stat = container.get_archive(MANIFEST_PATH)
            data = _untar_one(stream)
        except docker.errors.NotFound:
            raise _failure(task, f"exited 0 in container {name} but wrote no manifest "
                                 f"at {MANIFEST_PATH}", tail) from None
        manifest = Manifest.model_validate(json.loads(data))
        log.info("%s: container %s finished in %.1fs", task, name, manifest.duration_s)
        return manifest
    finally:
        if timer is not None:
            timer.cancel()
        if not opts.keep:
            try:
                container.remove(force=True, v=True)  # v: the /vf-io volume too
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                log.warning("could not remove container %s: %s", name, exc)
            else:
                tracking.untrack("container", container.id)
        else:
            tracking.untrack("container", container.id)
