"""Sweep packing (``parallel``): cells trained concurrently in their own processes give the
same results as one after another, with repeats, and split the CPU threads between them."""

from __future__ import annotations

import pytest
import torch

from flows.fanout import cpu_threads, packed_env, packed_launcher
from tasks.core.errors import ConfigError
from tasks.core.store import open_store
from tasks.plans import resolve_config

# 2 batch sizes x 2 seeds = 4 cells, one epoch on tiny data
SMALL = {"data": {"n_train": 400, "n_test": 200}, "epochs": 1, "batch_sizes": [32, 64],
         "activations": ["relu"], "losses": ["cross_entropy"], "repeats": 2}


@pytest.mark.parametrize("parallel,total,each", [(1, 2, "2"), (2, 2, "1"), (3, 2, "1"),
                                                 (2, 8, "4"), (3, 8, "2")])
def test_packed_env_splits_the_threads(parallel, total, each):
    assert packed_env(parallel, total) == {"OMP_NUM_THREADS": each, "MKL_NUM_THREADS": each}


def test_cpu_threads_honours_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert cpu_threads() == 6 and packed_env(2) == {"OMP_NUM_THREADS": "3",
                                                    "MKL_NUM_THREADS": "3"}
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads() >= 1


def test_packed_launcher_needs_processes():
    assert packed_launcher("local") == "subprocess"
    assert packed_launcher("subprocess") == "subprocess"
    assert packed_launcher("docker") == "docker"


def test_parallel_key_is_validated():
    assert resolve_config("q1-mlp", "smoke").parallel == 1
    assert resolve_config("q1-cnn", "smoke", {"parallel": 3}).parallel == 3
    with pytest.raises(ConfigError, match="parallel"):
        resolve_config("q1-mlp", "smoke", {"parallel": 0})


def _metrics(result: dict, uri: str) -> dict[str, dict]:
    st = open_store(uri)
    out = {}
    for cid, prefix in result["train"].items():
        m = st.get_json(prefix + "/manifest.json")["metrics"]
        e = st.get_json(result["eval"][cid] + "/manifest.json")["metrics"]
        out[cid] = {"train/loss": m["train/loss"], "test/accuracy": e["test/accuracy"],
                    "test/loss": e["test/loss"], "threads": m["threads"]}
    return out


def test_packed_sweep_equals_sequential(prefect_harness, tmp_path, monkeypatch):
    from flows.q1_mlp import q1_mlp

    # sequential: in this process with one thread; packed: 2 children with 2 // 2 = 1 each
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq_uri = f"file://{tmp_path / 'seq'}"
        seq = q1_mlp(profile="smoke", store=seq_uri, overrides=SMALL)
    finally:
        torch.set_num_threads(threads)
    packed_uri = f"file://{tmp_path / 'packed'}"
    packed = q1_mlp(profile="smoke", store=packed_uri, overrides={**SMALL, "parallel": 2})

    assert len(seq["train"]) == 4 and set(packed["train"]) == set(seq["train"])
    assert any(c.endswith("-seed1") for c in packed["train"])  # repeats are packed too
    a, b = _metrics(seq, seq_uri), _metrics(packed, packed_uri)
    assert all(m["threads"] == 1 for m in b.values())
    assert a == b  # same seeds, same thread count: the same numbers, bit for bit
    assert packed["champion"]["best_cell"] == seq["champion"]["best_cell"]
    # the report's groups (with the seeds' spread) come out the same
    assert [g.get("best") for g in packed["groups"]] == [g.get("best") for g in seq["groups"]]
