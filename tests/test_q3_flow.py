"""q3-segmentation end to end under a Prefect harness on the S3 store (moto or MinIO):
the packaged photos give every per-image output; bad inputs are reported, the good ones
kept; the CLI exits 3 when any input was rejected."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.core.store import open_store
from tasks.q3.photos import PACKAGED_IMAGES, InputsRejectedError, package_file

ROOT = Path(__file__).resolve().parents[1]
FAST = {"arch": "deeplabv3_mobilenet_v3_large", "resize_size": 32}
OUTPUTS = ("classes", "labels", "overlay", "legend_json", "legend_png")


@pytest.fixture(scope="module")
def smoke_run(prefect_harness, s3_endpoint):
    """The smoke profile exactly as `visionflows run q3-segmentation` runs it."""
    from flows.q3_segmentation import q3_segmentation
    from tests.conftest import make_bucket

    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    return uri, q3_segmentation(profile="smoke", store=uri)


def test_every_packaged_photo_gets_every_output(smoke_run):
    uri, result = smoke_run
    st = open_store(uri)
    assert result["status"] == "ok" and result["ok"] == 3 and result["rejected"] == 0
    assert [e["source"] for e in result["images"]] == list(PACKAGED_IMAGES)
    sizes = {"01-bus": (810, 1080), "02-zidane": (1280, 720), "03-grace_hopper": (512, 600)}
    for e in result["images"]:
        assert e["status"] == "ok"
        w, h = sizes[e["name"]]
        assert tuple(e["size"]) == (w, h)
        for name in OUTPUTS:
            assert st.exists(e["outputs"][name]), (e["name"], name)
        labels = np.load(io.BytesIO(st.get_bytes(e["outputs"]["labels"])))
        assert labels.shape == (h, w)
        classes = Image.open(io.BytesIO(st.get_bytes(e["outputs"]["classes"])))
        assert classes.mode == "P" and np.array_equal(np.asarray(classes), labels)
        over = Image.open(io.BytesIO(st.get_bytes(e["outputs"]["overlay"])))
        assert over.size == (w, h) and over.mode == "RGB"
        leg = st.get_json(e["outputs"]["legend_json"])
        assert {c["index"] for c in leg["classes"]} == set(np.unique(labels).tolist())
        assert sum(c["pixels"] for c in leg["classes"]) == w * h == leg["total_pixels"]
        assert sum(c["share"] for c in leg["classes"]) == pytest.approx(1.0)
    seg = st.get_json(result["segment"] + "/manifest.json")
    assert seg["metrics"]["weights/source"] == "random"
    assert seg["preprocessing"]["resize_size"] == [64]
    assert st.exists(result["ingest"] + "/manifest.json")
    assert st.get_json("runs/q3-segmentation/latest.json")["run_id"] == result["run_id"]
    flow_manifest = st.get_json(result["manifest"])
    assert flow_manifest["status"] == "ok" and len(flow_manifest["images"]) == 3


def test_report_shows_images_side_by_side_and_explains_deeplab(smoke_run):
    uri, result = smoke_run
    st = open_store(uri)
    html = st.get_text(result["report"]["report.html"])
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 3
    panel = Image.open(io.BytesIO(base64.b64decode(imgs[0])))
    assert panel.size[0] > 2.5 * panel.size[1] * 0.5  # three panels in a row
    for term in ("atrous", "ASPP", "CRF", "upsampled", "Random weights"):
        assert term in html, term
    md = st.get_text(result["report"]["report.md"])
    prefix = result["report"]["report.md"].rsplit("/", 1)[0]
    names = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert len(names) == 3 and all(st.exists(f"{prefix}/{n}") for n in names)
    assert "| person |" in md or "| sofa |" in md or "share" in md


@pytest.fixture(scope="module")
def mixed_inputs(s3_endpoint, tmp_path_factory):
    """A store key (good), a store key (not an image), a truncated local JPEG, a missing path."""
    from tests.conftest import make_bucket

    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    st = open_store(uri)
    good = package_file(PACKAGED_IMAGES[2]).read_bytes()
    st.put_bytes("uploads/grace.jpg", good)
    st.put_bytes("uploads/notes.jpg", b"just some text")
    trunc = tmp_path_factory.mktemp("in") / "trunc.jpg"
    trunc.write_bytes(good[: len(good) // 3])
    return uri, ["uploads/grace.jpg", "uploads/notes.jpg", str(trunc), "/no/such/photo.png"]


def test_bad_inputs_fail_the_run_but_keep_the_good_outputs(prefect_harness, mixed_inputs):
    from flows.q3_segmentation import q3_segmentation

    uri, images = mixed_inputs
    with pytest.raises(InputsRejectedError) as err:
        q3_segmentation(profile="smoke", store=uri,
                        overrides={**FAST, "images": images}, run_id="mixed")
    msg = str(err.value)
    assert err.value.exit_code == 3
    assert "3 of 4 inputs rejected (1 segmented" in msg
    assert "not an image" in msg and "truncated or corrupt" in msg and "not found" in msg
    assert "allow_rejected=true" in msg
    st = open_store(uri)
    flow_manifest = st.get_json("runs/q3-segmentation/mixed/manifest.json")
    assert flow_manifest["status"] == "partial"
    status = {e["source"]: (e["status"], e.get("stage")) for e in flow_manifest["images"]}
    assert status == {images[0]: ("ok", None), images[1]: ("rejected", "decode"),
                      images[2]: ("rejected", "decode"), images[3]: ("rejected", "ingest")}
    good = flow_manifest["images"][0]
    assert all(st.exists(good["outputs"][k]) for k in OUTPUTS)
    report = st.get_text(flow_manifest["report"]["report.md"])
    assert "## Rejected inputs" in report and "/no/such/photo.png" in report


def test_allow_rejected_completes(prefect_harness, mixed_inputs):
    from flows.q3_segmentation import q3_segmentation

    uri, images = mixed_inputs
    result = q3_segmentation(profile="smoke", store=uri, overrides={
        **FAST, "images": [images[0], images[3]], "allow_rejected": True})
    assert result["status"] == "partial" and (result["ok"], result["rejected"]) == (1, 1)
    with pytest.raises(InputsRejectedError, match="all 1 inputs were rejected"):
        q3_segmentation(profile="smoke", store=uri, overrides={
            **FAST, "images": [images[3]], "allow_rejected": True})


def test_cli_exit_codes(tmp_path):
    """3: some input rejected (good outputs kept, report path printed); 2: bad config."""
    store = tmp_path / "s"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    images = f'["{PACKAGED_IMAGES[2]}", "{bad}"]'
    cmd = [sys.executable, "-m", "flows.cli", "run", "q3-segmentation", "--store",
           f"file://{store}", "--set", f"images={images}", "--set", f"arch={FAST['arch']}",
           "--set", "resize_size=32"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 3, res.stderr[-2000:]
    err = res.stderr[res.stderr.index("error: "):]
    assert "1 of 2 inputs rejected" in err and str(bad) in err
    html = re.search(r"report:\s+(\S+)", err).group(1)
    assert Path(html).is_file()
    assert len(list(store.glob("runs/q3-segmentation/*/segment/01-grace_hopper/*.png"))) == 3
    before = sorted(store.rglob("*"))
    res = subprocess.run(cmd[:7] + ["--set", "arch=unet"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 2 and "arch" in res.stderr and "Traceback" not in res.stderr
    assert sorted(store.rglob("*")) == before  # rejected before anything was written
