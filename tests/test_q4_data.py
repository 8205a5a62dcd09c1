"""Q4 dataset: the generator, the export validator, and the yolo-export.fetch task."""

from __future__ import annotations

import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from tasks.core.errors import ConfigError, DataError, MissingKeyError
from tasks.core.store import open_store
from tasks.inputs.download import public_url
from tasks.q4.data import (
    YoloDataConfig,
    fetch,
    materialize,
    validate_export,
)
from tasks.q4.shapes import CLASSES, generate_export


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export") / "shapes"
    generate_export(root, n_train=12, n_valid=6, n_test=3, image_size=64, max_objects=3, seed=1)
    return root


@pytest.fixture
def export(good_export, tmp_path) -> Path:
    """A fresh copy to break."""
    dest = tmp_path / "copy"
    shutil.copytree(good_export, dest)
    return dest


def _zip(folder: Path, dest: Path, top: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, f"{top}{p.relative_to(folder).as_posix()}")
    return dest


def _first_labelled(root: Path, split: str = "train") -> Path:
    return next(p for p in sorted((root / split / "labels").glob("*.txt")) if p.read_text())


# ---------------------------------------------------------------- generator

def test_generator_writes_the_roboflow_layout_and_passes_validation(good_export):
    data = yaml.safe_load((good_export / "data.yaml").read_text())
    assert data["names"] == CLASSES == ["blue", "green", "red", "vline", "white", "yellow"]
    assert data["nc"] == 6 and data["train"] == "../train/images"
    assert data["val"] == "../valid/images"
    assert len(list((good_export / "valid" / "images").glob("*.jpg"))) == 6
    v = validate_export(good_export)
    assert v.ok, [str(p) for p in v.problems]
    assert v.splits["train"]["images"] == 12 and v.splits["val"]["images"] == 6
    assert v.splits["test"]["images"] == 3
    assert v.splits["train"]["objects"] >= 12
    assert v.splits["train"]["backgrounds"] == 1  # 5 % of 12, as an empty label file
    for lab in (good_export / "train" / "labels").glob("*.txt"):
        for line in lab.read_text().splitlines():
            c, *xywh = line.split()
            assert 0 <= int(c) < 6 and all(0 <= float(x) <= 1 for x in xywh)


def test_generator_is_deterministic(tmp_path):
    a = generate_export(tmp_path / "a", 4, 2, image_size=64, seed=3)
    b = generate_export(tmp_path / "b", 4, 2, image_size=64, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


# ---------------------------------------------------------------- validator defects

def _defect_label_out_of_range(root: Path) -> tuple[str, str]:
    lab = _first_labelled(root)
    lines = lab.read_text().splitlines()
    lines.insert(1, "2 0.5 1.25 0.1 0.1")
    lab.write_text("\n".join(lines) + "\n")
    return f"{lab.relative_to(root).as_posix()}:2:", "out of range: 1.25"


def _defect_class_id(root: Path) -> tuple[str, str]:
    lab = _first_labelled(root, "valid")
    n = len(lab.read_text().splitlines())
    lab.write_text(lab.read_text() + "6 0.5 0.5 0.2 0.2\n")
    return f"{lab.relative_to(root).as_posix()}:{n + 1}:", "class id 6 >= nc=6"


def _defect_missing_label(root: Path) -> tuple[str, str]:
    lab = _first_labelled(root)
    lab.unlink()
    img = root / "train" / "images" / (lab.stem + ".jpg")
    return f"{img.relative_to(root).as_posix()}:", "no label file"


def _defect_corrupt_image(root: Path) -> tuple[str, str]:
    img = sorted((root / "valid" / "images").glob("*.jpg"))[2]
    img.write_bytes(img.read_bytes()[:120])
    return f"{img.relative_to(root).as_posix()}:", "cannot be decoded"


def _defect_missing_yaml_key(root: Path) -> tuple[str, str]:
    yml = root / "data.yaml"
    yml.write_text("".join(ln for ln in yml.read_text().splitlines(keepends=True)
                           if not ln.startswith("nc:")))
    return "data.yaml:1:", "missing required key 'nc'"


def _defect_bad_row(root: Path) -> tuple[str, str]:
    lab = _first_labelled(root)
    lab.write_text("1 0.5 0.5 0.2\n" + lab.read_text())
    return f"{lab.relative_to(root).as_posix()}:1:", "expected 5 values"


def _defect_nc_mismatch(root: Path) -> tuple[str, str]:
    yml = root / "data.yaml"
    text = yml.read_text().replace("nc: 6", "nc: 5")
    yml.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("nc:"))
    return f"data.yaml:{line}:", "nc=5 but names lists 6 classes"


@pytest.mark.parametrize("defect", [
    _defect_label_out_of_range, _defect_class_id, _defect_missing_label, _defect_corrupt_image,
    _defect_missing_yaml_key, _defect_bad_row, _defect_nc_mismatch,
], ids=lambda f: f.__name__.removeprefix("_defect_"))
def test_each_defect_is_reported_with_file_and_line(export, defect):
    where, what = defect(export)
    v = validate_export(export)
    assert not v.ok
    found = [str(p) for p in v.errors]
    assert any(msg.startswith(where) and what in msg for msg in found), found
    with pytest.raises(DataError) as err:
        v.raise_if_failed("test export")
    assert where in str(err.value) and "fix them" in str(err.value)


def test_all_problems_are_collected_not_just_the_first(export):
    _defect_label_out_of_range(export)
    _defect_corrupt_image(export)
    _defect_class_id(export)
    assert len(validate_export(export).errors) == 3


def test_backgrounds_declared_by_pattern_or_empty_file(export):
    lab = _first_labelled(export)
    lab.unlink()
    rel = f"train/images/{lab.stem}.jpg"
    assert not validate_export(export).ok
    v = validate_export(export, backgrounds=["train/images/" + lab.stem[:11] + "*"])
    assert v.ok, [str(p) for p in v.errors]
    assert v.splits["train"]["backgrounds"] == 2
    lab.write_text("")  # Roboflow's way: an empty label file
    assert validate_export(export).ok and rel


def test_missing_optional_test_split_is_a_warning(export):
    shutil.rmtree(export / "test")  # Roboflow keeps 'test: ../test/images' in data.yaml anyway
    v = validate_export(export)
    assert v.ok and "test" not in v.split_dirs
    assert any(str(w).startswith("data.yaml:") and "test split is ignored" in str(w)
               for w in v.warnings)
    shutil.rmtree(export / "valid")
    assert any("val: '../valid/images' is not a folder" in str(e)
               for e in validate_export(export).errors)


def test_orphan_label_is_a_warning(export):
    (export / "train" / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    v = validate_export(export)
    assert v.ok and any("ghost.txt" in str(w) for w in v.warnings)


# ---------------------------------------------------------------- fetch task

def _fetch(location: str, store_uri: str, **kw):
    return fetch(YoloDataConfig(source="export", location=location, name="shapes", **kw),
                 open_store(store_uri))


def test_fetch_from_zip_folder_and_store_key_gives_one_stored_copy(good_export, tmp_path):
    uri = f"file://{tmp_path / 'store'}"
    z = _zip(good_export, tmp_path / "roboflow.zip", top="shapes.v1i.yolov5pytorch/")
    m_zip = _fetch(str(z), uri)
    assert m_zip.prefix.startswith("data/shapes/") and len(m_zip.prefix.split("/")[-1]) == 16
    m_dir = _fetch(str(good_export), uri)
    assert m_dir.prefix == m_zip.prefix  # same content, same key; reused
    st = open_store(uri)
    st.put_file("uploads/export.zip", z)
    assert _fetch("store:uploads/export.zip", uri).prefix == m_zip.prefix
    assert _fetch(f"{st.uri}/uploads/export.zip", uri).prefix == m_zip.prefix
    for name in ("dataset", "data_yaml", "data_original_yaml", "validation"):
        assert st.exists(m_zip.output_key(name))  # under the prefix's published folder
    stored = yaml.safe_load(st.get_text(m_zip.output_key("data_yaml")))
    assert stored["train"] == "train/images" and stored["val"] == "valid/images"
    assert "../train/images" in st.get_text(m_zip.output_key("data_original_yaml"))
    assert m_zip.metrics["val/images"] == 6 and m_zip.model_extra["classes"] == CLASSES
    local = materialize(st, m_zip.prefix)
    data = yaml.safe_load(local.read_text())
    assert Path(data["path"]) == local.parent
    assert (Path(data["path"]) / data["val"]).is_dir()
    assert len(list((Path(data["path"]) / data["train"]).glob("*.jpg"))) == 12


def test_fetch_refuses_a_broken_export_and_stores_nothing(export, tmp_path):
    where, _ = _defect_class_id(export)
    uri = f"file://{tmp_path / 'store'}"
    with pytest.raises(DataError, match="class id 6 >= nc=6") as err:
        _fetch(str(export), uri)
    assert where in str(err.value)
    assert open_store(uri).list("data") == []


def test_fetch_rejects_zip_slip(good_export, tmp_path):
    z = _zip(good_export, tmp_path / "evil.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(DataError, match="unsafe path"):
        _fetch(str(z), f"file://{tmp_path / 'store'}")
    assert not (tmp_path.parent / "escaped.txt").exists()


@pytest.fixture
def http_dir(tmp_path):
    """A tiny HTTP server on 127.0.0.1 serving ``tmp_path / 'www'``."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(www), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_from_url_hides_the_query_key(good_export, http_dir, tmp_path, monkeypatch):
    www, base = http_dir
    _zip(good_export, www / "export.zip")
    m = _fetch(f"{base}/export.zip?key=SECRETKEY123", f"file://{tmp_path / 's'}")
    assert m.inputs["location"] == f"{base}/export.zip"
    assert "SECRETKEY123" not in open_store(f"file://{tmp_path / 's'}").get_text(
        f"{m.prefix}/manifest.json")
    monkeypatch.setenv("RF_TEST_KEY", "ENVSECRET")
    m2 = _fetch(f"{base}/export.zip?key=${{RF_TEST_KEY}}", f"file://{tmp_path / 's2'}")
    assert m2.prefix == m.prefix
    with pytest.raises(DataError, match="HTTP 404"):
        _fetch(f"{base}/missing.zip?key=SECRETKEY123", f"file://{tmp_path / 's'}")


def test_url_offline_and_bad_locations_fail_clearly(tmp_path, monkeypatch):
    uri = f"file://{tmp_path / 's'}"
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(DataError, match="offline"):
        _fetch("https://app.roboflow.com/ds/abc?key=zzz", uri)
    with pytest.raises(DataError, match="does not exist"):
        _fetch(str(tmp_path / "nope.zip"), uri)
    with pytest.raises(ConfigError, match="store:KEY"):
        _fetch("ftp://example.com/x.zip", uri)
    with pytest.raises(MissingKeyError, match="no object or prefix"):
        _fetch("store:uploads/none.zip", uri)
    with pytest.raises(ConfigError, match="data.location is required"):
        YoloDataConfig(source="export")
    assert public_url("https://u:p@host/x.zip?api_key=1") == "https://host/x.zip"


def test_generated_fetch_is_reused(tmp_path):
    uri = f"file://{tmp_path / 's'}"
    cfg = YoloDataConfig(source="generate", n_train=6, n_valid=3, image_size=64)
    a = fetch(cfg, open_store(uri))
    b = fetch(cfg, open_store(uri))
    assert a.prefix == b.prefix and a.finished_at == b.finished_at
    assert a.inputs["source"] == "generator"
