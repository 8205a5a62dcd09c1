"""Task image names: ``visionflows-tasks:<version>-<source hash>``, and the family of a task.

The tag is the project version plus a hash of the code that goes into the image (every
``.py`` file of the ``tasks``, ``flows`` and ``reports`` packages and the report templates),
computed the same way from a checkout and from an installed wheel. The build scripts tag
images with it and the docker launcher looks for exactly that tag, so a container always
runs the code of the process that launched it; a stale image is an error, never a surprise.

    python -m flows.launchers.images tag        # print the tag for this checkout
    python -m flows.launchers.images ref        # print the full image reference
    python -m flows.launchers.images wheel-tag dist/visionflows-0.1.0-py3-none-any.whl
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path

from tasks.core.settings import default, setting

REPOSITORY = default("VF_IMAGE_REPOSITORY")
PACKAGES = ("tasks", "flows", "reports")
SUFFIXES = (".py", ".j2")

# Task-name prefix -> image family. Everything else runs in the torch family.
FAMILIES: dict[str, str] = {"yolo.": "yolo", "ultralytics.": "yolo"}
DEFAULT_FAMILY = "torch"


def project_version() -> str:
    """The version from ``pyproject.toml`` beside the packages, else the installed metadata."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text()
        m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        if m and re.search(r'^name\s*=\s*"visionflows"', text, re.MULTILINE):
            return m.group(1)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("visionflows")
    except PackageNotFoundError:
        return "0.0.0"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} not found")
    return Path(next(iter(spec.submodule_search_locations)))


def source_files() -> list[tuple[str, Path]]:
    """(package-relative path, file) for every file that goes into the image, sorted."""
    out = []
    for pkg in PACKAGES:
        root = _package_dir(pkg)
        for path in root.rglob("*"):
            if (path.is_file() and path.suffix in SUFFIXES
                    and "__pycache__" not in path.parts):
                out.append((f"{pkg}/{path.relative_to(root).as_posix()}", path))
    return sorted(out)


def _hash(version: str, files: list[tuple[str, bytes]], length: int) -> str:
    h = hashlib.sha256(f"visionflows {version}\n".encode())
    for rel, data in sorted(files):
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
    return h.hexdigest()[:length]


def source_hash(length: int = 12) -> str:
    """A short hash of the version and the code that ends up in the image."""
    return _hash(project_version(), [(rel, p.read_bytes()) for rel, p in source_files()],
                 length)


def wheel_tag(wheel: str | os.PathLike, length: int = 12) -> str:
    """``<version>-<hash>`` of a built wheel: the same value ``image_tag()`` gives for the
    checkout it was built from, computed from what the image will really contain."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        version = next(line.split(":", 1)[1].strip()
                       for line in zf.read(meta).decode().splitlines()
                       if line.startswith("Version:"))
        files = [(n, zf.read(n)) for n in zf.namelist()
                 if n.split("/", 1)[0] in PACKAGES and n.endswith(SUFFIXES)]
    return f"{version}-{_hash(version, files, length)}"


def image_tag() -> str:
    """``<version>-<source hash>``, e.g. ``0.1.0-3f2a9c1d7e4b``."""
    return f"{project_version()}-{source_hash()}"


def default_image() -> str:
    """The image reference the docker launcher uses unless ``VF_IMAGE*`` says otherwise."""
    repo = setting("VF_IMAGE_REPOSITORY")
    return f"{repo}:{image_tag()}"


def family(task: str) -> str:
    """The image family of a task name (``yolo.train`` -> ``yolo``, others -> ``torch``)."""
    for prefix, fam in FAMILIES.items():
        if task.startswith(prefix):
            return fam
    return DEFAULT_FAMILY


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    what = args[0] if args else "ref"
    if what == "tag":
        print(image_tag())
    elif what == "ref":
        print(default_image())
    elif what == "version":
        print(project_version())
    elif what == "hash":
        print(source_hash())
    elif what == "wheel-tag" and len(args) == 2:
        print(wheel_tag(args[1]))
    elif what == "files":
        for rel, _ in source_files():
            print(rel)
    else:
        print("usage: python -m flows.launchers.images "
              "[tag|ref|version|hash|files|wheel-tag WHEEL]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
