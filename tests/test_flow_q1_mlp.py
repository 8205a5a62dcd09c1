"""q1-mlp end to end under a Prefect harness, against the S3 store (moto or MinIO)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest

from tasks.core.store import open_store
from tests.conftest import Q1_MLP_SMALL as SMALL


@pytest.fixture
def q1_run(q1_mlp_run):
    return q1_mlp_run


def test_every_manifest_exists(q1_run):
    uri, result = q1_run
    st = open_store(uri)
    assert st.exists(result["data"] + "/manifest.json")
    assert len(result["train"]) == 6 and len(result["eval"]) == 6
    for prefix in [*result["train"].values(), *result["eval"].values()]:
        assert st.exists(prefix + "/manifest.json"), prefix
    assert st.exists(result["manifest"])
    assert st.get_json("runs/q1-mlp/latest.json")["run_id"] == result["run_id"]


def test_metrics_in_range_and_above_chance(q1_run):
    uri, result = q1_run
    st = open_store(uri)
    for prefix in result["eval"].values():
        m = st.get_json(prefix + "/manifest.json")["metrics"]
        for key in ("test/accuracy", "test/precision_macro", "test/recall_macro", "test/f1_macro"):
            assert 0.0 <= m[key] <= 1.0
        assert len(m["test/per_class"]["precision"]) == 10
    best = max(st.get_json(p + "/manifest.json")["metrics"]["test/accuracy"]
               for p in result["eval"].values())
    assert best > 0.3  # chance is 0.1 on the generated classes
    assert {g["key"] for g in result["groups"]} == {"batch_size", "activation", "loss"}


def test_html_report_embeds_its_images(q1_run):
    uri, result = q1_run
    st = open_store(uri)
    html = st.get_text(result["report"]["report.html"])
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) >= 9
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs[:3])
    assert "smoke profile" in html and "Reference" in html
    md = st.get_text(result["report"]["report.md"])
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md):
        assert st.exists(result["report"]["report.md"].rsplit("/", 1)[0] + "/" + name)


def test_cli_bad_config_exits_before_anything_is_written(tmp_path):
    for bad, field in ((["--set", "batch_sizes=[0]"], "batch_sizes"),
                       (["--set", "activations=[\"swish\"]"], "activations"),
                       (["--set", "nope=1"], "unknown key 'nope'")):
        res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "q1-mlp", "--store",
                              f"file://{tmp_path}/s", *bad], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 2, res.stderr
        assert field in res.stderr
    assert not (tmp_path / "s").exists()


def test_second_run_reuses_fetch_and_cached_training(q1_run, s3_endpoint):
    import boto3

    from flows.q1_mlp import q1_mlp
    from tests.conftest import make_bucket

    uri, first = q1_run
    # a copy of the store, so the shared one keeps its latest run for other tests
    src_bucket = uri.split("/")[2]
    uri = f"s3://{make_bucket(s3_endpoint)}/vf"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for obj in s3.list_objects_v2(Bucket=src_bucket).get("Contents", []):
        s3.copy_object(Bucket=uri.split("/")[2], Key=obj["Key"],
                       CopySource={"Bucket": src_bucket, "Key": obj["Key"]})
    st = open_store(uri)
    fetched = st.get_json(first["data"] + "/manifest.json")
    second = q1_mlp(profile="smoke", store=uri, overrides=SMALL)
    assert second["data"] == first["data"]
    # the fetch was reused: its manifest (and every file it lists) is untouched
    assert st.get_json(first["data"] + "/manifest.json") == fetched
    assert second["train"] == first["train"]  # cache hits point at the first run's outputs
    champ = st.get_json("models/q1-mlp-smoke/champion.json")
    assert champ["metric"] == "test/accuracy"
    assert second["champion"]["decision"] == "promoted"  # same value: a tie promotes
    changed = q1_mlp(profile="smoke", store=uri,
                     overrides={**SMALL, "data": {**SMALL["data"], "seed": 1}})
    assert changed["data"] != first["data"]  # a new dataset version is fetched
    assert set(changed["train"].values()).isdisjoint(first["train"].values())


def test_repeats_report_mean_and_std(prefect_harness, tmp_path):
    import statistics

    from flows.q1_mlp import q1_mlp
    from tasks.plans import resolve_config
    from tasks.q1.plan import q1_mlp_cells

    overrides = {**SMALL, "batch_sizes": [64], "activations": ["relu", "tanh"],
                 "losses": ["cross_entropy"], "repeats": 3}
    cells, groups = q1_mlp_cells(resolve_config("q1-mlp", "smoke", overrides))
    assert len(cells) == 2 * 3
    assert groups[0]["repeats"]["b64-relu-cross_entropy"] == [
        "b64-relu-cross_entropy-seed1", "b64-relu-cross_entropy-seed2"]
    uri = f"file://{tmp_path}/store"
    result = q1_mlp(profile="smoke", store=uri, overrides=overrides)
    st = open_store(uri)
    accs = [st.get_json(result["eval"][c] + "/manifest.json")["metrics"]["test/accuracy"]
            for c in ("b64-relu-cross_entropy", "b64-relu-cross_entropy-seed1",
                      "b64-relu-cross_entropy-seed2")]
    assert len(set(accs)) > 1  # the seeds really differ
    report_dir = result["report"]["report.html"].rsplit("/", 1)[0]
    summary = st.get_json(report_dir + "/manifest.json")["metrics"]["summary"]
    relu = next(r for r in summary if r["variant"] == "batch_size=batch 64")
    assert relu["seeds"] == 3
    assert relu["value"] == pytest.approx(statistics.fmean(accs))
    assert relu["std"] == pytest.approx(statistics.stdev(accs))
    md = st.get_text(result["report"]["report.md"])
    assert "± std (n seeds)" in md and f"± {statistics.stdev(accs):.4f} (3)" in md
    assert any(k.startswith(report_dir + "/spread-") for k in st.list(report_dir))
