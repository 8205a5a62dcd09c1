"""Ctrl-C, SIGTERM and SIGKILL of ``visionflows run``, as a terminal and a scheduler send
them: the command stops within seconds (exit 130 / 143) with one line saying what was kept
and how to resume, the flow run ends Cancelled, and no process of ours nor any work folder
is left behind; after a SIGKILL the temporary Prefect server and the tasks die with the
command. Each test runs the real CLI in a child process with its own Prefect home."""

from __future__ import annotations

import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

# long enough (5 epochs of 1,200 images) that the stop lands inside the first cell, after its
# first checkpoint, with four epochs to spare; short enough that the resume is quick
SLOW_CNN = ["--set", "data.n_train=1200", "--set", "data.n_test=200", "--set", "epochs=5",
            "--set", "dropouts=[0.0]", "--set", "batch_size=32"]


def start(args: list[str], home: Path, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(home), PYTHONUNBUFFERED="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false",
               # a slow start on a busy machine is not what these tests are about
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    return subprocess.Popen([sys.executable, "-P", "-c",
                             "import sys; from flows.cli import main; sys.exit(main())", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, **popen)


def wait_for(proc: subprocess.Popen, pattern: str, seen: list[str], timeout: float = 300) -> str:
    """Read the command's output until a line matches ``pattern``; return that line."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if regex.search(line):
            return line
    raise AssertionError(f"{pattern!r} never appeared; output:\n{''.join(seen)[-4000:]}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not alive
        return fh.read().split()[2] != "Z"


def flow_run_states(home: Path) -> list[str]:
    db = home / "prefect.db"
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("select state_type from flow_run")]


def leftovers(session_line: str) -> tuple[Path, int]:
    root = Path(re.search(r"work folder (\S+?);", session_line).group(1))
    pid = int(re.search(r"\(pid (\d+)\)", session_line).group(1))
    return root, pid


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stop_marks_cancelled_prints_the_resume_command_and_resumes(sig, code, tmp_path,
                                                                     prefect_home):
    store = f"file://{tmp_path / 'store'}"
    args = ["run", "q1-cnn", "--store", store, *SLOW_CNN]
    # its own process group, like a terminal's foreground job: a Ctrl-C reaches the whole
    # group (the temporary server and the janitor run in sessions of their own)
    proc = start(args, prefect_home, start_new_session=True)
    seen: list[str] = []
    root, server = leftovers(wait_for(proc, r"work folder .*temporary Prefect server", seen))
    wait_for(proc, r"epoch 1/5", seen)
    deadline = time.monotonic() + 120  # the epoch's checkpoint is stored just after its line
    while not list((tmp_path / "store" / "runs").glob("q1-cnn/*/train-*/last.pt")):
        assert time.monotonic() < deadline, "no checkpoint was stored"
        time.sleep(0.1)
    sent = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)  # a scheduler signals the process itself
    out, _ = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    text = "".join(seen) + out
    assert proc.returncode == code, text[-3000:]
    assert took < 10, f"stopping took {took:.1f}s"
    last = out.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(sig).name}" in last and "finished step" in last
    resume = last.split("Resume with: ")[1]
    assert "--run-id" in resume and "Traceback" not in out
    assert "CANCELLED" in flow_run_states(prefect_home)
    assert not root.exists() and not alive(server)
    # the printed command resumes: the interrupted cell continues from its checkpoint
    argv = shlex.split(resume)[1:]  # drop "visionflows"
    again = start(argv, prefect_home)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert "resuming runs/q1-cnn/" in out and "from epoch" in out


def test_sigkill_takes_the_server_tasks_and_work_folder_with_it(tmp_path, prefect_home):
    store = f"file://{tmp_path / 'store'}"
    proc = start(["run", "q1-cnn", "--store", store, "--launcher", "subprocess", *SLOW_CNN],
                 prefect_home)
    seen: list[str] = []
    root, server = leftovers(wait_for(proc, r"work folder .*temporary Prefect server", seen))
    task_pid = int(re.search(r"started in process (\d+)",
                             wait_for(proc, r"classifier.train: started in process", seen)
                             ).group(1))
    wait_for(proc, r"epoch 1/5", seen)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (alive(server) or alive(task_pid) or root.exists()):
        time.sleep(0.2)
    assert not alive(server), "the temporary Prefect server outlived the CLI"
    assert not alive(task_pid), "the task outlived the CLI"
    assert not root.exists(), "the work folder outlived the CLI"


class _FakeServer:
    """Stands in for flows.server.TemporaryServer: what Session asks of it, no process."""

    api_url = "http://127.0.0.1:9/api"
    pid = 2**22 + 1  # no such process here: tracked and untracked, never signalled

    def start(self) -> str:
        return self.api_url

    def stop(self) -> None:
        pass


def test_flow_runs_on_the_temporary_server_send_no_heartbeats(monkeypatch):
    """A temporary server dies with its command, so nothing reads heartbeats there, and
    Prefect's heartbeat thread makes every flow run end on a whole second: off for it, and
    Prefect's own default where PREFECT_API_URL names a server (its operator may watch)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    import flows.server
    from flows.session import Session

    monkeypatch.setattr(flows.server, "TemporaryServer", _FakeServer)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # Prefect's defaults: no API set in this process (another test file's harness may have
    # set one, without heartbeats)
    with temporary_settings(restore_defaults={PREFECT_API_URL,
                                              PREFECT_FLOWS_HEARTBEAT_FREQUENCY}):
        default = get_current_settings().flows.heartbeat_frequency
        assert default is not None  # Prefect's default sends them (every 180 s in 3.9)
        with Session() as session:
            assert session.server is not None
            assert os.environ["PREFECT_API_URL"] == _FakeServer.api_url
            assert get_current_settings().flows.heartbeat_frequency is None
        assert get_current_settings().flows.heartbeat_frequency == default
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
        with Session() as session:
            assert session.server is None
            assert get_current_settings().flows.heartbeat_frequency == default
