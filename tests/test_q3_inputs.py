"""Q3 inputs: every kind of bad or unusual image, as one table; sources (path, store key,
package file, URL offline) and one bad image in a batch not losing the others."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.core.store import open_store
from tasks.q3.photos import (
    PACKAGED_IMAGES,
    InputError,
    decode_image,
    package_file,
    read_source,
    source_name,
)

GRACE = package_file("package:matplotlib/mpl-data/sample_data/grace_hopper.jpg")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _grad(w: int, h: int) -> np.ndarray:
    """A deterministic RGB gradient, h x w x 3 uint8."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                     (xx + yy) % 256], axis=2).astype(np.uint8)


def _png16_grey() -> tuple[bytes, np.ndarray]:
    arr = (np.arange(40 * 30).reshape(30, 40) * 53 % 65536).astype(np.uint16)
    return _save(Image.fromarray(arr), "PNG"), arr


def _png16_rgb() -> tuple[bytes, np.ndarray]:
    import cv2

    arr = (np.arange(30 * 40 * 3).reshape(30, 40, 3) * 211 % 65536).astype(np.uint16)
    ok, buf = cv2.imencode(".png", arr[:, :, ::-1])  # cv2 writes BGR; 48-bit PNG
    assert ok
    return buf.tobytes(), arr


def _rgba() -> tuple[bytes, np.ndarray]:
    rgb = _grad(40, 30)
    alpha = np.full((30, 40), 255, np.uint8)
    alpha[:, :20] = 0  # left half fully transparent
    return _save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"), rgb


def _exif_rotated() -> bytes:
    img = Image.fromarray(_grad(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return _save(img, "JPEG", exif=exif.tobytes(), quality=95)


PNG16_GREY, ARR16_GREY = _png16_grey()
PNG16_RGB, ARR16_RGB = _png16_rgb()
RGBA_PNG, RGBA_RGB = _rgba()
GRACE_BYTES = GRACE.read_bytes()
NOISE_PNG = _save(Image.fromarray(
    np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")


def _check_grey16(d):
    want = np.rint(ARR16_GREY / 257.0).astype(np.uint8)
    assert np.array_equal(d.rgb[:, :, 0], want) and np.array_equal(d.rgb[:, :, 2], want)
    assert d.mode == "I;16" and any("16-bit" in n for n in d.notes)


def _check_rgb16(d):
    assert d.size == (40, 30)
    assert np.abs(d.rgb.astype(int) - (ARR16_RGB >> 8)).max() <= 1  # high byte (±1 rounding)


def _check_rgba(d):
    assert (d.rgb[:, :20] == 255).all()                   # transparent: composited on white
    assert np.array_equal(d.rgb[:, 20:], RGBA_RGB[:, 20:])  # opaque: unchanged
    assert any("composited on white" in n and "50.0%" in n for n in d.notes)


def _check_grey(d):
    assert d.mode == "L" and (d.rgb[:, :, 0] == d.rgb[:, :, 1]).all()
    assert np.array_equal(d.rgb[:, :, 0], _grad(40, 30)[:, :, 0])


def _check_exif(d):
    assert d.size == (20, 40) and any("EXIF" in n for n in d.notes)


def _check_cmyk(d):
    assert d.mode == "CMYK" and d.rgb.shape == (24, 32, 3)
    r, g, b = d.rgb[12, 16].astype(int)
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red


# kind -> (bytes, expected): "ok" with a check, or a substring of the rejection message
BAD_INPUTS = {
    "non-image file": (b"this is not a picture\n" * 4, "not an image"),
    "empty file": (b"", "empty file"),
    "truncated JPEG": (GRACE_BYTES[: len(GRACE_BYTES) // 2], "truncated or corrupt"),
    "truncated PNG": (NOISE_PNG[: len(NOISE_PNG) // 2], "truncated or corrupt"),
    "1x1 image": (_save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), "too small"),
    "float image (mode F)": (_save(Image.fromarray(np.ones((30, 40), np.float32)), "TIFF"),
                             "floating-point"),
    "extreme aspect 400x20": (_save(Image.new("RGB", (400, 20)), "PNG"), "aspect ratio"),
    "16-bit greyscale PNG": (PNG16_GREY, _check_grey16),
    "16-bit RGB PNG": (PNG16_RGB, _check_rgb16),
    "RGBA with transparency": (RGBA_PNG, _check_rgba),
    "greyscale": (_save(Image.fromarray(_grad(40, 30)[:, :, 0]), "PNG"), _check_grey),
    "EXIF-rotated JPEG": (_exif_rotated(), _check_exif),
    "CMYK JPEG": (_save(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), "JPEG"), _check_cmyk),
    "palette GIF": (_save(Image.fromarray(_grad(40, 30)).convert("P"), "GIF"),
                    lambda d: d.rgb.shape == (30, 40, 3) and any("palette" in n
                                                                  for n in d.notes)),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_and_unusual_inputs(kind):
    data, expected = BAD_INPUTS[kind]
    if isinstance(expected, str):
        with pytest.raises(InputError, match=expected):
            decode_image(data)
    else:
        d = decode_image(data)
        assert d.rgb.dtype == np.uint8 and d.rgb.ndim == 3 and d.rgb.shape[2] == 3
        assert d.rgb.flags.writeable and d.rgb.flags.c_contiguous
        result = expected(d)
        assert result is None or result


def test_limits_are_configurable():
    one = _save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")
    assert decode_image(one, min_size=1).rgb.tolist() == [[[10, 20, 30]]]
    big = _save(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(InputError, match="max_pixels"):
        decode_image(big, max_pixels=50_000)


def test_real_photo_decodes_unchanged():
    d = decode_image(GRACE_BYTES)
    assert d.format == "JPEG" and d.mode == "RGB" and d.size == (512, 600) and d.notes == []
    assert np.array_equal(d.rgb, np.asarray(Image.open(GRACE).convert("RGB")))


def test_packaged_defaults_are_found_through_their_packages():
    from importlib.metadata import distribution

    paths = [package_file(ref) for ref in PACKAGED_IMAGES]
    assert [p.name for p in paths] == ["bus.jpg", "zidane.jpg", "grace_hopper.jpg"]
    # the same files as the installed distributions' own records say
    want = [distribution("ultralytics").locate_file("ultralytics/assets/bus.jpg"),
            distribution("ultralytics").locate_file("ultralytics/assets/zidane.jpg"),
            distribution("matplotlib").locate_file(
                "matplotlib/mpl-data/sample_data/grace_hopper.jpg")]
    assert [p.resolve() for p in paths] == [Path(w).resolve() for w in want]
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in paths)
    with pytest.raises(InputError, match="not installed"):
        package_file("package:no_such_pkg_xyz/a.jpg")
    with pytest.raises(InputError, match="has no file"):
        package_file("package:matplotlib/mpl-data/sample_data/nope.jpg")


def test_decoding_survives_ultralytics_pil_patch(monkeypatch):
    """ultralytics wraps PIL.Image.open (pip-installing pi-heif on unknown files); a
    non-image must still be a clean rejection, with nothing installed."""
    # importing ultralytics sets OMP_NUM_THREADS=1 in os.environ when unset: keep that out of
    # the rest of the session (child processes would train with one thread)
    monkeypatch.setenv("OMP_NUM_THREADS",
                       os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    import ultralytics.utils.patches  # noqa: F401  (applies the patch, as q4 does)
    from PIL import Image as PILImage

    assert PILImage.open.__module__ != "PIL.Image"
    with pytest.raises(InputError, match="not an image"):
        decode_image(b"this is not a picture\n" * 4)
    assert decode_image(GRACE_BYTES).size == (512, 600)


def test_sources_path_store_key_url(tmp_path, monkeypatch):
    st = open_store(f"file://{tmp_path / 'store'}")
    st.put_bytes("uploads/photo.jpg", GRACE_BYTES)
    local = tmp_path / "photo.jpg"
    local.write_bytes(GRACE_BYTES)
    assert read_source(str(local), st)[1].startswith("file: ")
    assert read_source(f"file://{local}", st)[0] == GRACE_BYTES
    data, origin = read_source("uploads/photo.jpg", st)
    assert data == GRACE_BYTES and origin.startswith("store: ")
    with pytest.raises(InputError, match="not found.*no key 'uploads/nope.jpg'"):
        read_source("uploads/nope.jpg", st)
    with pytest.raises(InputError, match="is a folder"):
        read_source(str(tmp_path), st)
    with pytest.raises(InputError, match="unsupported scheme 'ftp'"):
        read_source("ftp://example.com/a.jpg", st)
    with pytest.raises(InputError, match="larger than"):
        read_source(str(local), st, max_bytes=1000)
    monkeypatch.setenv("VF_OFFLINE", "1")
    with pytest.raises(InputError, match="downloads are disabled"):
        read_source("https://example.com/cat.jpg", st)
    monkeypatch.delenv("VF_OFFLINE")
    # the test network guard refuses the connection: a clear per-image error, quickly
    with pytest.raises(InputError, match="download failed"):
        read_source("http://192.0.2.1/cat.jpg", st, timeout_s=5)
    assert source_name("https://x.org/a/My Photo (1).JPG?x=1") == "My-Photo-1"


def test_url_download_over_loopback(tmp_path):
    """A real HTTP download (a local server), including the size cap."""
    import http.server
    import threading

    (tmp_path / "p.jpg").write_bytes(GRACE_BYTES)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        data, origin = read_source(f"{url}/p.jpg")
        assert data == GRACE_BYTES and origin == f"url: {url}/p.jpg"
        with pytest.raises(InputError, match="HTTP 404"):
            read_source(f"{url}/missing.jpg")
        with pytest.raises(InputError, match="larger than"):
            read_source(f"{url}/p.jpg", max_bytes=100)
    finally:
        server.shutdown()
        server.server_close()


def test_one_bad_image_does_not_lose_the_others(tmp_path):
    """ingest + segment with every bad kind in one batch: good images get all outputs."""
    from tasks.q3.segment import IngestConfig, SegmentConfig, ingest, segment

    st = open_store(f"file://{tmp_path / 'store'}")
    files = {}
    for i, kind in enumerate(BAD_INPUTS):
        path = tmp_path / f"in{i:02d}.img"
        path.write_bytes(BAD_INPUTS[kind][0])
        files[kind] = str(path)
    sources = [str(GRACE), *files.values(), str(tmp_path / "missing.jpg")]
    ing = ingest(IngestConfig(out="run/inputs", images=sources), st)
    assert ing.metrics == {"inputs": len(sources), "ingested": len(sources) - 1, "rejected": 1}
    seg = segment(SegmentConfig(out="run/seg", ingest="run/inputs", pretrained=False,
                                arch="deeplabv3_mobilenet_v3_large", resize_size=32,
                                device="cpu"), st)
    entries = seg.model_extra["images"]
    assert [e["source"] for e in entries] == sources
    by_source = {e["source"]: e for e in entries}
    assert by_source[sources[-1]]["stage"] == "ingest"
    assert "not found" in by_source[sources[-1]]["error"]
    for kind, src in files.items():
        e, expected = by_source[src], BAD_INPUTS[kind][1]
        if isinstance(expected, str):
            assert e["status"] == "rejected" and e["stage"] == "decode", kind
            assert expected in e["error"], (kind, e["error"])
        else:
            assert e["status"] == "ok", (kind, e.get("error"))
    ok = [e for e in entries if e["status"] == "ok"]
    assert len(ok) == 1 + sum(not isinstance(v[1], str) for v in BAD_INPUTS.values())
    assert seg.metrics["images/ok"] == len(ok)
    assert seg.metrics["images/rejected"] == len(entries) - len(ok)
    for e in ok:
        for name in ("classes", "labels", "overlay", "legend_json", "legend_png"):
            assert st.exists(e["outputs"][name]), (e["name"], name)
        labels = np.load(io.BytesIO(st.get_bytes(e["outputs"]["labels"])))
        assert labels.shape == (e["size"][1], e["size"][0])
    for e in entries:
        if e["status"] != "ok":
            assert "outputs" not in e
            assert not st.list(f"run/seg/{e['name']}")
