"""Time limits under the ``local`` launcher and for a whole flow run: a step past its
resource-table limit is stopped inside the flow's own process, and a flow past its
``flow_time_limit_s`` starts nothing more, so no launcher runs forever (issue 27)."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow

from flows.fanout import Steps
from flows.launchers import launch
from flows.launchers.local import time_budget, within
from tasks.core.errors import ConfigError, TaskTimeoutError
from tasks.core.resources import Resources, ResourceTable
from tasks.core.runtime import find_manifest
from tasks.core.store import open_store


def busy(seconds: float) -> int:
    """Pure-Python work (a training loop's shape) for ``seconds``."""
    n, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        n += 1
    return n


def test_within_stops_python_work_at_the_limit():
    t0 = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"ran past its time limit of 0.5s"):
        within(0.5, lambda: busy(30), "busy")
    assert time.monotonic() - t0 < 5


def test_within_returns_what_ends_in_time_and_leaves_nothing_pending():
    assert within(5, lambda: 42, "quick") == 42
    assert within(None, lambda: 7, "unlimited") == 7
    busy(0.3)  # no exception arrives later from a cancelled timer
    assert [t for t in threading.enumerate() if t.name.startswith("vf-deadline")] == []


def test_task_code_catching_exception_cannot_swallow_the_stop():
    def stubborn() -> str:
        try:
            busy(30)
        except Exception:  # noqa: BLE001 - what careless task code does
            return "swallowed"
        return "ran to the end"

    with pytest.raises(TaskTimeoutError):
        within(0.3, stubborn, "stubborn")


def test_time_budget_order(monkeypatch):
    res = Resources(time_limit_s=7)
    monkeypatch.delenv("VF_TASK_TIMEOUT_S", raising=False)
    assert time_budget(None, res) == 7 and time_budget(3, res) == 3
    assert time_budget(None, None) is None
    monkeypatch.setenv("VF_TASK_TIMEOUT_S", "5")
    assert time_budget(None, res) == 5
    monkeypatch.setenv("VF_TASK_TIMEOUT_S", "none")
    assert time_budget(None, res) is None
    monkeypatch.setenv("VF_TASK_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="VF_TASK_TIMEOUT_S='soon' is not a number"):
        time_budget(None, res)


def test_local_launcher_stops_a_step_at_its_table_limit(tmp_path, monkeypatch):
    monkeypatch.delenv("VF_TASK_TIMEOUT_S", raising=False)
    store = f"file://{tmp_path}"
    t0 = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="selftest.sleep ran past its time limit of 1s"):
        launch("selftest.sleep", {"out": "runs/t/sleep", "seconds": 60}, store, "local",
               resources=Resources(time_limit_s=1))
    assert time.monotonic() - t0 < 10
    st = open_store(store)
    assert st.exists("runs/t/sleep/started.json")  # it did start
    assert find_manifest(st, "runs/t/sleep") is None  # and left no result
    m = launch("selftest.sleep", {"out": "runs/t/quick", "seconds": 0.2}, store, "local",
               resources=Resources(time_limit_s=30))
    assert m.metrics["slept_s"] == 0.2


class _Cfg:
    def __init__(self, limit: float):
        self.parallel = 1
        self.resources = ResourceTable(flow_time_limit_s=limit)


@flow(name="time-limit-test")
def _three_sleeps(store: str, limit: float) -> list[str]:
    steps = Steps(_Cfg(limit), store, "local", {"selftest.sleep": "evaluate"})
    done = []
    for i in range(3):
        try:
            steps.run(f"sleep-{i}", "selftest.sleep", {"out": f"runs/tl/s{i}", "seconds": 1.5})
            done.append(f"s{i}")
        except TaskTimeoutError as exc:
            done.append(f"s{i}: {exc}")
    return done


def test_a_flow_stops_its_steps_at_its_own_time_limit(prefect_harness, tmp_path, monkeypatch):
    monkeypatch.delenv("VF_TASK_TIMEOUT_S", raising=False)
    store = f"file://{tmp_path}"
    t0 = time.monotonic()
    done = _three_sleeps(store, 2.5)
    took = time.monotonic() - t0
    # s0 fits; s1 gets the ~1 s left and is stopped; s2 is not started at all
    assert done[0] == "s0"
    assert "selftest.sleep ran past its time limit" in done[1]
    assert "time-limit-test ran past its time limit of 2.5s; step sleep-2 was not started" \
        in done[2]
    assert took < 20
    st = open_store(store)
    assert find_manifest(st, "runs/tl/s0") is not None
    assert find_manifest(st, "runs/tl/s1") is None
    assert not st.exists("runs/tl/s2/started.json")
