"""Shared fixtures: S3 (moto on 127.0.0.1, or a real MinIO via VF_TEST_S3_ENDPOINT), stores,
a Prefect test harness, an isolated cache, and a guard that refuses non-loopback network."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

# Offline Prefect, set before any test imports prefect.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "visionflows")
# Tasks called directly (outside a flow) log too; Prefect's API handler need not warn.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# The suite runs more torch processes than there are cores (two pytest workers, and the
# task processes and servers they start): torch's OpenMP threads then spin-wait for cores
# other processes hold. Waiting passively gives the same numbers for about half the CPU
# (3 trainings at once on 2 cores: 22 CPU-s instead of 41). Set before any test imports
# torch; the processes the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if (isinstance(host, str) and self.family in (socket.AF_INET, socket.AF_INET6)
            and not (host.startswith("127.") or host in ("localhost", "::1"))):
        raise OSError(f"test network guard: connection to {host} refused (tests are offline)")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _offline_network():
    """No test may reach beyond this machine: downloads must fail fast and visibly."""
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vf-cache")
    old = os.environ.get("VF_CACHE_DIR")
    os.environ["VF_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("VF_CACHE_DIR", None)
    else:
        os.environ["VF_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 endpoint: ``VF_TEST_S3_ENDPOINT`` (a real MinIO) or moto's server on 127.0.0.1."""
    external = os.environ.get("VF_TEST_S3_ENDPOINT")
    saved = {k: os.environ.get(k) for k in
             ("VF_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_DEFAULT_REGION")}
    server = None
    if external:
        endpoint = external
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "minioadmin")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "minioadmin")
    else:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        os.environ["AWS_ACCESS_KEY_ID"] = "testing-key-id"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "testing-secret-value"
    os.environ["VF_S3_ENDPOINT_URL"] = endpoint
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    yield endpoint
    if server is not None:
        server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"vf-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_uri(s3_endpoint) -> str:
    """A fresh bucket with a prefix, as a store URI."""
    return f"s3://{make_bucket(s3_endpoint)}/vf"


@pytest.fixture(params=["file", "s3"])
def store_uri(request, tmp_path) -> str:
    """Each store contract test runs against both backends."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return request.getfixturevalue("s3_uri")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A temporary Prefect API for flow tests: the server the CLI starts for itself
    (:mod:`flows.server`), on a SQLite database of its own; this process's Prefect settings
    point at it (a CLI run in a subprocess starts its own, as a user's command would).

    Not ``prefect.testing.utilities.prefect_test_harness``: its teardown drains Prefect's
    log and event workers without a time limit and was seen to hang there for good; this
    one drains with the CLI's time limit, then stops the server by its pid."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    from flows.server import TemporaryServer, client_settings
    from flows.session import Session

    db = tmp_path_factory.mktemp("prefect") / "prefect.db"
    with temporary_settings(updates={
            PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{db}"}):
        server = TemporaryServer(startup_timeout_s=120)
        url = server.start()
    _TEMPLATE_DB["db"] = _snapshot(db)
    # Prefect's client-side events (its event feed; nothing here reads them) are dropped:
    # a backlog left at the end would be retried against the stopped server for minutes
    from prefect.events.clients import NullEventsClient
    from prefect.events.worker import EventsWorker

    EventsWorker.set_client_override(NullEventsClient)
    try:
        with temporary_settings(updates=client_settings(url)):  # as the CLI's own
            yield url
            Session._drain_prefect()
    finally:
        server.stop()
        EventsWorker.set_client_override(None)


# A copy of the harness's database as the server left it after its migrations, before any
# flow ran: a new Prefect home starts from it (migrating a new SQLite database costs ~6 CPU
# seconds a server start).
_TEMPLATE_DB: dict[str, Path] = {}


def _snapshot(db: Path) -> Path:
    """A consistent copy of the SQLite database ``db`` (its backup API), beside it."""
    import sqlite3

    copy = db.with_name("template.db")
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return copy


@pytest.fixture()
def prefect_home(prefect_harness, tmp_path) -> Path:
    """A new ``PREFECT_HOME`` for a child process that starts its own Prefect server: its
    database already migrated (a copy of the harness's, before any flow ran)."""
    import shutil

    home = tmp_path / "prefect-home"
    home.mkdir()
    shutil.copyfile(_TEMPLATE_DB["db"], home / "prefect.db")
    return home


@pytest.fixture()
def shared_prefect(prefect_harness, monkeypatch):
    """``visionflows`` runs in child processes use the session's Prefect server
    (``PREFECT_API_URL`` in their environment, as a user of the stack sets it) instead of each
    starting a temporary one (~14 s and ~5 CPU-s a start on 2 loaded cores): for the tests
    about something else. The temporary server itself is tested where it is the point:
    tests/test_signals.py and the README's ``run all`` (tests/test_final_report.py)."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_harness)
    return prefect_harness


# Tiny smoke runs shared by the flow tests and the final-report test (one store).
Q1_MLP_SMALL = {"data": {"n_train": 600, "n_test": 200}, "epochs": 2}
Q1_CNN_SMALL = {"data": {"n_train": 400, "n_test": 200}, "epochs": 1}


@pytest.fixture(scope="session")
def smoke_store(prefect_harness, s3_endpoint):
    return f"s3://{make_bucket(s3_endpoint)}/vf"


@pytest.fixture(scope="session")
def q1_mlp_run(smoke_store):
    from flows.q1_mlp import q1_mlp

    return smoke_store, q1_mlp(profile="smoke", store=smoke_store, overrides=Q1_MLP_SMALL)


@pytest.fixture(scope="session")
def q1_cnn_run(smoke_store):
    from flows.q1_cnn import q1_cnn

    return smoke_store, q1_cnn(profile="smoke", store=smoke_store, overrides=Q1_CNN_SMALL)


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker client and the task image for this code; skip with the reason otherwise."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no SDK, no socket, engine down
        pytest.skip(f"no Docker engine reachable ({type(exc).__name__}): start one, e.g. "
                    "`dockerd --bridge=none --iptables=false &`, to run the container tests")
    from flows.launchers.container import DockerOptions, image_for

    image = image_for("classifier.train", DockerOptions.from_env())
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        pytest.skip(f"task image {image} (this code) is not built: run "
                    "images/build-local-base.sh (no registry) or images/build.sh")
    yield client, image
    leftovers = client.containers.list(all=True, filters={"label": "org.visionflows.launcher"})
    assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The files whose tests run whole flows for minutes, longest first (`--durations`, 2 cores).
# pytest-xdist (`--dist loadfile`) hands files to its workers in collection order, so these
# start at once on different workers instead of one of them ending the run alone. Only the
# order changes: a file missing here runs after them, in its usual place.
LONG_FILES = ("test_verify.py", "test_final_report.py", "test_integrity.py",
              "test_reliability.py", "test_signals.py", "test_compare.py", "test_gpu_check.py",
              "test_deployments.py", "test_q4_flow.py", "test_q2_flow.py",
              "test_flow_q1_mlp.py", "test_progress.py", "test_q4_train.py")


# Files that read the same session-scoped smoke runs (``q1_mlp_run``, ``q1_cnn_run`` on
# ``smoke_store``): one work unit, so that those runs are made once and not on each worker.
SHARED_RUNS = frozenset({"test_final_report.py", "test_flow_q1_mlp.py", "test_q1_cnn.py",
                         "test_report_links.py"})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, with the files of :data:`SHARED_RUNS` as one unit."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedRunsTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "the q1 smoke runs" if file.rsplit("/", 1)[-1] in SHARED_RUNS else file

    return SharedRunsTogether(config, log)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
