"""Champion/challenger promotion and explainable cache keys."""

from __future__ import annotations

import json
import threading

import pytest

from tasks import cache
from tasks.errors import DataError
from tasks.promote import champion_key, history, read_champion
from tasks.runtime import run_task
from tasks.store import open_store


def promote(uri, run_id, value, question="q1-mlp", metric="test/accuracy"):
    return run_task("model.promote", {
        "question": question, "run_id": run_id, "metric": metric, "value": value,
        "model": f"runs/{question}/{run_id}/train-x", "out": f"runs/{question}/{run_id}/promote"},
        uri)


def test_better_promoted_worse_kept_ties_promoted(store_uri):
    assert promote(store_uri, "r1", 0.80).metrics["decision"] == "promoted"
    assert promote(store_uri, "r2", 0.85).metrics["decision"] == "promoted"
    worse = promote(store_uri, "r3", 0.70)
    assert worse.metrics["decision"] == "kept as candidate"
    assert worse.metrics["champion_run_id"] == "r2"
    assert promote(store_uri, "r4", 0.85).metrics["decision"] == "promoted"  # tie
    st = open_store(store_uri)
    champ, _ = read_champion(st, "q1-mlp")
    assert champ["run_id"] == "r4" and champ["previous"]["run_id"] == "r2"
    hist = history(st, "q1-mlp")
    assert [(h["run_id"], h["status"]) for h in hist] == [
        ("r1", "promoted"), ("r2", "promoted"), ("r3", "kept as candidate"), ("r4", "promoted")]


def test_corrupt_champion_is_reported_and_left_alone(store_uri):
    st = open_store(store_uri)
    st.put_bytes(champion_key("q1-cnn"), b"{not json")
    with pytest.raises(DataError, match="corrupt.*left untouched"):
        promote(store_uri, "r9", 0.99, question="q1-cnn")
    assert st.get_bytes(champion_key("q1-cnn")) == b"{not json"
    assert not st.exists("runs/q1-cnn/r9/promote/manifest.json")


def test_concurrent_promotions_never_lose_the_best(tmp_path):
    uri = f"file://{tmp_path}/s"
    values = [0.5, 0.9, 0.7, 0.95, 0.6, 0.8]
    threads = [threading.Thread(target=promote, args=(uri, f"r{i}", v))
               for i, v in enumerate(values)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    champ, _ = read_champion(open_store(uri), "q1-mlp")
    assert champ["value"] == 0.95


@pytest.fixture(scope="module")
def data_prefix(tmp_path_factory):
    uri = f"file://{tmp_path_factory.mktemp('cache')}/s"
    m = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 50, "n_test": 20}, uri)
    return uri, m.prefix


def test_source_modules_follow_imports():
    files = dict(cache.source_modules("tasks.classify"))
    assert "tasks/train.py" in files and "tasks/models.py" in files
    assert "tasks/promote.py" not in files  # not imported by training


def test_cache_components_and_explanations(data_prefix):
    uri, data = data_prefix
    st = open_store(uri)
    cfg = {"out": "runs/a/train", "data": data, "epochs": 2}
    parts = cache.components("classifier.train", cfg, st)
    assert "out" not in parts["config"] and parts["inputs"]["data"]
    same = cache.components("classifier.train", {**cfg, "out": "runs/b/train"}, st)
    assert cache.cache_key(parts) == cache.cache_key(same)
    changed = json.loads(json.dumps(parts))
    changed["config"]["epochs"] = 5
    changed["source"]["tasks/train.py"] = "0" * 16
    changed["inputs"]["data"] = "f" * 16
    changed["versions"]["torch"] = "9.9"
    reasons = cache.explain(parts, changed)
    assert "config changed: epochs 2 -> 5" in reasons
    assert "tasks/train.py changed" in reasons
    assert "dataset sha changed" in reasons
    assert any(r.startswith("torch version changed") for r in reasons)
    assert cache.explain(None, parts) == ["never run before"]


def test_cache_lookup_hit_and_miss(data_prefix):
    uri, data = data_prefix
    st = open_store(uri)
    cfg = {"out": "runs/c/train", "data": data, "epochs": 1, "device": "cpu"}
    parts = cache.components("classifier.train", cfg, st)
    hit, reasons = cache.lookup(st, "classifier.train", "q/train-x", parts)
    assert hit is None and reasons == ["never run before"]
    m = run_task("classifier.train", cfg, uri)
    cache.record(st, "classifier.train", "q/train-x", parts, m.prefix)
    hit, _ = cache.lookup(st, "classifier.train", "q/train-x", parts)
    assert hit is not None and hit.prefix == "runs/c/train"
    other = cache.components("classifier.train", {**cfg, "epochs": 2}, st)
    hit, reasons = cache.lookup(st, "classifier.train", "q/train-x", other)
    assert hit is None and reasons == ["config changed: epochs 1 -> 2"]
