"""Fashion-MNIST: the real fetch (torchvision or a local mirror) and an offline generator.

Both write the four official IDX ``.gz`` files into the store under
``data/fashion-mnist/<version>/`` and a manifest with each file's sha256. The generator's
files have the official layout and load through ``torchvision.datasets.FashionMNIST``.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
from pydantic import Field

from tasks.core.config import SourceConfig, config_hash
from tasks.core.errors import DataError
from tasks.core.files import cache_dir, from_local_cache, md5_file, offline, sha256_file
from tasks.core.identity import code_digest
from tasks.core.runtime import Manifest, TaskRun, read_manifest, shared_result
from tasks.core.store import Store
from tasks.inputs import mirror_index

DATASET = "fashion-mnist"
QUESTIONS = ("q1-mlp", "q1-cnn")  # the questions that train on it
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Published md5 sums of the .gz files (the same ones torchvision checks).
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_IDX_DTYPE = {0x08: np.uint8}


class FetchConfig(SourceConfig):
    """Where Fashion-MNIST comes from.

    ``source="generate"``: synthetic data in the official format (offline, for smoke runs).
    ``source="download"``: the real files, from ``mirror`` (a local folder holding the four
    IDX files, gz or not) when given; else from the store's mirror index (``visionflows
    mirror``), the local cache, or torchvision's downloader (not with ``VF_OFFLINE=1``).
    """

    n_train: int = Field(2000, gt=0, le=60000)
    n_test: int = Field(1000, gt=0, le=10000)
    seed: int = 0

    @property
    def version(self) -> str:
        if self.source == "download":
            return "official"
        return "synthetic-" + config_hash(
            {"n_train": self.n_train, "n_test": self.n_test, "seed": self.seed,
             # the generator's code: an edit to it is another dataset
             "generator": code_digest(__name__)}, 10)

    @property
    def prefix(self) -> str:
        return f"data/{DATASET}/{self.version}"


# ---------------------------------------------------------------- IDX format

def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x0000 08 <ndim>)."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    # mtime=0: the same array always gives the same bytes (two fetches of one generated
    # dataset must agree byte for byte)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", compresslevel=6,
                                               fileobj=raw, mtime=0) as fh:
        fh.write(header)
        fh.write(arr.tobytes())


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not), checking magic number, dimensions and length."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path.name}: cannot read or decompress ({exc}); the file is corrupt "
                        "or truncated: delete it and fetch again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPE:
        raise DataError(f"{path.name}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path.name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:head])
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - head != expected:
        raise DataError(f"{path.name}: IDX header says shape {list(shape)} ({expected} bytes) "
                        f"but the file holds {len(raw) - head} bytes: truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape)


# ---------------------------------------------------------------- generator

def generate_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: one smooth template per class, shifted, scaled and noised."""
    base = np.random.default_rng(12345)  # templates are fixed across splits and seeds
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    templates = []
    for c in range(10):
        t = np.zeros((28, 28))
        for _ in range(3):
            cy, cx = base.uniform(0.2, 0.8, 2)
            sy, sx = base.uniform(0.06, 0.25, 2)
            t += np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
        stripes = np.sin(2 * np.pi * (c % 5 + 1) * (xx if c < 5 else yy))
        t = t / t.max() * 0.75 + 0.25 * (stripes > 0)
        templates.append(t)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = np.empty((n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        # a class shares its look with a neighbour class, so errors and confusions are real
        other = templates[(c + 1) % 10]
        mix = rng.uniform(0.0, 0.45)
        img = np.roll((1 - mix) * templates[c] + mix * other, tuple(rng.integers(-3, 4, 2)),
                      axis=(0, 1))
        img = img * rng.uniform(0.5, 1.0) + rng.normal(0, 0.35, (28, 28))
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def generate_files(folder: str | Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, Path]:
    """Write the four IDX .gz files of a synthetic Fashion-MNIST into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, s in (("train", n_train, seed * 2 + 1), ("test", n_test, seed * 2 + 2)):
        images, labels = generate_arrays(n, s)
        for kind, arr in (("images", images), ("labels", labels)):
            name = FILES[f"{split}_{kind}"]
            write_idx(folder / name, arr)
            out[f"{split}_{kind}"] = folder / name
    return out


# ---------------------------------------------------------------- real fetch

def _from_mirror(mirror: str, dest: Path, log) -> dict[str, Path]:
    src = Path(mirror).expanduser()
    if not src.is_dir():
        raise DataError(f"Fashion-MNIST mirror {mirror!r} is not a folder: pass a folder holding "
                        f"{', '.join(FILES.values())} (gz or not)")
    # torchvision's own layout (<root>/FashionMNIST/raw) works as a mirror too
    for candidate in (src, src / "FashionMNIST" / "raw", src / "raw"):
        if any((candidate / n).exists() or (candidate / n[:-3]).exists() for n in FILES.values()):
            src = candidate
            break
    out = {}
    for key, name in FILES.items():
        gz, plain = src / name, src / name[:-3]
        if gz.exists():
            got = md5_file(gz)
            if got != MD5[name]:
                raise DataError(f"{gz}: md5 {got} does not match the published {MD5[name]}; "
                                "the mirror copy is corrupt or not the official file")
            shutil.copyfile(gz, dest / name)
        elif plain.exists():
            read_idx(plain)  # validate structure; the published md5 is of the .gz
            with open(plain, "rb") as s, gzip.open(dest / name, "wb") as d:
                shutil.copyfileobj(s, d)
            log.info("%s: uncompressed mirror file, structure checked (md5 is only published "
                     "for the .gz)", plain.name)
        else:
            raise DataError(f"Fashion-MNIST mirror {src} lacks {name} (or {name[:-3]})")
        out[key] = dest / name
    return out


def _complete(folder: Path) -> bool:
    return all((folder / n).is_file() or (folder / n[:-3]).is_file() for n in FILES.values())


def _resolve_official(dest: Path, store: Store, log) -> tuple[dict[str, Path], str]:
    """The official files without an explicit mirror: the store's mirror index, then the
    local cache (torchvision's layout, ``$VF_CACHE_DIR/torchvision/FashionMNIST/raw``), then
    a download from torchvision's list of mirrors (md5 checked)."""
    tried = ["data.mirror: not set"]
    # 1. the store's mirror index (written by `visionflows mirror`)
    found: dict[str, Path] = {}
    for name in FILES.values():
        path, where = mirror_index.lookup(store, mirror_index.dataset_name(DATASET, name))
        if path is None:
            tried.append(where)
            break
        found[name] = path
    else:
        staged = dest.parent / "from-mirror-index"
        staged.mkdir(exist_ok=True)
        for name, path in found.items():
            shutil.copyfile(path, staged / name)
        log.info("Fashion-MNIST from the store's mirror index %s",
                 store.url(mirror_index.INDEX_KEY))
        return _from_mirror(str(staged), dest, log), \
            f"mirror-index:{store.url(mirror_index.PREFIX + '/fashion-mnist')}"
    # 2. the local cache: what was downloaded before
    root = cache_dir("torchvision")
    raw = root / "FashionMNIST" / "raw"
    cached = from_local_cache([raw], lambda p: _from_mirror(str(p), dest, log), tried, log,
                              "Fashion-MNIST", present=_complete)
    if cached is not None:
        return cached
    # 3. the internet
    if offline():
        raise DataError(mirror_index.unavailable_offline(
            "Fashion-MNIST (" + ", ".join(FILES.values()) + ")", tried,
            QUESTIONS, store,
            ", or pass a folder holding the four files with --set data.mirror=DIR"))
    from torchvision.datasets import FashionMNIST

    from tasks.inputs.download import DownloadError, download

    raw.mkdir(parents=True, exist_ok=True)
    failures = []
    for name in FILES.values():
        if (raw / name).is_file() and md5_file(raw / name) == MD5[name]:
            continue
        for base in FashionMNIST.mirrors:  # torchvision's own list of mirrors, in order
            try:
                download(base + name, raw / name, md5=MD5[name], label=name, log=log)
                break
            except DownloadError as exc:
                failures.append(str(exc))
        else:
            raise DataError(f"Fashion-MNIST download failed ({'; '.join(failures)}); pass a "
                            "local mirror with --set data.mirror=DIR, or "
                            + mirror_index.offline_fix(QUESTIONS, store))
    return _from_mirror(str(raw), dest, log), "download"


def fetch(cfg: FetchConfig, store: Store) -> Manifest:
    """Put Fashion-MNIST (real or generated) into the store; reuse it when already there and
    intact, repair it when damaged. Runs fetching it at once publish one copy (see
    ``TaskRun(shared=True)``)."""
    existing, damaged = shared_result(store, cfg.prefix)
    if existing is not None:
        return existing
    with TaskRun("fashion-mnist.fetch", cfg, store, cfg.prefix, shared=True) as run:
        folder = run.workdir / "files"
        folder.mkdir()
        if cfg.source == "generate":
            run.log.info("generating synthetic Fashion-MNIST (%d train / %d test, seed %d)",
                         cfg.n_train, cfg.n_test, cfg.seed)
            files = generate_files(folder, cfg.n_train, cfg.n_test, cfg.seed)
            run.inputs["source"] = "generator"
        elif cfg.mirror:
            files = _from_mirror(cfg.mirror, folder, run.log)
            run.inputs["source"] = f"mirror:{cfg.mirror}"
        else:
            files, run.inputs["source"] = _resolve_official(folder, store, run.log)
        counts, sha = {}, {}
        for key, path in files.items():
            arr = read_idx(path)
            check_arrays(key, arr, path.name)
            counts[key] = int(arr.shape[0])
            sha[key] = sha256_file(path)
            run.put_file(key, path)
        if counts["train_images"] != counts["train_labels"] or \
                counts["test_images"] != counts["test_labels"]:
            raise DataError(f"Fashion-MNIST image/label counts differ: {counts}")
        return run.finish({"counts": counts, "sha256": sha}, replace=damaged, dataset=DATASET,
                          version=cfg.version, classes=CLASSES)


def check_arrays(key: str, arr: np.ndarray, name: str) -> None:
    """Images must be ``[N, 28, 28]`` and labels ``[N]`` in 0..9: a valid IDX file of other
    sizes (an MNIST variant at 32x32, a CIFAR export) is not Fashion-MNIST."""
    if key.endswith("_images"):
        if arr.ndim != 3 or arr.shape[1:] != (28, 28):
            size = "x".join(map(str, arr.shape[1:])) or "scalars"
            raise DataError(f"{name}: images are {size}, Fashion-MNIST images are 28x28 (shape "
                            f"{list(arr.shape)}): not a Fashion-MNIST file; fix the mirror")
    elif arr.ndim != 1 or (arr.size and int(arr.max()) >= len(CLASSES)):
        raise DataError(f"{name}: labels must be one value 0..{len(CLASSES) - 1} per image, got "
                        f"shape {list(arr.shape)}"
                        + (f" with values up to {int(arr.max())}" if arr.size else "")
                        + ": not a Fashion-MNIST label file; fix the mirror")


def load_arrays(store: Store, prefix: str) -> dict[str, np.ndarray]:
    """Load the four arrays of a fetched dataset (by its store prefix), checking sha256."""
    manifest = read_manifest(store, prefix)
    local = cache_dir(f"datasets/{DATASET}")
    out = {}
    for key in FILES:
        want = manifest.metrics["sha256"][key]
        path = local / f"{want}.gz"
        if not path.exists() or sha256_file(path) != want:
            store.get_file(manifest.output_key(key), path)
            got = sha256_file(path)
            if got != want:
                path.unlink(missing_ok=True)
                raise DataError(f"{manifest.output_key(key)}: sha256 {got} does not match the "
                                f"manifest's {want}; the stored copy of "
                                f"{prefix} is damaged: rerun the flow (or the fetch task), "
                                "which finds the damage and fetches the dataset again")
        out[key] = read_idx(path)
    return out
