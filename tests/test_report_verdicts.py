"""Every number and verdict in a question report is computed from the run's metrics and the
reference table: each report is rendered twice, from two made-up metric sets, and its
sentences must follow the numbers (who is best, whether that agrees with the reference,
the gaps and times they quote)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks.core.runtime import Manifest, manifest_key
from tasks.core.store import open_store


def put_manifest(store, task: str, prefix: str, config: dict, metrics: dict, **extra):
    now = datetime.now(UTC).isoformat()
    m = Manifest(task=task, prefix=prefix, store=store.uri, config=config, config_hash="x",
                 metrics=metrics, started_at=now, finished_at=now, duration_s=1.0, **extra)
    store.put_json(manifest_key(prefix), m.model_dump(mode="json"))
    return m


@pytest.fixture
def store(tmp_path):
    return open_store(f"file://{tmp_path / 'store'}")


# ---------------------------------------------------------------- Q1

def _q1_run(store, name: str, batch: int, acc: float):
    cm = [[10 if i == j else 1 for j in range(10)] for i in range(10)]
    put_manifest(store, "classifier.train", f"r/train-{name}",
                 {"out": f"r/train-{name}", "data": "d", "batch_size": batch},
                 {"test/accuracy": acc, "train/time_s": 2.0 + batch / 100, "epochs": 2},
                 history=[{"epoch": e, "train/loss": 1.0 / e, "train/accuracy": acc - 0.1,
                           "test/loss": 1.1 / e, "test/accuracy": acc} for e in (1, 2)])
    put_manifest(store, "classifier.evaluate", f"r/eval-{name}", {"out": f"r/eval-{name}"},
                 {"test/accuracy": acc, "test/precision_macro": acc, "test/recall_macro": acc,
                  "test/f1_macro": acc, "test/loss": 1 - acc,
                  "test/per_class": {"precision": [acc] * 10, "recall": [acc] * 10},
                  "test/confusion_matrix": cm})


@pytest.mark.parametrize("accs, best, verdict", [
    ({32: 0.80, 256: 0.86}, 256, "Our choice agrees."),
    ({32: 0.88, 256: 0.83}, 32, "Our choice differs."),
])
def test_q1_report_follows_the_numbers(store, accs, best, verdict):
    from tasks.q1.report import ReportConfig, render

    for batch, acc in accs.items():
        _q1_run(store, f"b{batch}", batch, acc)
    cfg = ReportConfig(out="rep", question="q1-mlp", title="Q1", profile="smoke", run_id="r",
                       groups=[{"key": "batch_size", "title": "(a) batch",
                                "runs": [{"name": f"batch {b}", "value": b,
                                          "train": f"r/train-b{b}", "eval": f"r/eval-b{b}"}
                                         for b in accs]}])
    m = render(cfg, store)
    md = store.get_text(m.outputs["report.md"])
    assert f"Ours: best batch_size = {best} by test/accuracy ({accs[best]:.4f})." in md
    assert verdict in md
    assert m.metrics["groups"][0]["agrees"] is (verdict == "Our choice agrees.")


# ---------------------------------------------------------------- Q2

def _q2_model(store, arch: str, final: float):
    hist = [{"epoch": e, "train/loss": 1.0, "train/accuracy": final, "test/loss": 1.0,
             "test/accuracy": final, "train/time_s": 0.5} for e in (1, 2)]
    put_manifest(store, "transfer.train", f"r/train-{arch}", {"out": f"r/train-{arch}"}, {
        "test/accuracy": final, "best/test/accuracy": final,
        "test/accuracy_per_epoch": [final, final], "train/time_s": 1.0,
        "features/cache_time_s": 0.5, "trainable_params": 5130, "total_params_imagenet": 1000,
        "total_params": 900, "features/cached": True, "weights": {"pretrained": False},
        "epochs": 2, "n_train": 10, "n_test": 10, "image_size": 48}, history=hist)


@pytest.mark.parametrize("vgg, resnet, sentence", [
    (0.93, 0.78, "Ours: VGG16 ahead by 15.00 points, a gap +1.76 points wider than the "
                 "reference's: the ranking agrees."),
    (0.70, 0.75, "Ours: ResNet18 ahead by 5.00 points, a gap -8.24 points narrower than the "
                 "reference's: the ranking differs."),
])
def test_q2_report_follows_the_numbers(store, vgg, resnet, sentence):
    from tasks.q2.report import ReportConfig, render

    put_manifest(store, "stl10.fetch", "d", {}, {}, inputs={"source": "generator"})
    put_manifest(store, "transfer.explore", "r/explore", {}, {
        "train/shape": [10, 3, 96, 96], "test/shape": [10, 3, 96, 96], "raw/min": 0,
        "raw/max": 255, "normalized/min": -2.1, "normalized/max": 2.6,
        "normalized/mean": [0.0] * 3, "normalized/std": [1.0] * 3,
        "normalized/theoretical_range": {"min": [-2.1] * 3, "max": [2.6] * 3}})
    _q2_model(store, "vgg16", vgg)
    _q2_model(store, "resnet18", resnet)
    cfg = ReportConfig(out="rep", profile="smoke", run_id="r", title="Q2", data="d",
                       explore="r/explore",
                       models=[{"arch": a, "train": f"r/train-{a}", "finetune": f"r/ft-{a}"}
                               for a in ("resnet18", "vgg16")])
    m = render(cfg, store)
    md = store.get_text(m.outputs["report.md"])
    assert "Reference: VGG16 ahead by 13.24 points at the last epoch." in md
    assert sentence in md
    assert m.metrics["agrees"] is sentence.endswith("agrees.")


# ---------------------------------------------------------------- Q4

def _q4_model(store, label: str, model: str, m50: float, m95: float, epochs: int, time_s):
    put_manifest(store, "yolo.train", f"r/train-{label}",
                 {"out": f"r/train-{label}", "data": "data/x", "model": model, "imgsz": 96},
                 {"train/time_s": time_s, "epochs": epochs}, history=[], sessions=[],
                 model=model, weights_from="none")
    put_manifest(store, "yolo.evaluate", f"r/eval-{label}", {"out": f"r/eval-{label}"},
                 {"val/precision": 0.9, "val/recall": 0.8, "val/mAP50": m50,
                  "val/mAP50-95": m95, "val/per_class": {}, "checkpoint": "best"})


@pytest.mark.parametrize("s, x, ranking", [
    ((0.70, 0.40), (0.75, 0.45), "agrees with the reference."),
    ((0.80, 0.50), (0.60, 0.30), "differs from the reference's."),
])
def test_q4_report_follows_the_numbers(store, s, x, ranking):
    from tasks.q4.report import YoloReportConfig, render

    put_manifest(store, "yolo-export.fetch", "data/x", {}, {"val/images": 30, "val/objects": 70},
                 inputs={"source": "generator"})
    _q4_model(store, "yolov5s", "yolov5s.yaml", *s, epochs=6, time_s=100.0)
    _q4_model(store, "yolov5x", "yolov5x.yaml", *x, epochs=6, time_s=250.0)
    cfg = YoloReportConfig(out="rep", profile="smoke", run_id="r", models=[
        {"label": k, "model": f"{k}.yaml", "reference": k, "train": f"r/train-{k}",
         "eval": f"r/eval-{k}"} for k in ("yolov5s", "yolov5x")])
    md = store.get_text(render(cfg, store).outputs["report.md"])
    assert ("Reference: YOLOv5x ahead of YOLOv5s by 0.012 mAP@0.5 (+) and 0.009 mAP@0.5:0.95 "
            "(+), recall 0.928 vs 0.998, training time 1 h 16 m 41 s vs 1 h 16 m 23 s") in md
    d50, d95 = x[0] - s[0], x[1] - s[1]
    word = "ahead of" if d95 >= 0 else "behind"
    assert (f"Ours: yolov5x {word} yolov5s by {abs(d50):.3f} mAP@0.5 "
            f"({'+' if d50 >= 0 else '-'}) and {abs(d95):.3f} mAP@0.5:0.95") in md
    assert "training time 4 m 10 s vs 1 m 40 s (2.50x)" in md
    assert f"The ranking by mAP@0.5:0.95 {ranking}" in md
    assert ("Why our numbers may differ: ours: yolov5s, yolov5x trained from random weights "
            "(a .yaml model), 6 epochs at 96 px on generated shapes: 30 validation images, 70 "
            "objects.") in md
