"""``visionflows doctor``: check the Prefect API, the store, Docker and GPUs; say what to fix
(``--settings``: list every ``VF_*`` setting instead).

Each check prints one line, ``ok``, ``warn`` (works, but something is missing for some use)
or ``FAIL`` (what you asked for will not work), followed by the fix. Exit code 1 when any
check fails.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass

from tasks.core.errors import VisionflowsError


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[self.status]
        text = f"{mark} {self.name}: {self.detail}"
        label = "hint" if self.status == "ok" else "fix"
        return text + (f"\n       {label}: {self.fix}" if self.fix else "")


def check_prefect() -> Check:
    """The Prefect API from PREFECT_API_URL (env or profile): reachable and healthy?"""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return Check("prefect", "ok", "PREFECT_API_URL is not set: `visionflows run` starts a "
                     "temporary local server per run (no UI history)",
                     "for the stack: export PREFECT_API_URL=http://127.0.0.1:4200/api")
    import httpx

    try:
        resp = httpx.get(url.rstrip("/") + "/health", timeout=3)
    except httpx.HTTPError as exc:
        return Check("prefect", "fail", f"API {url} is unreachable ({type(exc).__name__})",
                     "start it: `docker compose -f infra/docker-compose.yml up -d` or "
                     "`prefect server start`; or unset PREFECT_API_URL")
    if resp.status_code != 200:
        return Check("prefect", "fail", f"API {url}/health answered HTTP {resp.status_code}",
                     "check the server's logs (`docker compose logs prefect-server`)")
    # /health answers anyone; a call behind the server's basic auth says whether ours works
    auth = get_current_settings().api.auth_string
    headers = {}
    if auth is not None:
        token = base64.b64encode(auth.get_secret_value().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        resp = httpx.get(url.rstrip("/") + "/admin/version", headers=headers, timeout=3)
    except httpx.HTTPError as exc:
        return Check("prefect", "fail", f"API {url} is unreachable ({type(exc).__name__})",
                     "check the server's logs")
    if resp.status_code == 401:
        return Check("prefect", "fail", f"API {url} answered HTTP 401 (unauthorized)",
                     "the server has basic auth on: set PREFECT_API_AUTH_STRING=user:password "
                     "(compose: PREFECT_AUTH_STRING in infra/.env; Kubernetes: the Secret "
                     "prefect-auth)")
    return Check("prefect", "ok", f"API {url} is healthy"
                 + (" (basic auth accepted)" if auth is not None else ""))


def check_store(uri: str | None) -> Check:
    """The store: reachable, bucket present, and writable (a probe object is written, read
    back and deleted)."""
    from tasks.core.log import redact
    from tasks.core.store import S3Store, open_store

    try:
        st = open_store(uri)
        st.check()  # reachable, bucket present / folder writable with free space
        key = f".visionflows-doctor/{secrets.token_hex(6)}"
        st.put_bytes(key, b"ok")
        ok = st.get_bytes(key) == b"ok"
        st.delete(key)
    except VisionflowsError as exc:
        return Check("store", "fail", redact(str(exc)),
                     "see the message; for MinIO: `docker compose -f infra/docker-compose.yml "
                     "up -d` and the VF_S3_ENDPOINT_URL / AWS_* values from infra/.env")
    except OSError as exc:
        return Check("store", "fail", f"{uri or 'default store'}: {exc}",
                     "pick a writable folder with --store file://DIR")
    if not ok:
        return Check("store", "fail", f"{st.uri}: a probe object read back differently")
    where = f" at {st.endpoint_url}" if isinstance(st, S3Store) and st.endpoint_url else ""
    return Check("store", "ok", f"{st.uri}{where} is writable")


def check_docker() -> list[Check]:
    """The Docker engine, the task image for this code, and GPU support in the engine."""
    from flows.launchers import images
    from flows.launchers.container import DockerOptions, LaunchError, connect, engine_has_gpus

    try:
        client = connect()
    except LaunchError as exc:
        return [Check("docker", "warn", f"engine not reachable ({str(exc).split(':')[0]}); "
                      "only needed for --launcher docker",
                      "start it: `systemctl start docker` or `dockerd --bridge=none "
                      "--iptables=false &`")]
    out = [Check("docker", "ok", f"engine {client.version().get('Version', '?')} reachable")]
    try:
        opts = DockerOptions.from_env()
    except VisionflowsError as exc:
        return [*out, Check("docker-settings", "fail", str(exc), "fix the VF_DOCKER_* value")]
    import docker

    by_image: dict[str, list[str]] = {}
    for fam in sorted({images.DEFAULT_FAMILY, *images.FAMILIES.values()}):
        image = opts.images.get(fam) or opts.image or images.default_image()
        by_image.setdefault(image, []).append(fam)
    for image, fams in by_image.items():
        label = f"image[{','.join(fams)}]"
        try:
            client.images.get(image)
            out.append(Check(label, "ok", f"{image} is present"))
        except docker.errors.ImageNotFound:
            out.append(Check(label, "warn", f"{image} (this code) is not built",
                             "images/build.sh (registry) or images/build-local-base.sh "
                             "(no registry); or set VF_IMAGE"))
    if engine_has_gpus(client):
        out.append(Check("docker-gpu", "ok", "the engine has the NVIDIA runtime/CDI devices"))
    else:
        out.append(Check("docker-gpu", "warn", "the engine cannot hand out GPUs: task "
                         "containers run on CPU",
                         "install the NVIDIA Container Toolkit and restart the engine"))
    return out


def check_gpu() -> Check:
    """GPUs visible to this process (in-process and subprocess launchers)."""
    try:
        import torch
    except ImportError:
        return Check("gpu", "warn", "torch is not installed here", "pip install -e .")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("gpu", "ok", f"CUDA {torch.version.cuda}: {names}")
    return Check("gpu", "warn", f"no CUDA GPU visible (torch {torch.__version__}, "
                 f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): "
                 "smoke runs are fine, the full profile will be slow",
                 "install the NVIDIA driver, or run where a GPU is visible")


def run_settings(out=print) -> int:
    """``visionflows doctor --settings``: every ``VF_*`` setting with its type, default,
    current value (secrets masked) and help; 1 when a set value does not parse."""
    from tasks.core.settings import check_all, listing, table

    out(listing().rstrip("\n"))
    bad = check_all()
    out(f"\n{len(table())} settings, {len(bad)} invalid" + (f" ({', '.join(bad)})" if bad else "")
        + "; docs/settings.md describes them")
    return 1 if bad else 0


def run_doctor(store: str | None = None, docker: bool = True, out=print) -> int:
    checks = [check_prefect(), check_store(store)]
    if docker:
        checks += check_docker()
    checks.append(check_gpu())
    for c in checks:
        out(c.line())
    failed = [c.name for c in checks if c.status == "fail"]
    warned = [c.name for c in checks if c.status == "warn"]
    out(f"\n{len(checks) - len(failed) - len(warned)} ok, {len(warned)} warnings, "
        f"{len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0
