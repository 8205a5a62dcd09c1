"""The suite's own scheduling: files go to the xdist workers longest first."""

from __future__ import annotations

import json
from types import SimpleNamespace

import tests.conftest as conftest


def test_files_are_handed_out_longest_first_and_keep_their_own_order(tmp_path, monkeypatch):
    weights = tmp_path / "durations.json"
    weights.write_text(json.dumps({"tests/test_a.py": 5.0, "tests/test_b.py": 90.0,
                                   "tests/test_c.py": 1.0}))
    monkeypatch.setattr(conftest, "DURATIONS", weights)
    ids = ["tests/test_a.py::x", "tests/test_a.py::y", "tests/test_b.py::z",
           "tests/test_new.py::n", "tests/test_c.py::w", "tests/test_b.py::v"]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    conftest.pytest_collection_modifyitems(None, items)
    # b (90 s), then a (5 s) beside the new file (the median, 5 s: the earlier one first), c
    assert [it.nodeid for it in items] == [
        "tests/test_b.py::z", "tests/test_b.py::v", "tests/test_a.py::x", "tests/test_a.py::y",
        "tests/test_new.py::n", "tests/test_c.py::w"]


def test_the_recorded_durations_name_existing_files():
    recorded = json.loads(conftest.DURATIONS.read_text())
    here = conftest.DURATIONS.parent
    assert recorded and all((here.parent / f).exists() for f in recorded), \
        "tests/durations.json names a file that is gone: rerun with --record-durations"
