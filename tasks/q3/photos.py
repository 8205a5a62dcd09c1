"""Image inputs for any task that takes "a photo": where it comes from, and decoding it safely.

A source is one string:

- ``package:DIST/REL/PATH``: a file shipped inside an installed package, found through the
  package's import location (e.g. ``package:ultralytics/assets/bus.jpg``);
- ``http://...`` / ``https://...``: downloaded (time-out and size cap; refused offline);
- ``file://PATH`` or a local path (``~`` expanded; relative to the working directory);
- otherwise a key in the store (a local file of the same name wins).

``decode_image`` turns bytes into an ``H x W x 3`` uint8 RGB array, or raises ``InputError``
with a message that names the problem: not an image, truncated, too small, too large, an
unsupported pixel format. What it converts (16-bit, alpha, greyscale, EXIF rotation, CMYK,
palette) it says in ``notes``.
"""

from __future__ import annotations

import importlib.util
import io
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.core.errors import StoreError, VisionflowsError
from tasks.core.files import offline
from tasks.core.store import Store

# Real photos that ship inside installed packages: the default inputs of q3-segmentation.
PACKAGED_IMAGES = (
    "package:ultralytics/assets/bus.jpg",
    "package:ultralytics/assets/zidane.jpg",
    "package:matplotlib/mpl-data/sample_data/grace_hopper.jpg",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm")
USER_AGENT = "visionflows/0.1 (+image fetch)"


class InputError(VisionflowsError):
    """One input image is unusable; the message says why and what to do."""


# ---------------------------------------------------------------- sources

def package_file(ref: str) -> Path:
    """The file named by ``package:DIST/REL/PATH`` inside the installed package ``DIST``.

    The package is located with ``importlib.util.find_spec`` (its code is not imported).
    """
    body = ref.removeprefix("package:").strip("/")
    pkg, _, rel = body.partition("/")
    if not pkg or not rel:
        raise InputError(f"{ref!r}: expected package:PACKAGE/PATH/IN/PACKAGE "
                         "(e.g. package:ultralytics/assets/bus.jpg)")
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{ref!r}: package {pkg!r} is not installed (or is not a package); "
                         f"install it or give another image")
    for root in spec.submodule_search_locations:
        path = Path(root) / rel
        if path.is_file():
            return path
    raise InputError(f"{ref!r}: the installed package {pkg!r} "
                     f"({', '.join(spec.submodule_search_locations)}) has no file {rel!r}")


def source_name(source: str) -> str:
    """A short, key-safe name for a source: its file stem (``bus`` for ``.../bus.jpg``)."""
    path = urllib.parse.urlparse(source).path if "://" in source else source
    stem = Path(path.rstrip("/")).stem or "image"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:40] or "image"


def source_suffix(source: str) -> str:
    path = urllib.parse.urlparse(source).path if "://" in source else source
    suffix = Path(path).suffix.lower()
    return suffix if suffix in IMAGE_SUFFIXES else ".bin"


def _read_capped(fh, max_bytes: int, what: str) -> bytes:
    data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{what} is larger than the {max_bytes / 1e6:.0f} MB limit "
                         "(max_download_mb); give a smaller image or raise the limit")
    return data


def _download(url: str, max_bytes: int, timeout_s: float) -> bytes:
    if offline():
        raise InputError(f"{url}: downloads are disabled (VF_OFFLINE=1); download the image "
                         "elsewhere and give its local path or store key")
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (http/s only)
            return _read_capped(resp, max_bytes, url)
    except urllib.error.HTTPError as exc:
        raise InputError(f"{url}: download failed with HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"{url}: download failed ({reason}); check the URL and the network, "
                         "or give a local path or store key instead") from None


def read_source(source: str, store: Store | None = None, *, max_bytes: int = 50_000_000,
                timeout_s: float = 30.0) -> tuple[bytes, str]:
    """The bytes of ``source`` and where they came from (``package|url|file|store: ...``)."""
    src = source.strip()
    if not src:
        raise InputError("empty image source")
    if src.startswith("package:"):
        path = package_file(src)
        with open(path, "rb") as fh:
            return _read_capped(fh, max_bytes, str(path)), f"package: {path}"
    scheme = src.split("://", 1)[0].lower() if "://" in src else ""
    if scheme in ("http", "https"):
        return _download(src, max_bytes, timeout_s), f"url: {src}"
    if scheme and scheme != "file":
        raise InputError(f"{src!r}: unsupported scheme {scheme!r}; give a local path, an "
                         "http(s) URL, a package: reference or a key in this run's store")
    raw = urllib.parse.unquote(src[len("file://"):]) if scheme == "file" else src
    path = Path(raw).expanduser()
    if path.is_dir():
        raise InputError(f"{src!r} is a folder, not an image: list the image files themselves")
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                return _read_capped(fh, max_bytes, str(path)), f"file: {path.resolve()}"
        except PermissionError:
            raise InputError(f"{src!r}: permission denied reading {path.resolve()}") from None
    if store is not None and not scheme:
        try:
            if store.exists(src):
                data = store.get_bytes(src)
                if len(data) > max_bytes:
                    raise InputError(f"store key {src!r} is larger than the "
                                     f"{max_bytes / 1e6:.0f} MB limit (max_download_mb)")
                return data, f"store: {store.url(src)}"
        except InputError:
            raise
        except StoreError:
            pass  # not a valid key: report as not found below
    where = f", and no key {src!r} in store {store.uri}" if store is not None and not scheme \
        else ""
    raise InputError(f"{src!r} not found: no such local file "
                     f"({path.resolve() if not path.is_absolute() else path}){where}")


# ---------------------------------------------------------------- decoding

@dataclass
class Decoded:
    """A decoded photo: RGB pixels plus what the file was and what we changed."""

    rgb: np.ndarray                      # H x W x 3, uint8
    format: str                          # PIL's format name (JPEG, PNG, ...)
    mode: str                            # the file's pixel mode (RGB, L, I;16, RGBA, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL reports sizes."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_CONVERTIBLE = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


def _scale16(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def _to_rgb(img, notes: list[str]) -> np.ndarray:
    from PIL import Image

    mode = img.mode
    if mode in _SIXTEEN_BIT:
        notes.append("16-bit greyscale scaled to 8 bits (value / 257) and replicated to RGB")
        grey = _scale16(np.asarray(img))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "I":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise InputError(f"32-bit integer image with values {arr.min()}..{arr.max()}: "
                             "outside the 16-bit range; convert it to an 8-bit photo")
        notes.append("32-bit integer greyscale read as 16-bit (value / 257), replicated to RGB")
        grey = _scale16(arr)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise InputError("floating-point image (mode F), e.g. a depth map: not a photo; "
                         "convert it to an 8-bit RGB or greyscale image")
    has_alpha = mode in _ALPHA or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3]
        if alpha.min() == 255:
            notes.append(f"alpha channel ({mode}) ignored: fully opaque")
        else:
            share = float((alpha < 255).mean())
            notes.append(f"alpha channel ({mode}) composited on white "
                         f"({share:.1%} of pixels not opaque)")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode in ("1", "L"):
        notes.append("greyscale replicated to RGB")
    elif mode == "P":
        notes.append("palette image expanded to RGB")
    elif mode != "RGB":
        notes.append(f"converted from {mode} to RGB")
    if mode not in _CONVERTIBLE:
        try:
            return np.asarray(img.convert("RGB"))
        except (ValueError, OSError) as exc:
            raise InputError(f"pixel format {mode!r} cannot be converted to RGB ({exc}); "
                             "save the image as an 8-bit RGB JPEG or PNG") from None
    return np.asarray(img.convert("RGB"))


def _pil_open():
    """PIL's own ``Image.open``, even when another library has wrapped it.

    ultralytics replaces ``PIL.Image.open`` at import time with a wrapper that, on a file
    PIL cannot identify, tries to pip-install ``pi-heif`` and raises ModuleNotFoundError
    offline. Decoding a user's file must not install packages, so we call the original
    (kept by such wrappers as ``_image_open`` or ``__wrapped__``).
    """
    import sys

    from PIL import Image

    opener = Image.open
    if getattr(opener, "__module__", "PIL.Image") == "PIL.Image":
        return opener
    original = getattr(opener, "__wrapped__", None) or getattr(
        sys.modules.get(opener.__module__), "_image_open", None)
    if callable(original) and getattr(original, "__module__", "") == "PIL.Image":
        return original
    return opener


def decode_image(data: bytes, *, min_size: int = 16, max_pixels: int = 40_000_000,
                 max_aspect: float = 8.0) -> Decoded:
    """Decode image bytes into RGB; raise InputError with a clear reason when unusable.

    Args:
        min_size: smallest allowed shorter side in pixels (a 1x1 image is not a photo).
        max_pixels: largest allowed width x height (memory bound; also stops decompression
            bombs before they are decoded).
        max_aspect: largest allowed long side / short side.
    """
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    if not data:
        raise InputError("empty file (0 bytes): not an image")
    try:
        img = _pil_open()(io.BytesIO(data))
    except UnidentifiedImageError:
        head = data[:16]
        shown = head.decode("ascii", "replace") if head.isascii() else head.hex()
        raise InputError(f"not an image: no image format recognises this file "
                         f"({len(data)} bytes, starting {shown!r}); give a JPEG, PNG, "
                         "BMP, GIF, TIFF or WebP file") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"image refused as a decompression bomb: {exc}") from None
    fmt = img.format or "unknown"
    mode = img.mode
    w, h = img.size
    if w * h > max_pixels:
        raise InputError(f"{fmt} image of {w}x{h} = {w * h / 1e6:.1f} MP is larger than "
                         f"max_pixels={max_pixels / 1e6:.0f} MP; downscale it first or raise "
                         "max_pixels")
    if min(w, h) < min_size:
        raise InputError(f"{fmt} image of {w}x{h} px is too small to segment: its shorter side "
                         f"is under min_size={min_size} px; give a larger image (or lower "
                         "min_size)")
    if max(w, h) / min(w, h) > max_aspect:
        raise InputError(f"{fmt} image of {w}x{h} px has an aspect ratio of "
                         f"{max(w, h) / min(w, h):.1f}, more than max_aspect={max_aspect:g}: "
                         "crop it into tiles (or raise max_aspect)")
    notes: list[str] = []
    # Never accept a truncated file as a partly grey image, whatever another library set.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, zlib.error ...
        raise InputError(f"cannot decode this {fmt} file: it is truncated or corrupt "
                         f"({type(exc).__name__}: {exc}); re-download or re-export it") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes.append(f"{frames} frames: the first one is used")
    orientation = img.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
        notes.append(f"rotated upright by its EXIF orientation ({orientation})")
    rgb = _to_rgb(img, notes)
    return Decoded(rgb=np.array(rgb, dtype=np.uint8, order="C"), format=fmt, mode=mode,
                   notes=notes)


class InputsRejectedError(VisionflowsError):
    """Some inputs were rejected; the others' outputs, the report and the manifest exist.

    The CLI exits with code 3 (not 2) so that scripts can tell "partly done" from "nothing
    ran".
    """

    exit_code = 3
