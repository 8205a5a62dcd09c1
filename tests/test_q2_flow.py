"""q2-transfer end to end (smoke profile, both models) under a Prefect harness, against the
S3 store (moto, or a real MinIO via VF_TEST_S3_ENDPOINT)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest

from tasks.core.store import open_store

SMALL = {"data": {"n_train": 100, "n_test": 50}, "epochs": 3, "finetune_epochs": 2}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def q2_run(prefect_harness, s3_endpoint):
    from flows.q2_transfer import q2_transfer
    from tests.conftest import make_bucket

    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    return uri, q2_transfer(profile="smoke", store=uri, overrides=SMALL)


def test_every_manifest_exists(q2_run):
    uri, result = q2_run
    st = open_store(uri)
    prefixes = [result["data"], result["explore"], *result["train"].values(),
                *result["finetune"].values()]
    assert set(result["train"]) == set(result["finetune"]) == {"resnet18", "vgg16"}
    for prefix in prefixes:
        assert st.exists(prefix + "/manifest.json"), prefix
    assert st.exists(result["manifest"])
    assert st.get_json("runs/q2-transfer/latest.json")["run_id"] == result["run_id"]
    flow = st.get_json(result["manifest"])
    assert flow["test_accuracy_per_epoch"] == result["test_accuracy_per_epoch"]
    assert set(flow["finetune_result"]) == {"resnet18", "vgg16"}


def test_training_manifests(q2_run):
    uri, result = q2_run
    st = open_store(uri)
    expected = {"resnet18": (11_689_512, 5_130), "vgg16": (138_357_544, 40_970)}
    for arch, prefix in result["train"].items():
        m = st.get_json(prefix + "/manifest.json")
        accs = m["metrics"]["test/accuracy_per_epoch"]
        assert len(accs) == SMALL["epochs"] == len(m["history"])
        assert all(0.0 <= a <= 1.0 for a in accs)
        assert accs == [h["test/accuracy"] for h in m["history"]]
        assert (m["metrics"]["total_params_imagenet"], m["metrics"]["trainable_params"]) == \
            expected[arch]
        assert m["metrics"]["weights"]["pretrained"] is False  # smoke says so, explicitly
        assert m["config"]["pretrained"] is False and m["config"]["image_size"] == 48
        assert m["metrics"]["features/cached"] is True
        assert st.exists(m["outputs"]["last"]) and st.exists(m["outputs"]["summary"])
        assert f"Total params: {expected[arch][0]:,}" in st.get_text(m["outputs"]["summary"])
        assert m["history"][-1]["train/loss"] < m["history"][0]["train/loss"]  # the head learns
    rn = st.get_json(result["train"]["resnet18"] + "/manifest.json")
    assert rn["metrics"]["best/test/accuracy"] > 0.15  # 50 test images, 10 balanced classes


def test_grid_and_finetune_manifests(q2_run):
    uri, result = q2_run
    st = open_store(uri)
    for arch, prefix in result["finetune"].items():
        m = st.get_json(prefix + "/manifest.json")["metrics"]
        true, pred = m["grid/true"], m["grid/pred"]
        assert len(m["grid/indices"]) == len(true) == len(pred) == 25
        wrong = sum(t != p for t, p in zip(true, pred, strict=True))
        assert m["misclassified"] == wrong == len(m["misclassified/indices"])
        assert st.get_bytes(f"{prefix}/grid.png")[:8] == PNG
        if wrong:
            assert len(m["finetune/accuracy_per_epoch"]) == SMALL["finetune_epochs"]
            assert m["fixed"] == sum(m["grid/pred_after"][i] == true[i]
                                     for i in range(25) if pred[i] != true[i])
            assert m["fixed"] == round(m["finetune/accuracy_per_epoch"][-1] * wrong)
            assert st.get_bytes(f"{prefix}/finetune-grid.png")[:8] == PNG
        assert result["finetune_result"][arch]["fixed"] == m["fixed"]


def test_report_holds_curves_grids_and_comparison(q2_run):
    uri, result = q2_run
    st = open_store(uri)
    html = st.get_text(result["report"]["report.html"])
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) >= 10  # histogram, samples, 2x(curves, grid, fine-tune), 2 comparisons
    assert all(base64.b64decode(i)[:8] == PNG for i in imgs)
    md = st.get_text(result["report"]["report.md"])
    assert "smoke profile" in md and "random initialisation (pretrained: false)" in md
    assert "ResNet18 vs VGG16" in md and "0.7285" in md and "0.9154" in md  # reference curves
    assert "11,689,512" in md and "138,357,544" in md
    folder = result["report"]["report.md"].rsplit("/", 1)[0]
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md):
        assert st.exists(f"{folder}/{name}")
    assert "vgg_minus_resnet_points" in result["comparison"]


def test_cli_bad_config_exits_before_anything_is_written(tmp_path):
    for bad, field in ((["--set", 'models=["alexnet"]'], "models"),
                       (["--set", "image_size=16"], "image_size"),
                       (["--set", "pretrained=maybe"], "pretrained"),
                       (["--set", "nope=1"], "unknown key 'nope'")):
        res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "q2-transfer",
                              "--store", f"file://{tmp_path}/s", *bad], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert field in res.stderr
    assert not (tmp_path / "s").exists()
