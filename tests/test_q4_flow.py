"""q4-yolo end to end under a Prefect harness, against the S3 store (moto or MinIO), offline."""

from __future__ import annotations

import base64
import re

import pytest

from tasks.core.store import open_store
from tests.q4_support import GUARD, attempts

# The smoke profile, shrunk: tiny images and epochs; the two smoke models.
TINY = {"data": {"n_train": 24, "n_valid": 8, "image_size": 64}, "epochs": 2, "imgsz": 64,
        "checkpoint_every": 1, "samples": 2}


@pytest.fixture(scope="module")
def q4_run(prefect_harness, s3_endpoint, tmp_path_factory):
    import os

    from flows.q4_yolo import q4_yolo
    from tests.conftest import make_bucket

    guard = tmp_path_factory.mktemp("netguard")
    (guard / "sitecustomize.py").write_text(GUARD)
    log = guard / "attempts.log"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "VF_TEST_NET_LOG")}
    os.environ["PYTHONPATH"] = str(guard) + (os.pathsep + saved["PYTHONPATH"]
                                             if saved["PYTHONPATH"] else "")
    os.environ["VF_TEST_NET_LOG"] = str(log)
    try:
        uri = f"s3://{make_bucket(s3_endpoint)}/vf"
        result = q4_yolo(profile="smoke", store=uri, overrides=TINY)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return uri, result, log


def test_every_manifest_exists_in_s3(q4_run):
    uri, result, _ = q4_run
    st = open_store(uri)
    assert uri.startswith("s3://")
    data = st.get_json(result["data"] + "/manifest.json")  # a shared dataset: its files lie
    assert st.exists(data["outputs"]["dataset"])  # under v-<token>/, as it lists them
    assert set(result["train"]) == set(result["eval"]) == {"yolov5n.yaml", "yolov5s.yaml"}
    for prefix in [*result["train"].values(), *result["eval"].values()]:
        assert st.exists(prefix + "/manifest.json"), prefix
    for prefix in result["train"].values():
        for name in ("last.pt", "best.pt", "results.csv", "train_state.json"):
            assert st.exists(f"{prefix}/{name}"), f"{prefix}/{name}"
    assert st.exists(result["manifest"])
    assert st.get_json("runs/q4-yolo/latest.json")["run_id"] == result["run_id"]


def test_flow_manifest_has_metrics_for_both_models(q4_run):
    uri, result, _ = q4_run
    flow_manifest = open_store(uri).get_json(result["manifest"])
    ours = [r for r in flow_manifest["metrics"] if r["source"] == "ours"]
    assert [r["model"] for r in ours] == ["yolov5n (scratch)", "yolov5s (scratch)"]
    for row in ours:
        for key in ("precision", "recall", "mAP50", "mAP50-95"):
            assert 0.0 <= row[key] <= 1.0
        assert row["epochs"] == 2 and row["train_time_s"] > 0
    refs = {r["model"]: r for r in flow_manifest["metrics"] if r["source"] == "reference"}
    assert refs["yolov5s"]["mAP50"] == 0.925 and refs["yolov5x"]["mAP50-95"] == 0.582
    classes = {r["class"] for r in flow_manifest["per_class"]}
    assert classes == {"blue", "green", "red", "vline", "white", "yellow"}


def test_eval_outputs(q4_run):
    uri, result, _ = q4_run
    st = open_store(uri)
    for prefix in result["eval"].values():
        m = st.get_json(prefix + "/manifest.json")
        metrics = m["metrics"]
        assert set(metrics["val/per_class"]) == {"blue", "green", "red", "vline", "white",
                                                 "yellow"}
        cm = metrics["val/confusion_matrix"]
        assert len(cm) == 7 and all(len(r) == 7 for r in cm)  # six classes + background
        assert sum(map(sum, cm)) > 0
        assert metrics["train/time_s"] > 0 and metrics["epochs"] == 2
        for name in ("predictions", "confusion", "curves", "metrics"):
            key = m["outputs"][name]
            assert st.exists(key)
            if key.endswith(".png"):
                assert st.get_bytes(key)[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_both_models_and_the_reference(q4_run):
    uri, result, _ = q4_run
    st = open_store(uri)
    html = st.get_text(result["report"]["report.html"])
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) >= 8
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    md = st.get_text(result["report"]["report.md"])
    for text in ("yolov5n (scratch)", "yolov5s (scratch)", "| YOLOv5s | reference",
                 "| YOLOv5x | reference", "1 h 16 m 23 s", "One-stage vs two-stage",
                 "smoke profile"):
        assert text in md, text
    assert result["groups"][0]["key"] == "model"


def test_prefect_table_artifacts(q4_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read(key):
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    for key in ("q4-yolo-metrics", "q4-yolo-per-class", "q4-yolo-report"):
        assert asyncio.run(read(key)), key


def test_no_network_from_any_process(q4_run):
    assert attempts(q4_run[2]) == []
