"""Reports you can open: presigned HTTPS links for an S3 store (fetched here over HTTP from
moto on 127.0.0.1, or a real MinIO), ``file://`` links for a local store, in the CLI's last
lines, in the Prefect artifacts and in the final report."""

from __future__ import annotations

import asyncio
import os
import re
import urllib.parse
import urllib.request

import pytest

from tasks.core.errors import ConfigError
from tasks.core.store import LINK_EXPIRY_DEFAULT_S, link_expiry_seconds, open_store


def fetch(url: str) -> bytes:
    assert urllib.parse.urlparse(url).hostname in ("127.0.0.1", "localhost"), url
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return resp.read()


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlparse(url).query))


@pytest.mark.parametrize("text, seconds", [
    (None, LINK_EXPIRY_DEFAULT_S), ("", 7 * 86400), ("3600", 3600), ("90m", 5400),
    ("12h", 43200), ("7d", 604800), ("1.5h", 5400)])
def test_link_expiry_parses_durations(text, seconds, monkeypatch):
    monkeypatch.delenv("VF_LINK_EXPIRY", raising=False)
    assert link_expiry_seconds(text) == seconds
    if text:
        monkeypatch.setenv("VF_LINK_EXPIRY", text)
        assert link_expiry_seconds() == seconds


@pytest.mark.parametrize("text, message", [
    ("8d", "longer than 7 days"), ("0", "not a duration"), ("-5m", "not a duration"),
    ("soon", "not a duration"), ("3w", "not a duration")])
def test_bad_link_expiry_is_refused_with_the_fix(text, message):
    with pytest.raises(ConfigError, match=message):
        link_expiry_seconds(text)


def test_s3_presigned_link_serves_the_object(s3_uri, monkeypatch):
    monkeypatch.delenv("VF_LINK_EXPIRY", raising=False)
    st = open_store(s3_uri)
    body = b"<!DOCTYPE html><p>report \xe2\x9c\x93</p>"
    st.put_bytes("reports/q1-mlp/run 1/report.html", body)
    url = st.presign("reports/q1-mlp/run 1/report.html")
    q = query(url)
    assert url.startswith(os.environ["VF_S3_ENDPOINT_URL"])
    assert q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and q["X-Amz-Signature"]
    assert q["X-Amz-Expires"] == str(7 * 86400)
    assert fetch(url) == body
    short = st.presign("reports/q1-mlp/run 1/report.html", 600)
    assert query(short)["X-Amz-Expires"] == "600" and fetch(short) == body


@pytest.mark.skipif(not os.environ.get("VF_TEST_S3_ENDPOINT"),
                    reason="moto does not check presigned signatures; needs a real MinIO")
def test_tampered_presigned_link_is_refused(s3_uri):
    st = open_store(s3_uri)
    st.put_bytes("r/report.html", b"x")
    url = st.presign("r/report.html", 600)
    with pytest.raises(urllib.error.HTTPError, match="403"):
        fetch(re.sub(r"X-Amz-Signature=[0-9a-f]{4}", "X-Amz-Signature=0000", url))


def test_s3_presign_without_credentials_gives_none(s3_uri, monkeypatch):
    st = open_store(s3_uri)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    st._presigner = None
    assert st.presign("r/report.html") is None


def test_local_link_is_a_file_uri_that_opens(tmp_path):
    st = open_store(f"file://{tmp_path}/store with spaces/ünï")
    st.put_bytes("reports/final/r/report.html", b"<p>ok</p>")
    url = st.presign("reports/final/r/report.html")
    assert url.startswith("file:///") and " " not in url and "%20" in url
    with urllib.request.urlopen(url) as resp:
        assert resp.read() == b"<p>ok</p>"


def test_cli_lines_hold_a_clickable_link(s3_uri, tmp_path, monkeypatch):
    from flows.cli import _link_lines

    monkeypatch.setenv("VF_LINK_EXPIRY", "2h")
    st = open_store(s3_uri)
    st.put_bytes("reports/q/report.html", b"<p>s3</p>")
    lines = _link_lines(st, "reports/q/report.html", "report:   ")
    assert lines[0] == f"report:   {s3_uri}/reports/q/report.html"
    link = lines[1].strip()
    assert query(link)["X-Amz-Expires"] == "7200" and fetch(link) == b"<p>s3</p>"
    assert "valid 2 h, until" in lines[2]
    local = open_store(f"file://{tmp_path}/s")
    local.put_bytes("reports/q/report.html", b"<p>file</p>")
    (line,) = _link_lines(local, "reports/q/report.html", "report:   ")
    assert line == f"report:   {(tmp_path / 's/reports/q/report.html').as_uri()}"


def test_bad_link_expiry_stops_the_cli_before_anything_runs(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "flows.cli", "run", "q1-mlp", "--store",
                          f"file://{tmp_path}/store", "--link-expiry", "30d"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "error: link expiry '30d' is longer than 7 days" in res.stderr
    assert not (tmp_path / "store").exists()


def _artifacts(key: str, mentioning: str = ""):
    """Artifacts ``key`` whose data mentions ``mentioning`` (other tests' runs share the
    session's Prefect server and the key)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return [a for a in asyncio.run(read()) if mentioning in str(a.data)]


def test_prefect_artifacts_link_the_report(q1_mlp_run):
    """The markdown artifact holds a real markdown link (presigned, to moto on 127.0.0.1),
    and a link artifact points at the same report; both open the report's bytes."""
    uri, result = q1_mlp_run
    st = open_store(uri)
    html = st.get_bytes(result["report"]["report.html"])
    run_id = result["run_id"]
    (md,) = [a.data for a in _artifacts("q1-mlp-report", f"Run `{run_id}`")]
    found = re.search(r"\*\*\[Open the HTML report\]\((http://127\.0\.0\.1:\d+/[^)\s]+)\)\*\*"
                      r" \(link valid until \d{4}-\d\d-\d\d \d\d:\d\d UTC\)", md)
    assert found, md
    assert fetch(found.group(1)) == html
    md_link = re.search(r"\[Markdown version\]\((http[^)\s]+)\)", md).group(1)
    assert fetch(md_link) == st.get_bytes(result["report"]["report.md"])
    assert f"In the store: `{uri}/reports/q1-mlp/" in md
    (link,) = _artifacts("q1-mlp-report-link", f"/reports/q1-mlp/{run_id}/")
    assert link.data.startswith("[q1-mlp report (HTML)](http://127.0.0.1:")
    assert fetch(link.data.split("](", 1)[1].rstrip(")")) == html
