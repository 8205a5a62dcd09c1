"""Classifier training on tiny generated data: the loss falls, metrics are sane, runs resume."""

from __future__ import annotations

import pytest
import torch

from tasks.core.store import open_store
from tasks.ml.loop import Split, make_loss, train_one_epoch
from tasks.ml.summary import summarize
from tasks.q1.models import build_classifier
from tasks.q1.train import split_indices
from tasks.registry import run_task


@pytest.fixture(scope="module")
def data_store(tmp_path_factory):
    uri = f"file://{tmp_path_factory.mktemp('cls')}/store"
    m = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 1500, "n_test": 500},
                 uri)
    return uri, m.prefix


def test_mlp_learns_and_evaluates(data_store):
    uri, data = data_store
    t = run_task("classifier.train", {"out": "r/mlp/train", "data": data, "epochs": 3,
                                      "batch_size": 32, "device": "cpu"}, uri)
    hist = t.model_extra["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]
    assert t.metrics["test/accuracy"] > 0.3  # chance is 0.1
    assert t.metrics["params"] == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    e = run_task("classifier.evaluate", {"out": "r/mlp/eval", "train": "r/mlp/train",
                                         "device": "cpu"}, uri)
    assert e.metrics["test/accuracy"] == pytest.approx(t.metrics["test/accuracy"])
    cm = torch.tensor(e.metrics["test/confusion_matrix"])
    assert cm.sum() == 500 and cm.shape == (10, 10)
    st = open_store(uri)
    assert st.exists("r/mlp/train/last.pt") and st.exists("r/mlp/train/history.json")


def test_mse_loss_on_softmax_onehot():
    loss = make_loss("mse", 3)
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    assert float(loss(logits, torch.tensor([0]))) < 1e-3
    assert float(loss(logits, torch.tensor([1]))) == pytest.approx(2 / 3, abs=1e-3)


def test_resume_after_crash_matches_uninterrupted(data_store, monkeypatch):
    uri, data = data_store
    cfg = {"data": data, "epochs": 3, "batch_size": 64, "device": "cpu", "seed": 7,
           "model": "mlp", "dropout": 0.2}
    full = run_task("classifier.train", {**cfg, "out": "r/full"}, uri)

    import tasks.q1.train as classify

    real = classify.train_one_epoch
    calls = {"n": 0}

    def crash_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash during epoch 3")
        return real(*a, **k)

    monkeypatch.setattr(classify, "train_one_epoch", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_task("classifier.train", {**cfg, "out": "r/crashy"}, uri)
    st = open_store(uri)
    assert not st.exists("r/crashy/manifest.json")  # a crash leaves no manifest
    assert st.exists("r/crashy/last.pt")
    monkeypatch.setattr(classify, "train_one_epoch", real)
    resumed = run_task("classifier.train", {**cfg, "out": "r/crashy"}, uri)
    assert [h["epoch"] for h in resumed.model_extra["history"]] == [1, 2, 3]
    assert resumed.metrics["test/accuracy"] == full.metrics["test/accuracy"]
    assert resumed.metrics["train/loss"] == pytest.approx(full.metrics["train/loss"], rel=1e-6)


def test_same_seed_same_metrics(data_store):
    uri, data = data_store
    cfg = {"data": data, "epochs": 2, "batch_size": 64, "device": "cpu", "seed": 3}
    a = run_task("classifier.train", {**cfg, "out": "r/det-a"}, uri)
    b = run_task("classifier.train", {**cfg, "out": "r/det-b"}, uri)
    assert a.model_extra["history"] == [
        {**h, "train/time_s": h2["train/time_s"]}
        for h, h2 in zip(b.model_extra["history"], a.model_extra["history"], strict=True)]


def test_bad_config_writes_nothing(tmp_path):
    uri = f"file://{tmp_path}/s"
    from tasks.core.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        run_task("classifier.train", {"out": "r/x", "data": "d", "batch_size": 0}, uri)
    assert not open_store(uri).list()


def test_split_indices_fixed_and_disjoint():
    dev, test = split_indices(10000, 0.6, 42)
    assert len(dev) == 6000 and len(test) == 4000
    assert not set(dev.tolist()) & set(test.tolist())
    dev2, _ = split_indices(10000, 0.6, 42)
    assert torch.equal(dev, dev2)


def test_train_one_epoch_visits_every_sample_once():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen.extend(x[:, 0].long().tolist())
            return torch.zeros(x.shape[0], 2) + self.w

    data = Split(torch.arange(10).float().unsqueeze(1), torch.zeros(10, dtype=torch.long))
    model = Probe()
    train_one_epoch(model, data, batch_size=3, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                    loss_fn=torch.nn.CrossEntropyLoss(), preprocess=lambda x, _t: x,
                    generator=torch.Generator().manual_seed(0))
    assert sorted(seen) == list(range(10))


def test_mlp_summary_shapes():
    s = summarize(build_classifier("mlp"), [32, 1, 28, 28])
    shapes = [r["output_shape"] for r in s["rows"] if r["layer"].startswith("Linear")]
    assert shapes == [[32, 256], [32, 128], [32, 10]]
    assert s["total_params"] == 235146
