"""Each question's training and evaluation on a CUDA device (marked ``gpu``; skipped with the
reason where there is none): a Q1 cell, a Q2 head, a Q3 batch, one Q4 epoch, each on tiny
generated data, asserting the device the manifest records and finite metrics."""

from __future__ import annotations

import math

import pytest

from tasks.registry import run_task

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here (the gpu tests run where torch.cuda.is_available())")


@pytest.fixture
def uri(tmp_path):
    return f"file://{tmp_path / 'store'}"


def test_q1_cell_trains_and_evaluates_on_cuda(uri):
    data = run_task("fashion-mnist.fetch", {"source": "generate", "n_train": 600,
                                            "n_test": 200}, uri).prefix
    t = run_task("classifier.train", {"out": "r/t", "data": data, "model": "cnn_pool_bn",
                                      "epochs": 2, "device": "cuda", "batch_size": 64,
                                      "dev_fraction": 0.5, "channels_last": True}, uri)
    assert t.metrics["device"].startswith("cuda")
    assert t.history[-1]["train/loss"] < t.history[0]["train/loss"]
    e = run_task("classifier.evaluate", {"out": "r/e", "train": "r/t", "device": "cuda"}, uri)
    assert 0.0 <= e.metrics["test/accuracy"] <= 1.0


def test_q2_head_trains_on_cuda(uri):
    data = run_task("stl10.fetch", {"source": "generate", "n_train": 40, "n_test": 20},
                    uri).prefix
    m = run_task("transfer.train", {"out": "r/t", "data": data, "arch": "resnet18",
                                    "pretrained": False, "image_size": 48, "epochs": 2,
                                    "device": "cuda"}, uri)
    assert m.metrics["device"].startswith("cuda") and m.metrics["trainable_params"] == 5130
    assert all(math.isfinite(a) for a in m.metrics["test/accuracy_per_epoch"])


def test_q3_batch_segments_on_cuda(uri):
    from tasks.q3.photos import PACKAGED_IMAGES

    run_task("images.ingest", {"out": "r/in", "images": list(PACKAGED_IMAGES[:2])}, uri)
    m = run_task("segment.images", {"out": "r/seg", "ingest": "r/in", "pretrained": False,
                                    "arch": "deeplabv3_mobilenet_v3_large", "resize_size": 64,
                                    "device": "cuda"}, uri)
    assert m.metrics["device"].startswith("cuda") and m.metrics["images/ok"] == 2


def test_q4_one_epoch_on_cuda(uri):
    data = run_task("yolo-export.fetch", {"source": "generate", "n_train": 16, "n_valid": 8,
                                          "image_size": 64, "max_objects": 2}, uri).prefix
    t = run_task("yolo.train", {"out": "r/t", "data": data, "model": "yolov5n.yaml",
                                "epochs": 1, "imgsz": 64, "batch": 8, "workers": 0,
                                "device": "0", "plots": False}, uri)
    assert t.metrics["epochs"] == 1 and t.metrics["device"] == "0"
    e = run_task("yolo.evaluate", {"out": "r/e", "train": "r/t", "device": "0", "samples": 2,
                                   "plots": False}, uri)
    assert 0.0 <= e.metrics["val/mAP50"] <= 1.0
