"""Errors keep their class and fields across the process boundary, and the one retry rule
(``flows.common.worth_retrying`` over ``tasks.core.errors.is_transient``) decides the same
under every launcher: transient errors are retried, permanent ones fail at once."""

from __future__ import annotations

import pytest

from tasks.core.errors import (
    ConfigError,
    MissingKeyError,
    StoreError,
    TaskCrashedError,
    VisionflowsError,
    error_from_record,
    error_record,
    is_transient,
)
from tasks.inputs.weights import WeightsError


def test_records_round_trip_class_message_and_fields():
    exc = WeightsError("no weights here", transient=True)
    back = error_from_record(error_record(exc))
    assert type(back) is WeightsError and str(back) == "no weights here" and back.transient
    back = error_from_record(error_record(MissingKeyError("no object 'x'")))
    assert type(back) is MissingKeyError and not is_transient(back)
    assert is_transient(error_from_record(error_record(StoreError("down"))))
    back = error_from_record(error_record(ValueError("bad value")))
    assert type(back) is ValueError and str(back) == "bad value"
    # a class that is not ours (nor a builtin) is not imported: a TaskCrashedError names it
    back = error_from_record({"module": "os", "class": "system", "message": "x",
                              "transient": True})
    assert type(back) is TaskCrashedError and "os.system" in str(back) and back.transient
    assert not is_transient(KeyboardInterrupt()) and is_transient(RuntimeError("?"))


CASES = [
    ("store", StoreError, True),
    ("weights-transient", WeightsError, True),
    ("config", ConfigError, False),
    ("weights-missing", WeightsError, False),
    ("crash", (ZeroDivisionError, TaskCrashedError), True),
]


@pytest.mark.parametrize("launcher", ["local", "subprocess",
                                      pytest.param("docker", marks=pytest.mark.docker)])
def test_same_class_and_same_retry_decision_under_every_launcher(launcher, request, tmp_path,
                                                                 prefect_harness):
    """{local, subprocess, docker} x {transient, permanent}: the flow sees the task's own
    error class and fields; transient ones are retried (3 attempts), permanent ones not."""
    from prefect import flow

    from flows.common import retrying_step
    from tasks.core.store import open_store

    if launcher == "docker":
        request.getfixturevalue("docker_engine")
    uri = f"file://{tmp_path / 'store'}"

    @flow(name="retry-rule")
    def failing(error: str) -> dict:
        return retrying_step("fail", 2, delay_s=0)("fail", "selftest.fail",
                                                   {"out": f"t/{error}", "error": error}, uri,
                                                   launcher)

    for error, cls, transient in CASES:
        with pytest.raises(cls) as info:
            failing(error)
        if isinstance(info.value, VisionflowsError):
            assert bool(info.value.transient) is transient, error
        attempts = open_store(uri).get_json(f"t/{error}/attempts.json")
        assert attempts == (3 if transient else 1), (launcher, error, attempts)
        assert not open_store(uri).exists(f"t/{error}/manifest.json")
