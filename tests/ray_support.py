"""A real Ray cluster for the Ray tests: a head (``--num-gpus 2``: logical GPUs, which Ray
schedules without hardware) and a second node joined to it, on 127.0.0.1, stopped at the
end by the pids of the processes it started (never ``ray stop``, which kills by name).

Ray binds several components to 0.0.0.0 and the machine's own address even with
``--node-ip-address 127.0.0.1``, so these tests run only inside a network namespace whose
only interface is loopback (as root: ``unshare -n``, then ``ip link set lo up``; ``.ci/run``
does this): nothing can go anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NAMESPACE_HINT = ("the Ray tests run only in a network namespace with nothing but loopback "
                  "(Ray binds 0.0.0.0): as root, `unshare -n sh -c 'ip link set lo up && "
                  "python -m pytest -m ray'` (.ci/run does this)")


def loopback_only() -> bool:
    """Whether this process's network namespace has no interface but ``lo``."""
    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


def ray_missing() -> str | None:
    """Why Ray cannot be used here (not installed), or None."""
    for name in ("ray", "prefect_ray"):
        if importlib.util.find_spec(name) is None:
            return (f"Ray tests need ray and prefect-ray ({name} is missing): "
                    "pip install -e '.[ray]'")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (by parent pid, from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


@dataclass
class RayCluster:
    """Two Ray nodes started with ``ray start --block`` (so their processes stay ours)."""

    root: Path
    gcs_port: int = field(default_factory=free_port)
    client_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    # the Ray dashboard (the Jobs API: ``visionflows submit``) on 127.0.0.1, or none
    dashboard: bool = False
    dashboard_port: int = field(default_factory=free_port)
    # Ray's token authentication (on by default for new clusters) is off unless ``token``
    # is given: only loopback exists in the namespace, and its token loader caches its
    # mode per process (so a client process of a token cluster must be a new one).
    token: str | None = None

    @property
    def auth_env(self) -> dict[str, str]:
        if self.token:
            return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        return {"RAY_AUTH_MODE": "disabled"}

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        env = {**os.environ, **self.auth_env, "RAY_USAGE_STATS_ENABLED": "0"}
        # the nodes know nothing of this checkout: its code reaches the workers the way it
        # reaches a real cluster's, through the run's runtime environment (py_modules)
        env.pop("PYTHONPATH", None)
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
             "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
             "--object-store-memory", str(100 * 2**20), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))

    def start(self, timeout_s: float = 240) -> RayCluster:
        self._start("head", ["--head", "--port", str(self.gcs_port),
                             "--ray-client-server-port", str(self.client_port),
                             "--temp-dir", str(self.root / "t"), *self._dashboard_args(),
                             "--num-cpus", "4", "--num-gpus", "2"])
        self.wait_for_port(self.gcs_port, timeout_s)
        self.start_node(timeout_s)
        self.wait_for_port(self.client_port, timeout_s)
        if self.dashboard:
            self.wait_for_port(self.dashboard_port, timeout_s)
        return self

    def _dashboard_args(self) -> list[str]:
        if not self.dashboard:
            return ["--include-dashboard", "false"]
        return ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(self.dashboard_port),
                "--dashboard-agent-listen-port", str(free_port())]

    def start_node(self, timeout_s: float = 240) -> None:
        """The second node (2 CPUs, no GPU), joined to the head; again after a kill."""
        alive = 1 + sum(p.poll() is None for p in self.procs[1:])
        self._start(f"node{len(self.procs)}", [
            "--address", self.gcs_address, "--num-cpus", "2", "--num-gpus", "0",
            "--dashboard-agent-listen-port", str(free_port())])
        self.wait_for_nodes(alive + 1, timeout_s)

    def kill(self, which: int) -> float:
        """SIGKILL node ``which`` (0: the head) and every process below it; the time."""
        pids = descendants(self.procs[which].pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs[which].wait(timeout=10)
        return time.time()

    def node_pids(self, which: int) -> set[int]:
        return set(descendants(self.procs[which].pid))

    def wait_for_port(self, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.5)
        raise TimeoutError(f"Ray did not open port {port} in {timeout_s:g}s: {self.logs()}")

    def alive_nodes(self) -> list[dict]:
        """The dashboard's alive nodes (``node_id``, ``node_ip``, ``resources_total``)."""
        import requests

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = requests.get(f"{self.dashboard_url}/api/v0/nodes?limit=100", headers=headers,
                            timeout=10).json()
        return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_for_nodes(self, n: int, timeout_s: float) -> None:
        import ray

        deadline = time.monotonic() + timeout_s
        if self.dashboard:  # no Ray client in this process (its auth mode is per process)
            self.wait_for_port(self.dashboard_port, timeout_s)
            while time.monotonic() < deadline:
                self._check_alive()
                with contextlib.suppress(Exception):
                    if len(self.alive_nodes()) >= n:
                        return
                time.sleep(1)
            raise TimeoutError(f"{n} Ray nodes not up in {timeout_s:g}s: {self.logs()}")
        ray.init(address=self.gcs_address, log_to_driver=False)
        try:
            while time.monotonic() < deadline:
                self._check_alive()
                if sum(1 for node in ray.nodes() if node.get("Alive")) >= n:
                    return
                time.sleep(1)
        finally:
            ray.shutdown()
        raise TimeoutError(f"{n} Ray nodes not up in {timeout_s:g}s: {self.logs()}")

    def _check_alive(self) -> None:
        for p in self.procs[:2]:
            if p.poll() is not None and p.returncode != -signal.SIGKILL:
                raise RuntimeError(f"ray start exited with {p.returncode}: {self.logs()}")

    def removed_packages(self) -> list[str]:
        """Ray's log lines of a node removing an unpacked runtime-environment package to
        unpack it again (``download_and_unpack_package(..., overwrite=True)``: what its
        ``working_dir`` plugin does). The two nodes share one session folder, as two nodes
        started on one machine do, so such a removal pulls code from under whatever the
        other node runs from it."""
        return [ln.strip() for f in sorted(self.root.glob("t/session_*/logs/runtime_env*.log"))
                for ln in f.read_text(errors="replace").splitlines() if " with pkg_file " in ln]

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}"
                         for f in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        """SIGTERM every process the two ``ray start`` started, then SIGKILL what is left
        after 3 s (``ray start --block`` itself outlives a SIGTERM: waiting 15 s for it cost
        every cluster 15 s)."""
        pids = [pid for p in self.procs for pid in descendants(p.pid)]
        for sig, grace_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(
                    Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
                time.sleep(0.2)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:].split()[0] == b"Z"


def new_cluster_root() -> Path:
    # short: Ray's unix socket paths live below it (the limit is 107 bytes)
    return Path(tempfile.mkdtemp(prefix="vfray-", dir="/tmp"))


def ray_marks() -> list:
    """The marks of a Ray test module: ``ray``, skipped outside a loopback-only namespace
    or without Ray installed (each with the reason)."""
    import pytest

    return [pytest.mark.ray,
            pytest.mark.skipif(not loopback_only(), reason=NAMESPACE_HINT),
            pytest.mark.skipif(ray_missing() is not None, reason=ray_missing() or "")]
