"""Champion/challenger promotion and explainable cache keys."""

from __future__ import annotations

import json
import re
import threading

import pytest

from tasks.core import cache, identity
from tasks.core.errors import DataError
from tasks.core.promote import champion_key, history, read_champion
from tasks.core.store import open_store
from tasks.q1.train import TrainConfig
from tasks.registry import run_task


def promote(uri, run_id, value, question="q1-mlp", metric="test/accuracy"):
    """Promote run ``run_id``'s model; a stand-in model (a selftest task's verified manifest)
    is stored first, since promotion verifies the candidate's training result."""
    model = f"runs/{question}/{run_id}/train-x"
    run_task("selftest.sleep", {"out": model, "seconds": 0}, uri)
    return run_task("model.promote", {
        "question": question, "run_id": run_id, "metric": metric, "value": value,
        "model": model, "out": f"runs/{question}/{run_id}/promote"}, uri)


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


def test_code_identity_counts_the_whole_question_package_and_the_shared_ones():
    files = identity.code_identity("tasks.q1.train")
    assert "tasks/ml/loop.py" in files and "tasks/q1/models.py" in files
    assert "tasks/core/promote.py" in files  # the shared packages count whole
    assert "tasks/q1/report.py" in files  # its own package counts whole
    assert "tasks/reporting/final.py" not in files  # training never reaches report code
    # a question's key never covers another question's code
    for module in ("tasks.q1.train", "tasks.q2.transfer", "tasks.q3.segment", "tasks.q4.yolo"):
        own = module.split(".")[1]
        others = [f for f in identity.code_identity(module)
                  if re.match(r"tasks/q\d+/", f) and not f.startswith(f"tasks/{own}/")]
        assert others == [], (module, others)
    assert "tasks/q4/worker.py" in identity.code_identity("tasks.q4.yolo")  # run as python -m
    assert "reports/templates/report.html.j2" in identity.code_identity("tasks.q1.report")


def test_cache_keys_see_only_the_code_a_task_runs(tmp_path):
    """Another question's edit -> hit; a comment or docstring edit in Q1's own training code
    -> hit; a real change in it -> a miss that names the file."""
    import shutil
    from pathlib import Path

    import tasks

    root = tmp_path / "tree" / "tasks"
    shutil.copytree(Path(tasks.__file__).parent, root,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = identity.code_identity("tasks.q1.train", root)
    assert "tasks/q1/train.py" in before and "tasks/q4/yolo.py" not in before

    yolo = root / "q4" / "yolo.py"
    yolo.write_text(yolo.read_text() + "\n\ndef added_to_q4():\n    return 4\n")
    assert identity.code_identity("tasks.q1.train", root) == before  # Q4 is not Q1's code

    train = root / "q1" / "train.py"
    text = train.read_text()
    edited = text.replace('"""Train one classifier;', '"""Train one classifier (reworded);', 1)
    edited = edited.replace("def build_optimizer(", "# a comment\ndef build_optimizer(", 1)
    assert edited != text
    train.write_text(edited)
    assert identity.code_identity("tasks.q1.train", root) == before  # not code

    changed = edited.replace("lr=cfg.learning_rate,", "lr=cfg.learning_rate * 2,", 1)
    assert changed != edited
    train.write_text(changed)
    after = identity.code_identity("tasks.q1.train", root)
    assert identity.explain({"config": {}, "code": before}, {"config": {}, "code": after}) \
        == ["tasks/q1/train.py changed"]


def test_cache_components_and_explanations(data_prefix):
    uri, data = data_prefix
    st = open_store(uri)
    cfg = {"out": "runs/a/train", "data": data, "epochs": 2, "device": "cpu"}
    parts = cache.components("classifier.train", cfg, st)
    assert "out" not in parts["config"] and parts["inputs"]["data"]
    assert parts["device"] == "cpu" and parts["environment"]["packages"]["torch"]
    same = cache.components("classifier.train", {**cfg, "out": "runs/b/train"}, st)
    assert cache.cache_key(parts) == cache.cache_key(same)
    changed = json.loads(json.dumps(parts))
    changed["config"]["epochs"] = 5
    changed["code"]["tasks/ml/loop.py"] = "0" * 16
    changed["inputs"]["data"] = "f" * 16
    changed["environment"]["packages"]["torch"] = "9.9"
    changed["environment"]["python"] = "CPython 3.99.0"
    changed["device"] = "cuda:NVIDIA H100"
    reasons = cache.explain(parts, changed)
    assert "config changed: epochs 2 -> 5" in reasons
    assert "tasks/ml/loop.py changed" in reasons
    assert "input 'data' changed" in reasons
    assert any(r.startswith("torch version changed") and r.endswith("-> 9.9") for r in reasons)
    assert any(r.startswith("Python changed") for r in reasons)
    assert "device changed: cpu -> cuda:NVIDIA H100" in reasons
    assert len(reasons) == 6
    assert cache.explain(None, parts) == ["never run before"]


def test_cache_lookup_hit_and_miss(data_prefix):
    uri, data = data_prefix
    st = open_store(uri)
    cfg = TrainConfig(out="runs/c/train", data=data, epochs=1, device="cpu").model_dump(
        mode="json")
    parts = cache.components("classifier.train", cfg, st)
    hit, reasons = cache.lookup(st, "classifier.train", "q/train-x", parts)
    assert hit is None and reasons == ["never run before"]
    m = run_task("classifier.train", cfg, uri)
    assert cache.record(st, "classifier.train", "q/train-x", parts, m) is not None
    hit, _ = cache.lookup(st, "classifier.train", "q/train-x", parts)
    assert hit is not None and hit.prefix == "runs/c/train"
    other = cache.components("classifier.train", {**cfg, "epochs": 2}, st)
    hit, reasons = cache.lookup(st, "classifier.train", "q/train-x", other)
    assert hit is None and reasons == ["config changed: epochs 1 -> 2"]
    # a manifest of another config is never recorded under this key (no poisoned entry)
    assert cache.record(st, "classifier.train", "q/train-y", other, m) is None
    assert not st.exists(f"cache/classifier.train/{cache.cache_key(other)}.json")


@pytest.mark.parametrize("damage", [b"", b'{"key": "tru', b'["not", "an", "entry"]'])
def test_a_damaged_cache_entry_is_a_miss_then_rewritten(data_prefix, damage, caplog):
    """Cache entries are written without waiting for the disk (Store.put_index): a crash may
    leave one empty or torn. It is then a miss that says so, never an error, and the entry
    recorded after the step is whole again."""
    uri, data = data_prefix
    st = open_store(uri)
    cfg = TrainConfig(out="runs/d/train", data=data, epochs=1, device="cpu").model_dump(
        mode="json")
    parts = cache.components("classifier.train", cfg, st)
    m = run_task("classifier.train", cfg, uri)
    cache.record(st, "classifier.train", "q/train-d", parts, m)
    entry = f"cache/classifier.train/{cache.cache_key(parts)}.json"
    slot = "cache/classifier.train/slots/q/train-d.json"
    assert st.get_json(entry)["prefix"] == "runs/d/train"
    for key in (entry, slot):
        st.put_bytes(key, damage)
    with caplog.at_level("WARNING"):
        hit, reasons = cache.lookup(st, "classifier.train", "q/train-d", parts)
    assert hit is None and reasons == ["never run before"]
    assert sum("is damaged" in r.getMessage() for r in caplog.records) == 2
    assert cache.record(st, "classifier.train", "q/train-d", parts, m) is not None
    hit, _ = cache.lookup(st, "classifier.train", "q/train-d", parts)
    assert hit is not None and hit.prefix == "runs/d/train"
    assert st.get_json(slot)["parts"] == json.loads(json.dumps(parts))
