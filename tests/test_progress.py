"""Progress a person can watch: live bars under a terminal (epochs, batches, the current
loss), none in a pipe or with ``--no-progress``; a child task's progress crosses the process
boundary as ``@@vf-progress`` lines (never logged); the Prefect progress artifact moves
while a step runs."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import select
import subprocess
import sys
from collections import deque

import pytest

from tasks.core import progress

TINY = ["--set", "epochs=3", "--set", "data.n_train=900", "--set", "data.n_test=200",
        "--set", "batch_sizes=[32]", "--set", 'activations=["relu"]',
        "--set", 'losses=["cross_entropy"]']


def run_cli(args: list[str], tty: bool, tmp_path) -> tuple[int, str]:
    cmd = [sys.executable, "-P", "-c", "import sys; from flows.cli import main; sys.exit(main())",
           *args]
    env = {**os.environ, "COLUMNS": "160"}
    if not tty:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                             cwd=tmp_path)
        return res.returncode, res.stdout + res.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd=tmp_path, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, out.decode("utf-8", "replace")


def test_bars_under_a_terminal_and_none_in_a_pipe(tmp_path, shared_prefect):
    code, out = run_cli(["run", "q1-mlp", "--store", f"file://{tmp_path / 's'}", *TINY],
                        tty=True, tmp_path=tmp_path)
    assert code == 0, out[-3000:]
    assert "━" in out and "3/3 epochs" in out  # rich's bar, the epoch count
    assert "batches" in out and "loss=" in out  # the epoch's batches, the current loss
    code, out = run_cli(["run", "q1-mlp", "--store", f"file://{tmp_path / 's2'}", *TINY],
                        tty=False, tmp_path=tmp_path)
    assert code == 0, out[-3000:]
    assert "━" not in out and "@@vf-progress" not in out
    assert "epoch 3/3" in out  # the log lines still say it
    code, out = run_cli(["run", "q1-mlp", "--store", f"file://{tmp_path / 's3'}", *TINY,
                         "--no-progress"], tty=True, tmp_path=tmp_path)
    assert code == 0 and "━" not in out


def test_progress_lines_cross_the_process_boundary_and_are_not_logged(monkeypatch):
    from flows.launchers.output import relay

    monkeypatch.setenv(progress.LINES_ENV, "1")
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    progress.Ticker("runs/x/train", "train", 3, "epoch", interval_s=0).tick(2, {"loss": 0.5})
    line = buf.getvalue().strip()
    assert line.startswith(progress.PROTOCOL)
    got: list[dict] = []
    monkeypatch.delenv(progress.LINES_ENV)
    token = progress.SINK.set(got.append)
    tail: deque[str] = deque(maxlen=5)
    logged: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            logged.append(record.getMessage())

    log = logging.getLogger("test-relay")
    log.addHandler(Catch())
    log.setLevel(logging.INFO)
    try:
        relay([line, "12:00:00 INFO an ordinary line"], log, "classifier.train", tail)
    finally:
        progress.SINK.reset(token)
    assert got == [json.loads(line[len(progress.PROTOCOL):])]
    assert got[0]["done"] == 2 and got[0]["info"] == {"loss": 0.5}
    assert logged == ["[classifier.train] an ordinary line"] and list(tail) == [
        "12:00:00 INFO an ordinary line"]


def test_nothing_is_drawn_without_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv(progress.LINES_ENV, raising=False)
    progress.Ticker("x", "x", 2, "epoch", interval_s=0).tick(1)
    assert capsys.readouterr().err == ""  # pytest's capture is not a terminal


def test_the_prefect_progress_artifact_moves_during_a_step(monkeypatch):
    import flows.common as common

    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(common, "update_progress_artifact",
                        lambda ident, pct: calls.append((ident, pct)))
    monkeypatch.setattr(common, "_LAST_UPDATE", {})
    clock = [100.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    sink = common.step_sink({"id": "A", "start": 10.0, "width": 40.0})
    for epoch in (1, 2, 3, 4):
        sink({"id": "t", "done": epoch, "total": 4, "unit": "epoch", "final": epoch == 4})
        clock[0] += 1.5
    sink({"id": "b", "done": 5, "total": 9, "unit": "batch"})  # batches: the bars only
    # the first epoch at once, then at most every 2 s: epochs 3 (3 s later), not 2 or 4
    assert calls == [("A", 20.0), ("A", 40.0)]
    # a step's updates and the flow's share the throttle: the flow's advance 1 s after the
    # step's last update waits, its end does not
    monkeypatch.setattr(common, "create_progress_artifact", lambda *a, **k: "A")
    bar = common.Progress(2, "test")
    clock[0] = 200.0
    common.move_progress("A", 50.0)
    clock[0] += 1.0
    bar.advance()
    assert calls[-1] == ("A", 50.0)
    bar.advance()
    assert calls[-1] == ("A", 100.0)


@pytest.mark.parametrize("unit", ["B", "epoch"])
def test_terminal_bars_accept_every_unit(unit):
    bars = progress.TerminalBars()
    bars.update({"id": "x", "what": "file.bin", "done": 5, "total": 10, "unit": unit})
    bars.update({"id": "x", "what": "file.bin", "done": 10, "total": 10, "unit": unit,
                 "final": True})
    bars.stop()
    assert progress._amount(10, 10, unit) in ("0.0/0.0 MB", "10/10 epochs")


def test_the_flow_progress_moves_at_most_every_two_seconds_and_always_at_the_end(monkeypatch):
    import flows.common as common

    calls: list[float] = []
    monkeypatch.setattr(common, "create_progress_artifact", lambda *a, **k: "P")
    monkeypatch.setattr(common, "update_progress_artifact", lambda ident, pct: calls.append(pct))
    clock = [100.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    bar = common.Progress(4, "test")
    bar.advance()  # the first one moves at once
    bar.advance()  # 0 s later: throttled
    clock[0] += 2.5
    bar.advance()
    bar.advance()  # the end: always
    assert calls == [25.0, 75.0, 100.0]
