"""An offline generator of a Roboflow "YOLO v5 PyTorch" export with the seed's six classes.

Classes (in the original export's order): blue, green, red, vline, white, yellow. The five
colour classes are filled shapes (disc, box, triangle) of that colour; ``vline`` is a thin,
dark vertical line. Backgrounds vary (muted flat colour with noise, gradients, blotches,
stripes) but stay unsaturated and no brighter than light grey, so colours and white stay
separable (white is the hardest class here too, as in the reference). Some images are
backgrounds with an empty label file, as Roboflow exports null-annotated images.

Layout written (what Roboflow's zip holds)::

    data.yaml                 train/valid/test paths, nc, names, roboflow block
    README.dataset.txt
    train/images/*.jpg        train/labels/*.txt  (rows: class cx cy w h, normalised)
    valid/images/*.jpg        valid/labels/*.txt
    test/images/*.jpg         test/labels/*.txt   (when n_test > 0)
"""

from __future__ import annotations

import colorsys
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["blue", "green", "red", "vline", "white", "yellow"]
COLOURS = {"blue": (35, 80, 225), "green": (35, 175, 55), "red": (215, 35, 35),
           "white": (248, 248, 248), "yellow": (240, 215, 30)}
VLINE = CLASSES.index("vline")


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation, mid-brightness colour (never close to a class colour or white)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.68)
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A varied, unsaturated background as an HxWx3 float array."""
    kind = rng.integers(4)
    a, b = _muted(rng), _muted(rng)
    if kind == 0:  # flat
        img = np.broadcast_to(a, (size, size, 3)).copy()
    elif kind == 1:  # linear gradient in a random direction
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (np.cos(ang) * xx + np.sin(ang) * yy)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == 2:  # low-frequency blotches
        grid = rng.uniform(0, 1, (4, 4, 1))
        small = Image.fromarray((grid[..., 0] * 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC)
        t = np.asarray(small, dtype=np.float64)[..., None] / 255
        img = a * (1 - t) + b * t
    else:  # soft horizontal stripes (floor boards, shelves)
        period = rng.uniform(0.1, 0.3) * size
        t = (np.sin(np.arange(size) / period * 2 * np.pi) > 0).astype(float)[:, None, None]
        img = np.broadcast_to(a * (1 - 0.5 * t) + b * 0.5 * t, (size, size, 3)).copy()
    img = img + rng.normal(0, rng.uniform(2, 10), img.shape)
    return np.clip(img, 0, 200)


def _overlaps(box, boxes, limit: float = 0.05) -> bool:
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in boxes:
        iw, ih = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if iw > 0 and ih > 0 and iw * ih > limit * min((x1 - x0) * (y1 - y0),
                                                        (a1 - a0) * (b1 - b0)):
            return True
    return False


def draw_image(rng: np.random.Generator, size: int, max_objects: int,
               min_frac: float = 0.12, max_frac: float = 0.3) -> tuple[Image.Image, list[tuple]]:
    """One image and its label rows ``(class, cx, cy, w, h)`` (normalised).

    ``min_frac``/``max_frac`` bound an object's size as a share of the image side.
    """
    img = Image.fromarray(background(rng, size).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    rows: list[tuple] = []
    boxes: list[tuple] = []
    n = int(rng.integers(1, max_objects + 1))
    for _ in range(n):
        cls = int(rng.integers(len(CLASSES)))
        for _attempt in range(20):
            if cls == VLINE:
                w = max(3, int(rng.uniform(0.025, 0.05) * size))
                h = int(rng.uniform(max(min_frac * 2, 0.3), 0.85) * size)
            else:
                w = int(rng.uniform(min_frac, max_frac) * size)
                h = int(np.clip(w * rng.uniform(0.75, 1.33), min_frac * size, max_frac * size))
            x0 = int(rng.integers(0, size - w))
            y0 = int(rng.integers(0, size - h))
            box = (x0, y0, x0 + w, y0 + h)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        boxes.append(box)
        x1, y1 = x0 + w - 1, y0 + h - 1
        if cls == VLINE:
            shade = int(rng.integers(0, 35))
            draw.rectangle((x0, y0, x1, y1), fill=(shade, shade, shade))
        else:
            base = np.array(COLOURS[CLASSES[cls]])
            fill = tuple(int(v) for v in np.clip(base + rng.integers(-18, 19, 3), 0, 255))
            shape = rng.integers(3)
            if shape == 0:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            elif shape == 1:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
            else:
                draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        rows.append((cls, (x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size))
    return img, rows


DATA_YAML = """\
train: ../train/images
val: ../valid/images
{test}
nc: {nc}
names: [{names}]

roboflow:
  workspace: visionflows
  project: shapes-generated
  version: 1
  license: CC BY 4.0
  url: none (generated offline by tasks.q4.shapes, seed {seed})
"""


def generate_export(folder: str | Path, n_train: int, n_valid: int, n_test: int = 0,
                    image_size: int = 416, max_objects: int = 4, seed: int = 0,
                    background_share: float = 0.05, min_frac: float = 0.12,
                    max_frac: float = 0.3) -> Path:
    """Write a generated export into ``folder`` (created); return the folder."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    splits = [("train", n_train, 1), ("valid", n_valid, 2)] + ([("test", n_test, 3)]
                                                               if n_test else [])
    for split, n, offset in splits:
        rng = np.random.default_rng(seed * 10 + offset)
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        n_bg = int(round(n * background_share))
        for i in range(n):
            if i < n_bg:
                img = Image.fromarray(background(rng, image_size).astype(np.uint8))
                rows = []
            else:
                img, rows = draw_image(rng, image_size, max_objects, min_frac, max_frac)
            tag = hashlib.sha1(f"{seed}-{split}-{i}".encode()).hexdigest()[:10]
            stem = f"shape_{i:05d}_jpg.rf.{tag}"  # Roboflow's naming style
            img.save(root / split / "images" / f"{stem}.jpg", quality=92)
            (root / split / "labels" / f"{stem}.txt").write_text(
                "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in rows))
    (root / "data.yaml").write_text(DATA_YAML.format(
        test="test: ../test/images\n" if n_test else "", nc=len(CLASSES),
        names=", ".join(f"'{c}'" for c in CLASSES), seed=seed))
    (root / "README.dataset.txt").write_text(
        "Generated offline in Roboflow's 'YOLO v5 PyTorch' export layout.\n"
        f"Classes: {', '.join(CLASSES)}. Seed {seed}, image size {image_size}.\n")
    return root
