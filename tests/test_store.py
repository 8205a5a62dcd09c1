"""Store contract: the same tests against file:// and S3 (moto, or MinIO when configured)."""

from __future__ import annotations

import os

import pytest

from tasks.core.errors import ConfigError, MissingKeyError, StoreError
from tasks.core.store import LocalStore, S3Store, open_store


def test_bytes_roundtrip_and_exists(store_uri):
    st = open_store(store_uri)
    assert not st.exists("a/b.txt")
    uri = st.put_bytes("a/b.txt", b"hello")
    assert uri == st.url("a/b.txt") and uri.endswith("/a/b.txt")
    assert st.exists("a/b.txt")
    assert st.get_bytes("a/b.txt") == b"hello"
    st.put_bytes("a/b.txt", b"again")
    assert st.get_bytes("a/b.txt") == b"again"


def test_json_and_text_helpers(store_uri):
    st = open_store(store_uri)
    st.put_json("x/m.json", {"b": [1, 2], "a": 0.5})
    assert st.get_json("x/m.json") == {"a": 0.5, "b": [1, 2]}
    st.put_text("x/t.md", "ünïcode ✓")
    assert st.get_text("x/t.md") == "ünïcode ✓"


def test_files_roundtrip_large_multipart(store_uri, tmp_path):
    st = open_store(store_uri)
    src = tmp_path / "big.bin"
    data = os.urandom(20 << 20)  # above the 16 MiB multipart threshold
    src.write_bytes(data)
    st.put_file("blobs/big.bin", src)
    out = st.get_file("blobs/big.bin", tmp_path / "dl" / "big.bin")
    assert out.read_bytes() == data
    assert not [p for p in (tmp_path / "dl").iterdir() if p.name != "big.bin"]


def test_list_is_sorted_and_scoped(store_uri):
    st = open_store(store_uri)
    for key in ("runs/r2/x.json", "runs/r1/b.json", "runs/r1/a.json", "runsx/z.json", "top.txt"):
        st.put_bytes(key, b"1")
    assert st.list("runs") == ["runs/r1/a.json", "runs/r1/b.json", "runs/r2/x.json"]
    assert st.list("runs/r1/") == ["runs/r1/a.json", "runs/r1/b.json"]
    assert "top.txt" in st.list()
    assert st.list("nothing-here") == []


def test_missing_key_raises_clear_error(store_uri):
    st = open_store(store_uri)
    with pytest.raises(MissingKeyError, match="no object 'nope/x.json'"):
        st.get_bytes("nope/x.json")
    with pytest.raises(MissingKeyError):
        st.get_file("nope/x.json", "/tmp/never-written")


def test_delete(store_uri):
    st = open_store(store_uri)
    st.put_bytes("d/k", b"1")
    st.delete("d/k")
    assert not st.exists("d/k")
    st.delete("d/k")  # idempotent


@pytest.mark.parametrize("key", ["", "a//b", "../x", "a/./b"])
def test_bad_keys_rejected(store_uri, key):
    with pytest.raises(StoreError):
        open_store(store_uri).put_bytes(key, b"1")


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    st = LocalStore(tmp_path)
    st.put_bytes("k.bin", b"old")

    def boom(*_a, **_k):
        raise RuntimeError("disk died mid-write")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(RuntimeError):
        st.put_bytes("k.bin", b"new-but-broken")
    assert st.get_bytes("k.bin") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["k.bin"]  # no temp file left


def test_open_store_forms(tmp_path, monkeypatch):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    monkeypatch.setenv("VF_STORE", f"file://{tmp_path}/env")
    assert open_store().uri == f"file://{tmp_path}/env"
    with pytest.raises(ConfigError, match="unsupported store scheme 'gs'"):
        open_store("gs://bucket/x")
    with pytest.raises(ConfigError, match="no bucket"):
        open_store("s3:///x")


def test_prefix_with_spaces_and_unicode(s3_endpoint, tmp_path):
    from tests.conftest import make_bucket

    bucket = make_bucket(s3_endpoint)
    st = open_store(f"s3://{bucket}/my%20runs/ünï")
    assert isinstance(st, S3Store) and st.prefix == "my runs/ünï"
    st.put_bytes("a.txt", b"x")
    assert st.list() == ["a.txt"]
    local = open_store(f"file://{tmp_path}/with space/ünï")
    local.put_bytes("a.txt", b"x")
    assert local.list() == ["a.txt"]


def test_missing_bucket_message(s3_endpoint):
    st = open_store("s3://vf-no-such-bucket-here/x")
    with pytest.raises(StoreError, match="bucket 'vf-no-such-bucket-here' does not exist"):
        st.check()


def test_put_if_is_compare_and_swap(store_uri):
    st = open_store(store_uri)
    assert st.get_versioned("c/champion.json") is None
    assert st.put_if("c/champion.json", b"v1", None)
    assert not st.put_if("c/champion.json", b"other", None)  # exists already
    data, token = st.get_versioned("c/champion.json")
    assert data == b"v1"
    assert st.put_if("c/champion.json", b"v2", token)
    assert not st.put_if("c/champion.json", b"stale", token)  # token is out of date
    assert st.get_bytes("c/champion.json") == b"v2"
    assert st.list("c") == ["c/champion.json"]  # no lock files listed
