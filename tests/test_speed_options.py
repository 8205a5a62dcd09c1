"""Speed options of classifier.train (channels_last, amp, compile, pin_memory,
cudnn_benchmark): each trains, checkpoints and evaluates like the default path."""

from __future__ import annotations

import pytest
import torch

from tasks.core.store import open_store
from tasks.plans import resolve_config
from tasks.q1.plan import q1_cnn_cells, q1_mlp_cells
from tasks.q1.train import TrainConfig, cudnn_settings
from tasks.registry import run_task


@pytest.fixture(scope="module")
def data_store(tmp_path_factory):
    uri = f"file://{tmp_path_factory.mktemp('speed')}/store"
    m = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 400, "n_test": 200},
                 uri)
    return uri, m.prefix


def _train(uri, data, out, **fields):
    cfg = {"data": data, "out": out, "epochs": 1, "batch_size": 64, "device": "cpu",
           "model": "cnn_pool_bn", "dev_fraction": 0.5, "normalize": True, "hflip": True,
           **fields}
    return run_task("classifier.train", cfg, uri)


def test_channels_last_bf16_and_cuda_only_options_train_on_cpu(data_store):
    uri, data = data_store
    base = _train(uri, data, "r/base")
    fast = _train(uri, data, "r/fast", channels_last=True, amp="bf16", pin_memory=True,
                  cudnn_benchmark=True)  # the last two only act on CUDA
    assert fast.metrics["epochs"] == 1 and fast.config["amp"] == "bf16"
    # bf16 changes the numbers a little, not the result's quality
    assert fast.metrics["dev/accuracy"] == pytest.approx(base.metrics["dev/accuracy"], abs=0.1)
    ev = run_task("classifier.evaluate", {"out": "r/fast-eval", "train": "r/fast",
                                          "device": "cpu"}, uri)
    assert ev.metrics["test/accuracy"] == pytest.approx(fast.metrics["test/accuracy"])


@pytest.mark.slow
def test_compiled_training_saves_the_plain_model(data_store):
    uri, data = data_store
    t = _train(uri, data, "r/compiled", model="mlp", normalize=False, hflip=False,
               dev_fraction=0.0, compile=True)
    ckpt = torch.load(open_store(uri).local_path("r/compiled/last.pt"), weights_only=False)
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])  # loads without compile
    ev = run_task("classifier.evaluate", {"out": "r/compiled-eval", "train": "r/compiled",
                                          "device": "cpu"}, uri)
    assert ev.metrics["test/accuracy"] == pytest.approx(t.metrics["test/accuracy"])


def test_cudnn_benchmark_is_set_for_the_run_and_restored():
    cfg = TrainConfig(out="o", data="d", cudnn_benchmark=True)
    old = torch.backends.cudnn.benchmark
    with cudnn_settings(cfg, torch.device("cuda")):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == old
    with cudnn_settings(cfg, torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == old  # CPU runs leave it alone


def test_flow_keys_reach_every_cell():
    cells, _ = q1_cnn_cells(resolve_config("q1-cnn", "smoke", {
        "amp": "bf16", "compile": True, "pin_memory": True, "cudnn_benchmark": True}))
    assert all(c["amp"] == "bf16" and c["compile"] and c["pin_memory"] and c["cudnn_benchmark"]
               for c in cells.values())
    cells, _ = q1_mlp_cells(resolve_config("q1-mlp", "smoke", {"amp": "bf16"}))
    assert all(c["amp"] == "bf16" and not c["compile"] for c in cells.values())
    for c in cells.values():
        TrainConfig.model_validate({**c, "out": "o", "data": "d"})  # the task accepts them
