"""STL10: the real fetch (torchvision or a local mirror) and an offline generator.

Both put the official ``stl10_binary/`` layout into the store under
``data/stl10/<version>/stl10_binary/`` (``train_X.bin``, ``train_y.bin``, ``test_X.bin``,
``test_y.bin``, ``class_names.txt``, ``fold_indices.txt``; ``unlabeled_X.bin`` only on
request, it is 2.7 GB) and a manifest with each file's md5 and sha256. Images are stored as
the official files store them: uint8, 3x96x96, channel-major and column-major; labels are
1..10 in the files and 0..9 once read. The generator's files load through
``torchvision.datasets.STL10`` itself (see ``torchvision_dataset``).
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from tasks.core.config import SourceConfig, config_hash
from tasks.core.errors import DataError
from tasks.core.files import cache_dir, from_local_cache, md5_file, offline, sha256_file
from tasks.core.identity import code_digest
from tasks.core.runtime import Manifest, TaskRun, read_manifest, shared_result
from tasks.core.store import Store
from tasks.inputs import mirror_index

DATASET = "stl10"
QUESTIONS = ("q2-transfer",)
FOLDER = "stl10_binary"
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SIZE = 96
IMAGE_BYTES = 3 * SIZE * SIZE
# Published md5 sums (the table torchvision's STL10 checks) and sizes of the real dataset.
MD5 = {
    "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
    "train_y.bin": "5a34089d4802c674881badbb80307741",
    "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4",
    "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
    "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
}
TGZ = "stl10_binary.tar.gz"
TGZ_MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
COUNTS = {"train": 5000, "test": 8000}
# store output name -> file name; the labelled splits and the two text files are always kept
FILES = {
    "train_x": "train_X.bin", "train_y": "train_y.bin",
    "test_x": "test_X.bin", "test_y": "test_y.bin",
    "class_names": "class_names.txt", "fold_indices": "fold_indices.txt",
}
UNLABELED = ("unlabeled_x", "unlabeled_X.bin")


class FetchConfig(SourceConfig):
    """Where STL10 comes from.

    ``source="generate"``: synthetic data in the official binary layout (offline, smoke runs).
    ``source="download"``: the real files, from ``mirror`` (a folder holding ``stl10_binary/``
    or its files, or the ``stl10_binary.tar.gz`` archive) when given; else from the store's
    mirror index (``visionflows mirror``), the local cache, or torchvision's downloader
    (2.6 GB archive; not with ``VF_OFFLINE=1``).
    """

    n_train: int = Field(500, gt=0, le=COUNTS["train"], description="generated train images")
    n_test: int = Field(800, gt=0, le=COUNTS["test"], description="generated test images")
    n_unlabeled: int = Field(20, ge=0, le=100_000, description="generated unlabeled images")
    include_unlabeled: bool = Field(False, description="also store unlabeled_X.bin")
    seed: int = 0

    @property
    def version(self) -> str:
        if self.source == "download":
            return "official" + ("-with-unlabeled" if self.include_unlabeled else "")
        return "synthetic-" + config_hash(
            {"n_train": self.n_train, "n_test": self.n_test, "n_unlabeled": self.n_unlabeled,
             "include_unlabeled": self.include_unlabeled, "seed": self.seed,
             # the generator's code: an edit to it is another dataset
             "generator": code_digest(__name__)}, 10)

    @property
    def prefix(self) -> str:
        return f"data/{DATASET}/{self.version}"


# ---------------------------------------------------------------- binary format

def write_images(path: str | Path, images: np.ndarray) -> None:
    """Write ``[N, 3, 96, 96]`` uint8 images (row-major, as displayed) in the STL10 layout.

    The official files are column-major per channel; torchvision transposes the last two
    axes after reading, so we transpose before writing.
    """
    arr = np.asarray(images, dtype=np.uint8)
    if arr.ndim != 4 or arr.shape[1:] != (3, SIZE, SIZE):
        raise ValueError(f"expected [N, 3, {SIZE}, {SIZE}] images, got {list(arr.shape)}")
    with open(path, "wb") as fh:
        fh.write(np.ascontiguousarray(arr.transpose(0, 1, 3, 2)).tobytes())


def read_images(path: str | Path) -> np.ndarray:
    """Read an STL10 ``*_X.bin`` file into ``[N, 3, 96, 96]`` uint8 (row-major)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(f"{path.name}: {size} bytes is not a whole number of 3x96x96 images "
                        f"({IMAGE_BYTES} bytes each): truncated or not an STL10 file")
    raw = np.fromfile(path, dtype=np.uint8)
    return raw.reshape(-1, 3, SIZE, SIZE).transpose(0, 1, 3, 2)


def read_labels(path: str | Path) -> np.ndarray:
    """Read an STL10 ``*_y.bin`` file (values 1..10) into 0-based int64 labels."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size and (raw.min() < 1 or raw.max() > 10):
        raise DataError(f"{Path(path).name}: labels must be 1..10, found {int(raw.min())}.."
                        f"{int(raw.max())}: not an STL10 label file")
    return raw.astype(np.int64) - 1


# ---------------------------------------------------------------- generator

def _hsv_palette(n: int) -> np.ndarray:
    hues = np.arange(n) / n
    out = []
    for h in hues:
        i, f = int(h * 6) % 6, h * 6 - int(h * 6)
        q, t = 1 - f, f
        out.append([(1, t, 0), (q, 1, 0), (0, 1, t), (0, q, 1), (t, 0, 1), (1, 0, q)][i])
    return np.asarray(out, dtype=np.float64)


def generate_arrays(n: int, seed: int, labelled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 96x96 RGB images: each class has its own colours, stripe texture and blob.

    A class's look is blended with a neighbour class's (random share up to 45 %), shifted,
    dimmed and noised, so a classifier has real errors and confusions to make. Returns
    ``[N, 3, 96, 96]`` uint8 images and 0..9 labels (balanced, shuffled).
    """
    base = np.random.default_rng(24680)  # class looks are fixed across splits and seeds
    fg = _hsv_palette(10)[[0, 3, 6, 9, 1, 4, 7, 2, 5, 8]] * 0.85 + 0.1
    bg = np.roll(fg, 5, axis=0) * 0.45 + 0.1
    freq = base.uniform(2.0, 7.0, 10)
    angle = np.arange(10) * np.pi / 10 + base.uniform(-0.1, 0.1, 10)
    centre = base.uniform(0.3, 0.7, (10, 2))
    radius = base.uniform(0.15, 0.3, 10)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1.0)
    images = np.empty((n, 3, SIZE, SIZE), dtype=np.uint8)

    def look(c: int, phase: float, dy: float, dx: float) -> np.ndarray:
        u = (xx - dx) * np.cos(angle[c]) + (yy - dy) * np.sin(angle[c])
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq[c] * u + phase)
        blob = np.exp(-(((yy - centre[c, 0] - dy) ** 2 + (xx - centre[c, 1] - dx) ** 2)
                        / radius[c] ** 2))
        mask = np.clip(0.6 * stripes + blob, 0, 1)
        return mask[None] * fg[c][:, None, None] + (1 - mask[None]) * bg[c][:, None, None]

    for i, c in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi)
        dy, dx = rng.uniform(-0.15, 0.15, 2)
        img = look(c, phase, dy, dx)
        mix = rng.uniform(0.0, 0.35)
        if mix > 0.02:
            img = (1 - mix) * img + mix * look((c + 1) % 10, phase, dy, dx)
        img = img * rng.uniform(0.75, 1.0) + rng.normal(0, 0.08, img.shape)
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    if not labelled:
        labels = np.full(n, -1)
    return images, labels.astype(np.int64)


def generate_files(folder: str | Path, n_train: int, n_test: int, n_unlabeled: int = 20,
                   seed: int = 0) -> dict[str, Path]:
    """Write a synthetic STL10 in the official layout into ``folder/stl10_binary``."""
    root = Path(folder) / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for split, n, s in (("train", n_train, seed * 3 + 1), ("test", n_test, seed * 3 + 2)):
        images, labels = generate_arrays(n, s)
        write_images(root / f"{split}_X.bin", images)
        (root / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        out[f"{split}_x"], out[f"{split}_y"] = root / f"{split}_X.bin", root / f"{split}_y.bin"
    unl = generate_arrays(n_unlabeled, seed * 3 + 3, labelled=False)[0] if n_unlabeled \
        else np.empty((0, 3, SIZE, SIZE), np.uint8)
    write_images(root / UNLABELED[1], unl)
    out[UNLABELED[0]] = root / UNLABELED[1]
    (root / "class_names.txt").write_text("\n".join(CLASSES) + "\n")
    # like the real file: 10 folds of training indices (1,000 of 5,000 each), one per line
    fold_rng = np.random.default_rng(seed + 99)
    per_fold = max(n_train // 5, 1)
    lines = [" ".join(map(str, np.sort(fold_rng.permutation(n_train)[:per_fold])))
             for _ in range(10)]
    (root / "fold_indices.txt").write_text("\n".join(lines) + "\n")
    out["class_names"], out["fold_indices"] = root / "class_names.txt", root / "fold_indices.txt"
    return out


def torchvision_dataset(root: str | Path, split: str, md5: dict[str, str], **kwargs):
    """torchvision's own ``STL10`` reader over ``root/stl10_binary`` with our md5 table.

    torchvision checks every file against the published md5 sums; a generated copy has its
    own sums (recorded in its manifest). This subclass only swaps that table, so
    torchvision's integrity check and loader both run unchanged. Files absent from ``md5``
    (e.g. ``unlabeled_X.bin``) are not checked.
    """
    from torchvision.datasets import STL10

    table = type("STL10Checked", (STL10,), {
        "train_list": [[n, md5[n]] for n in ("train_X.bin", "train_y.bin", UNLABELED[1])
                       if n in md5],
        "test_list": [[n, md5[n]] for n in ("test_X.bin", "test_y.bin") if n in md5],
    })
    return table(str(root), split=split, download=False, **kwargs)


# ---------------------------------------------------------------- real fetch

def _locate(src: Path) -> Path | None:
    for candidate in (src, src / FOLDER):
        if (candidate / "train_X.bin").exists() or (candidate / "test_X.bin").exists():
            return candidate
    return None


def _extract_tgz(archive: Path, dest: Path, include_unlabeled: bool, log) -> Path:
    got = md5_file(archive)
    if got != TGZ_MD5:
        raise DataError(f"{archive}: md5 {got} does not match the published {TGZ_MD5}; the "
                        "archive is corrupt, truncated or not the official one")
    wanted = set(FILES.values()) | ({UNLABELED[1]} if include_unlabeled else set())
    out = dest / "extracted"
    log.info("extracting %s from %s", ", ".join(sorted(wanted)), archive)
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if Path(m.name).name in wanted and m.isfile()]
        tar.extractall(out, members=members, filter="data")
    found = _locate(out)
    if found is None:
        raise DataError(f"{archive}: no {FOLDER}/train_X.bin inside; not the STL10 archive")
    return found


def _from_mirror(mirror: str, dest: Path, include_unlabeled: bool, log) -> dict[str, Path]:
    src = Path(mirror).expanduser()
    if src.is_file() and src.name.endswith(".tar.gz"):
        src = _extract_tgz(src, dest, include_unlabeled, log)
    elif src.is_dir() and _locate(src) is None and (src / TGZ).is_file():
        src = _extract_tgz(src / TGZ, dest, include_unlabeled, log)
    elif not src.is_dir():
        raise DataError(f"STL10 mirror {mirror!r} is neither a folder nor a .tar.gz archive: "
                        f"pass a folder holding {FOLDER}/ (or its files) or {TGZ}")
    folder = _locate(src) or src
    wanted = dict(FILES)
    if include_unlabeled:
        wanted[UNLABELED[0]] = UNLABELED[1]
    out: dict[str, Path] = {}
    for key, name in wanted.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"STL10 mirror {folder} lacks {name}; a complete {FOLDER}/ holds "
                            f"{', '.join(sorted(wanted.values()))}")
        if name in MD5:
            got = md5_file(path)
            if got != MD5[name]:
                raise DataError(f"{path}: md5 {got} does not match the published {MD5[name]}; "
                                "the mirror copy is corrupt or not the official file")
        out[key] = path
    return out


def _resolve_official(dest: Path, include_unlabeled: bool, store: Store, log
                      ) -> tuple[dict[str, Path], str]:
    """The official files without an explicit mirror: the store's mirror index, then the
    local cache (torchvision's layout, ``$VF_CACHE_DIR/torchvision``), then a download of
    torchvision's ``STL10.url`` (md5 checked)."""
    tried = ["data.mirror: not set"]
    # 1. the store's mirror index (written by `visionflows mirror`)
    archive, where = mirror_index.lookup(store, mirror_index.dataset_name(DATASET, TGZ))
    if archive is not None:
        log.info("STL10 from the store's mirror index: %s", where)
        return _from_mirror(str(archive), dest, include_unlabeled, log), f"mirror-index:{where}"
    tried.append(where)
    # 2. the local cache: what torchvision downloaded (and extracted) before
    root = cache_dir("torchvision")
    cached = from_local_cache([root / FOLDER, root / TGZ],
                              lambda p: _from_mirror(str(p), dest, include_unlabeled, log),
                              tried, log, "STL10")
    if cached is not None:
        return cached
    # 3. the internet
    if offline():
        raise DataError(mirror_index.unavailable_offline(
            f"STL10 ({TGZ})", tried, QUESTIONS, store,
            f", or pass a folder holding {FOLDER}/ or the {TGZ} archive with "
            "--set data.mirror=/data/stl10"))
    from torchvision.datasets import STL10

    from tasks.inputs.download import DownloadError, download

    log.info("downloading STL10 into %s (2.6 GB archive)", root)
    try:
        download(STL10.url, root / TGZ, md5=TGZ_MD5, label=TGZ, log=log)
    except DownloadError as exc:
        raise DataError(f"STL10 download failed ({exc}); pass a local mirror with --set "
                        f"data.mirror=DIR (a folder holding {FOLDER}/ or {TGZ}), or "
                        + mirror_index.offline_fix(QUESTIONS, store)) from None
    return _from_mirror(str(root / TGZ), dest, include_unlabeled, log), "download"


def fetch(cfg: FetchConfig, store: Store) -> Manifest:
    """Put STL10 (real or generated) into the store; reuse it when already there and intact,
    repair it when damaged; runs fetching it at once publish one copy."""
    existing, damaged = shared_result(store, cfg.prefix)
    if existing is not None:
        return existing
    with TaskRun("stl10.fetch", cfg, store, cfg.prefix, shared=True) as run:
        if cfg.source == "generate":
            run.log.info("generating synthetic STL10 (%d train / %d test / %d unlabeled, seed "
                         "%d)", cfg.n_train, cfg.n_test, cfg.n_unlabeled, cfg.seed)
            files = generate_files(run.workdir / "gen", cfg.n_train, cfg.n_test,
                                   cfg.n_unlabeled, cfg.seed)
            if not cfg.include_unlabeled:
                files.pop(UNLABELED[0])
            run.inputs["source"] = "generator"
        elif cfg.mirror:
            files = _from_mirror(cfg.mirror, run.workdir, cfg.include_unlabeled, run.log)
            run.inputs["source"] = f"mirror:{cfg.mirror}"
        else:
            files, run.inputs["source"] = _resolve_official(run.workdir, cfg.include_unlabeled,
                                                            store, run.log)
        counts: dict[str, int] = {}
        for split in ("train", "test"):
            n_x = files[f"{split}_x"].stat().st_size // IMAGE_BYTES
            n_y = read_labels(files[f"{split}_y"]).shape[0]
            read_images(files[f"{split}_x"])  # structure check
            if n_x != n_y:
                raise DataError(f"STL10 {split}: {n_x} images but {n_y} labels")
            counts[split] = n_x
        classes = files["class_names"].read_text().split()
        if classes != CLASSES:
            raise DataError(f"class_names.txt lists {classes}, expected {CLASSES}")
        md5, sha = {}, {}
        for key, path in files.items():
            md5[path.name] = md5_file(path)
            sha[key] = sha256_file(path)
            run.put_file(key, path, f"{FOLDER}/{path.name}")
        return run.finish({"counts": counts, "md5": md5, "sha256": sha}, replace=damaged,
                          dataset=DATASET, version=cfg.version, classes=CLASSES)


def materialize(store: Store, prefix: str) -> tuple[Path, Manifest]:
    """A local ``<root>/stl10_binary/`` copy of a fetched dataset, sha256-checked.

    Returns ``(root, manifest)``; ``root`` is what torchvision's ``STL10`` takes. Copies are
    cached (by content hash) under the visionflows cache, so a second call reads nothing.
    """
    manifest = read_manifest(store, prefix)
    tag = config_hash(manifest.metrics["sha256"], 16)
    root = cache_dir(f"datasets/{DATASET}/{tag}")
    folder = root / FOLDER
    folder.mkdir(exist_ok=True)
    for key, want in manifest.metrics["sha256"].items():
        name = Path(manifest.output_key(key)).name
        path = folder / name
        if path.exists() and sha256_file(path) == want:
            continue
        tmp = folder / f".{name}.part"
        store.get_file(manifest.output_key(key), tmp)
        got = sha256_file(tmp)
        if got != want:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{manifest.output_key(key)}: sha256 {got} does not match the "
                            f"manifest's {want}; the stored copy of "
                                f"{prefix} is damaged: rerun the flow (or the fetch task), "
                                "which finds the damage and fetches the dataset again")
        shutil.move(tmp, path)
    return root, manifest


def load_split(store: Store, prefix: str, split: Literal["train", "test"]
               ) -> tuple[np.ndarray, np.ndarray]:
    """``([N, 3, 96, 96] uint8 images, [N] int64 labels 0..9)`` of one split."""
    root, _ = materialize(store, prefix)
    images = read_images(root / FOLDER / f"{split}_X.bin")
    labels = read_labels(root / FOLDER / f"{split}_y.bin")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"STL10 {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels
