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
    assert f"Ours: best batch_size = {best} by test/accuracy ({100 * accs[best]:.2f} %)." in md
    assert f"| batch {best} | ◀ best | ok |" in md
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


def _q4_history(spike: float | None) -> list[dict]:
    rows = []
    for e in range(1, 9):
        row = {"epoch": e, "train/box_loss": 3.0 - 0.2 * e, "train/cls_loss": 4.0 - 0.3 * e,
               "train/dfl_loss": 1.5 - 0.05 * e, "val/box_loss": 3.2 - 0.2 * e,
               "val/cls_loss": 4.5 - 0.3 * e, "val/dfl_loss": 1.6 - 0.05 * e,
               "metrics/mAP50(B)": 0.1 * e}
        if spike is not None and e == 2:
            row["val/cls_loss"] = spike
        rows.append(row)
    return rows


@pytest.mark.parametrize("spike", [530.0, 88.5, None])
def test_q4_loss_curves_clip_a_spike_and_say_so(store, spike):
    from tasks.q4.report import YoloReportConfig, render

    put_manifest(store, "yolo-export.fetch", "data/x", {}, {"val/images": 30, "val/objects": 70},
                 inputs={"source": "generator"})
    for label, hist in (("yolov5s", _q4_history(spike)), ("yolov5x", _q4_history(None))):
        _q4_model(store, label, f"{label}.yaml", 0.7, 0.4, epochs=8, time_s=100.0)
        m = store.get_json(f"r/train-{label}/manifest.json")
        store.put_json(f"r/train-{label}/manifest.json", {**m, "history": hist})
    cfg = YoloReportConfig(out="rep", profile="smoke", run_id="r", models=[
        {"label": k, "model": f"{k}.yaml", "reference": k, "train": f"r/train-{k}",
         "eval": f"r/eval-{k}"} for k in ("yolov5s", "yolov5x")])
    md = store.get_text(render(cfg, store).outputs["report.md"])
    caption = next(line for line in md.splitlines() if line.startswith("*box, cls and dfl"))
    if spike is None:
        assert "clipped" not in caption
    else:
        assert caption.endswith(f"clipped values (red arrows): yolov5s val cls_loss = "
                                f"{spike:.3g} at epoch 2*")


# ---------------------------------------------------------------- the final report

def _question(store, q: str, run_id: str, profile: str, summary: list[dict],
              comparison: list[dict], why: str):
    rep = f"reports/{q}/{run_id}"
    store.put_text(f"{rep}/report.html", f"<p>{q}</p>")
    store.put_text(f"{rep}/report.md", q)
    store.put_json(f"{rep}/report.json", {"title": q, "why": why, "figures": []})
    put_manifest(store, "x.report", rep, {}, {"summary": summary, "comparison": comparison})
    store.put_json(f"runs/{q}/{run_id}/manifest.json", {
        "flow": q, "run_id": run_id, "profile": profile, "config": {}, "duration_s": 754.0,
        "report": {"report.html": f"{rep}/report.html", "report.md": f"{rep}/report.md"}})
    store.put_json(f"runs/{q}/latest.json", {"run_id": run_id})


@pytest.mark.parametrize("profile, vgg, best, expect", [
    ("full", 0.9280, 32, {"acc": "+1.26 pts", "best": "differs", "time": "0.50x"}),
    ("full", 0.9010, 256, {"acc": "-1.44 pts", "best": "agrees", "time": "0.50x"}),
    ("smoke", 0.3500, 256, {"acc": "not comparable (generated data)", "best": "agrees",
                            "time": "not comparable (generated data)"}),
])
def test_final_report_formats_and_compares_by_kind(store, profile, vgg, best, expect):
    from tasks.reporting.final import FinalReportConfig, render

    _question(store, "q2-transfer", "r2", profile,
              [{"variant": "model=vgg16", "status": "ok", "metric": "test/accuracy",
                "value": vgg, "time_s": 3725.0, "run": "x"}],
              [{"item": "VGG16 final test accuracy", "ours": vgg, "reference": 0.9154,
                "kind": "pct"},
               {"item": "VGG16 total parameters (1000 classes)", "ours": 138357544,
                "reference": 138357544, "kind": "count"},
               {"item": "yolov5s training time", "ours": 2291.5, "reference": 4583.0}],
              "Why our numbers may differ: Q2's own reasons.")
    _question(store, "q1-mlp", "r1", profile,
              [{"variant": "batch_size=batch 32", "status": "ok", "metric": "test/accuracy",
                "value": 0.8712, "time_s": 42.25, "run": "x"}],
              [{"item": "best batch_size (by test/accuracy)", "ours": best,
                "reference": 256}],
              "Why our numbers may differ: Q1's own reasons.")
    _question(store, "q3-segmentation", "r3", profile, [], [],
              "Why there is nothing to compare numerically: Q3 trains nothing.")
    m = render(FinalReportConfig(out="final", questions=["q1-mlp", "q2-transfer",
                                                         "q3-segmentation", "q4-yolo"]), store)
    md = store.get_text(m.outputs["report.md"])
    assert f"| q2-transfer | VGG16 final test accuracy | {100 * vgg:.2f} % | 91.54 % | " \
           f"{expect['acc']} |" in md
    assert "| q2-transfer | VGG16 total parameters (1000 classes) | 138,357,544 | " \
           "138,357,544 | same |" in md
    assert f"| q2-transfer | yolov5s training time | 38 min 12 s | 1 h 16 min | " \
           f"{expect['time']} |" in md
    assert f"| q1-mlp | best batch_size (by test/accuracy) | {best} | 256 | " \
           f"{expect['best']} |" in md
    assert f"| q2-transfer | model=vgg16 | ok | test/accuracy | {100 * vgg:.2f} % | " \
           "1 h 2 min | r2 |" in md
    assert "| q1-mlp | batch_size=batch 32 | ok | test/accuracy | 87.12 % | 42.2 s | r1 |" in md
    # each question's own explanation, in its own section, and a link to its own report
    from tasks.reporting.final import question_titles

    TITLES = question_titles()

    sections = {part.split("\n", 1)[0]: part for part in md.split("\n## ")}
    for q, why in (("q1-mlp", "Q1's own reasons"), ("q2-transfer", "Q2's own reasons"),
                   ("q3-segmentation", "Q3 trains nothing")):
        own = sections[TITLES[q]]
        assert why in own and all(w not in own for _, w in (
            ("", "Q1's own reasons"), ("", "Q2's own reasons"), ("", "Q3 trains nothing"))
            if w != why), q
        link = (store.root / f"reports/{q}").as_uri()
        assert f"[HTML]({link}/r{q[1]}/report.html)" in own, q
    assert "optimizer" not in sections[TITLES["q3-segmentation"]]
    assert "| q4-yolo | not run |" in md


@pytest.mark.parametrize("value, kind, text", [
    (0.91384, "pct", "91.38 %"), (1.2549, "pts", "+1.25 pts"), (-8.244, "pts", "-8.24 pts"),
    (0.4, "time", "0.40 s"), (42.25, "time", "42.2 s"), (250.4, "time", "4 min 10 s"),
    (4583, "time", "1 h 16 min"), (604800, "time", "7 days"), (11689512, "count", "11,689,512"),
    (6.0, "count", "6"), (0.92512, "score", "0.925"), (256, "choice", "256"),
    (0.4, "choice", "0.4"), (None, "pct", "—"), ("1 of 3", "text", "1 of 3"),
    (0.123456, None, "0.1235")])
def test_fmt_by_kind(value, kind, text):
    from tasks.reporting.render import fmt

    assert fmt(value, kind) == text


@pytest.mark.parametrize("name, kind", [
    ("test/accuracy", "pct"), ("top class share", "pct"), ("val/mAP50-95", "score"),
    ("yolov5s P", "score"), ("train/time_s", "time"), ("VGG16 total parameters", "count"),
    ("VGG16 minus ResNet18 (points)", "pts"), ("variant", None)])
def test_metric_kind(name, kind):
    from tasks.reporting.render import metric_kind

    assert metric_kind(name) == kind


def test_paragraph_markup_is_escaped_and_links_are_safe():
    from tasks.reporting.render import inline

    html = str(inline("<b>x</b> `a<b>` **bold** [ok](https://h/x?a=1&b=2) "
                      "[bad](javascript:alert(1)) [top](#summary)"))
    assert html.startswith("&lt;b&gt;x&lt;/b&gt; <code>a&lt;b&gt;</code> <strong>bold</strong>")
    assert '<a href="https://h/x?a=1&amp;b=2">ok</a>' in html
    assert "<a href=\"javascript" not in html and "[bad](javascript:alert(1))" in html
    assert '<a href="#summary">top</a>' in html
