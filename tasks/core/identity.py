"""A step's identity: everything that decides its result, hashed into one key.

A step is one task run with one config. Its identity has these parts, each kept apart so
that a difference can be explained:

- ``config``: the resolved task config, without its output prefix;
- ``inputs``: the fingerprint (config + output sha256s) of every upstream result the config
  names by store prefix (a dataset, a training run, ...);
- ``files``: the content hash of every local file or folder the config names by path (a
  weights file, a mirror folder);
- ``code``: the hash of every module the step may run. It is derived from where code lives,
  not from what one module happens to import: the ``tasks`` tree is cut into *units* (one
  per sub-package, ``tasks/q1/``, ``tasks/core/``, ..., and one per top-level module), and a
  step counts every file of its own unit, of the units every step runs (``ENTRY`` and
  ``SHARED``), and of every unit those reach, where *reach* is any import statement
  (anywhere in a file, lazy ones included) or any string constant naming a ``tasks.``
  module (how ``python -m tasks.q4.worker`` and name-keyed tables are spelled); the lookups
  that name every question (``LOOKUPS``: the registry and the questions' discovery) are
  followed only for a step whose own code calls them. A question's step therefore never
  counts another question's package, and a worker started as
  ``python -m`` counts because it lives in its question's package. Files are hashed as their
  syntax tree without docstrings, so an edit to a comment or a docstring is not a change;
  ``.j2`` report templates count by content for the units that render reports;
- ``environment``: the Python version and the installed version of every distribution in
  visionflows' dependency closure (what a step's process imports), or, under the docker
  launcher, the image's id instead (the image holds the code and the environment);
- ``device``: the resolved device kind (``cpu``, ``cuda:<GPU model>``) for a config with a
  ``device`` field (``auto`` resolves differently on a GPU box).

Every part is recomputed on each call; only file hashes and the dependency scan are
memoised, keyed by the files' ``(mtime, size)`` and the site folders' mtimes, so an edit or
an install is seen by the next step of a long-running process (``visionflows serve``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import platform
import re
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.core.settings import raw

# Units every step runs: the package, the task CLI (subprocess/docker), the registry and the
# questions' discovery it reads.
ENTRY = ("__init__", "__main__", "registry", "questions")
# Entry units that name every question (lookup tables): what they name is followed only for
# a step whose own code calls them (step_units).
LOOKUPS = ("registry", "questions")
# Shared packages any step may run (the runtime, the ML loop, the one downloader/resolver).
SHARED = ("core", "ml", "inputs")
# Config fields that never name a local path (the output prefix is the step's own place).
NOT_INPUTS = ("out",)
# Config fields that name an upstream result by store prefix.
UPSTREAM_FIELDS = ("data", "train", "dataset", "weights", "ingest", "segment", "model")
_TASKS_STRING = re.compile(r"^tasks(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")
_LOCK = threading.Lock()


def tasks_root() -> Path:
    """The ``tasks`` package folder this process runs (this file is ``tasks/core/...``)."""
    return Path(__file__).resolve().parent.parent


def unit_of(module: str) -> str:
    """``tasks.q1.train`` -> ``q1``; ``tasks.registry`` -> ``registry``; ``tasks`` ->
    ``__init__``."""
    parts = module.split(".")
    if parts[0] != "tasks":
        raise ValueError(f"{module!r} is not a module of the tasks package")
    return parts[1] if len(parts) > 1 else "__init__"


# ------------------------------------------------------------------ file hashes (memoised)

_FILE_MEMO: dict[tuple[str, int, int], tuple[str, frozenset[str]]] = {}


def code_hash(path: Path) -> str:
    """A hash of what a module runs: its syntax tree without docstrings or comments (and
    without line numbers), so only a change to the code itself changes it."""
    return _scan_file(path)[0]


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]


def _references(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every ``tasks.`` module a file imports (anywhere) or names in a string constant."""
    pkg = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and _TASKS_STRING.match(node.value)):
            found.add(node.value.split(":")[0])
    return {m for m in found if m == "tasks" or m.startswith("tasks.")}


def _scan_file(path: Path, module: str = "") -> tuple[str, frozenset[str]]:
    """``(hash, referenced tasks modules)`` of one file, memoised by its mtime and size."""
    st = path.stat()
    memo_key = (str(path), st.st_mtime_ns, st.st_size)
    with _LOCK:
        hit = _FILE_MEMO.get(memo_key)
    if hit is not None:
        return hit
    data = path.read_bytes()
    if path.suffix != ".py":
        result = (hashlib.sha256(data).hexdigest()[:16], frozenset())
    else:
        tree = ast.parse(data, str(path))
        refs = _references(tree, module or "tasks", path.name == "__init__.py")
        _strip_docstrings(tree)
        result = (hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16], frozenset(refs))
    with _LOCK:
        _FILE_MEMO[memo_key] = result
    return result


# ------------------------------------------------------------------ code units

@dataclass
class Unit:
    name: str
    files: dict[str, Path] = field(default_factory=dict)  # relative path -> file
    refs: dict[str, set[str]] = field(default_factory=dict)  # module -> tasks modules it names
    modules: dict[str, str] = field(default_factory=dict)  # relative path -> module name
    hashes: dict[str, str] = field(default_factory=dict)  # relative path -> code hash

    def reaches(self, modules: set[str] | None = None) -> set[str]:
        """The other units that ``modules`` of this unit (default: all of them) name."""
        out = set()
        for module, refs in self.refs.items():
            if modules is None or module in modules:
                out.update(unit_of(r) for r in refs)
        out.discard(self.name)
        return out


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = ["tasks", *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


_UNITS_MEMO: dict[str, tuple[tuple, dict[str, Unit]]] = {}


def _tree_signature(root: Path) -> tuple[list[Path], tuple]:
    """The ``.py`` files under ``root`` and the report templates beside it, with the
    ``(path, mtime, size)`` of each: any edit, addition or removal changes it."""
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        files.extend(Path(folder, n) for n in sorted(names) if n.endswith(".py"))
    templates = root.parent / "reports" / "templates"
    if templates.is_dir():
        files.extend(sorted(templates.glob("*.j2")))
    sig = []
    for path in files:
        st = os.stat(path)
        sig.append((str(path), st.st_mtime_ns, st.st_size))
    return files, tuple(sig)


def units(root: Path | None = None) -> dict[str, Unit]:
    """The ``tasks`` tree (``root``, default: this process's) cut into units, each with its
    files and the modules each file names. Report templates (``reports/templates`` beside
    ``tasks``) belong to the ``reporting`` unit, which renders them. Rebuilt whenever a
    file's mtime or size changes (or a file comes or goes)."""
    root = (root or tasks_root()).resolve()
    files, sig = _tree_signature(root)
    with _LOCK:
        hit = _UNITS_MEMO.get(str(root))
    if hit is not None and hit[0] == sig:
        return hit[1]
    found: dict[str, Unit] = {}
    for path in files:
        if path.suffix != ".py":
            if "reporting" in found:
                found["reporting"].files[f"reports/templates/{path.name}"] = path
                found["reporting"].hashes[f"reports/templates/{path.name}"] = \
                    _scan_file(path)[0]
            continue
        rel = path.relative_to(root)
        name = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        unit = found.setdefault(name, Unit(name))
        unit.files[f"tasks/{rel.as_posix()}"] = path
        module = _module_name(root, path)
        unit.modules[f"tasks/{rel.as_posix()}"] = module
        unit.hashes[f"tasks/{rel.as_posix()}"], refs = _scan_file(path, module)
        unit.refs[module] = set(refs)
    with _LOCK:
        _UNITS_MEMO[str(root)] = (sig, found)
    return found


def _closure_in_unit(unit: Unit, module: str) -> set[str]:
    """The modules of ``unit`` that ``module`` reaches by naming them (and the packages
    above each: importing ``a.b.c`` runs ``a.b``)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(2, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in unit.refs and prefix not in seen:
                seen.add(prefix)
                todo.extend(unit.refs[prefix])
                todo.append(prefix)
    return seen


def step_units(task_module: str, root: Path | None = None,
               table: dict[str, Unit] | None = None) -> list[str]:
    """The units a step whose task function lives in ``task_module`` may run.

    Every file of the step's own unit counts (a worker started by name, a module loaded by a
    table: whatever lives there); the other units it reaches are the ones the modules its
    task module reaches name, so a question's report code (and the report templates) is
    not part of its training step. Shared and entry units count whole, with all they name,
    but for the lookups (the registry, the questions' discovery): they name every question,
    and which one runs is the step's own unit, unless the step's own code (not the shared
    code) calls a lookup: the comparison and final reports load every question's comparer
    through the discovery. A task module outside
    the ``tasks`` package (an installed question) has no unit here: its step counts the
    entry and shared units (:func:`code_identity` adds its own package).
    """
    table = table if table is not None else units(root)
    own = unit_of(task_module) if _in_tasks(task_module) else None
    seen: set[str] = {own} if own in table else set()
    todo = [u for u in (*ENTRY, *SHARED) if u in table]
    called: set[str] = set()
    if own in table:
        reached = table[own].reaches(_closure_in_unit(table[own], task_module))
        todo.extend(reached)
        if own not in (*ENTRY, *SHARED):
            called = reached & set(LOOKUPS)
    while todo:
        name = todo.pop()
        if name in seen or name not in table:
            continue
        seen.add(name)
        if name not in LOOKUPS or name in called:
            todo.extend(table[name].reaches() - seen)
    return sorted(seen)


def _in_tasks(module: str) -> bool:
    return module == "tasks" or module.startswith("tasks.")


def external_files(module: str) -> dict[str, Path]:
    """``"<package>/<relative path>" -> file`` of every ``.py`` file of the top-level
    package that holds ``module`` (a question installed as its own package); empty when it
    cannot be found."""
    import importlib.util

    top = module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return {}
    if spec is None:
        return {}
    out: dict[str, Path] = {}
    for location in spec.submodule_search_locations or []:
        base = Path(location)
        for folder, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for n in sorted(names):
                if n.endswith(".py"):
                    path = Path(folder, n)
                    out[f"{top}/{path.relative_to(base).as_posix()}"] = path
    if not out and spec.origin and spec.origin.endswith(".py"):
        out[Path(spec.origin).name] = Path(spec.origin)
    return out


def code_identity(task_module: str, root: Path | None = None) -> dict[str, str]:
    """``relative path -> hash`` of every file a step of ``task_module`` may run (for a
    task outside the ``tasks`` package, its own package's files too)."""
    table = units(root)
    out: dict[str, str] = {}
    for name in step_units(task_module, table=table):
        out.update(table[name].hashes)
    if not _in_tasks(task_module):
        out.update({rel: _scan_file(path)[0]
                    for rel, path in external_files(task_module).items()})
    return dict(sorted(out.items()))


def code_digest(module: str, root: Path | None = None) -> str:
    """One short hash of the code ``module`` runs: the modules of its own unit it reaches
    (not the whole unit) and every other unit :func:`step_units` gives it. A generated
    dataset's version: an edit to its generator is another dataset, an edit to the
    question's training code is not."""
    table = units(root)
    own = table[unit_of(module)]
    reached = _closure_in_unit(own, module)
    out: dict[str, str] = {}
    for rel, module_name in own.modules.items():
        if module_name in reached:
            out[rel] = own.hashes[rel]
    for name in step_units(module, table=table):
        if name != own.name:
            out.update(table[name].hashes)
    return _digest(out)


# ------------------------------------------------------------------ environment

_ENV_MEMO: dict[tuple, dict[str, str]] = {}
ROOT_DISTRIBUTION = "visionflows"


def _site_signature() -> tuple:
    """The mtimes of the folders distributions are installed in: an install, upgrade or
    removal adds or removes a ``*.dist-info`` folder there, which changes its mtime."""
    sig = []
    for entry in sys.path:
        if os.path.basename(entry.rstrip("/")) not in ("site-packages", "dist-packages"):
            continue
        try:
            sig.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            continue
    return tuple(sig)


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    from packaging.requirements import InvalidRequirement, Requirement

    names = []
    for text in dist.requires or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra or another platform's dependency
        names.append(req.name)
    return names


def dependency_versions() -> dict[str, str]:
    """``name -> version`` of every installed distribution in visionflows' dependency
    closure (without extras), memoised until something is installed or removed."""
    sig = _site_signature()
    with _LOCK:
        hit = _ENV_MEMO.get(sig)
    if hit is not None:
        return hit
    out: dict[str, str] = {}
    todo = [ROOT_DISTRIBUTION]
    while todo:
        name = todo.pop()
        norm = re.sub(r"[-_.]+", "-", name).lower()
        if norm in out:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            out[norm] = "not installed"
            continue
        out[norm] = dist.version
        todo.extend(_requirement_names(dist))
    out.pop(ROOT_DISTRIBUTION, None)  # its own code is counted file by file
    result = dict(sorted(out.items()))
    with _LOCK:
        _ENV_MEMO.clear()
        _ENV_MEMO[sig] = result
    return result


def environment(image_id: str | None = None) -> dict[str, Any]:
    """What runs the step: the image (docker launcher) or this interpreter and packages."""
    if image_id:
        return {"image": image_id}
    return {"python": f"{platform.python_implementation()} {platform.python_version()}",
            "packages": dependency_versions()}


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda:<GPU model>`` (``mps``) for a config's device setting."""
    import torch

    name = device
    if device == "auto":
        name = "cuda" if torch.cuda.is_available() else (
            "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
            else "cpu")
    dev = torch.device(name if name != "gpu" else "cuda")
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(dev.index or 0)}"
    return dev.type


# ------------------------------------------------------------------ inputs and files

_TREE_MEMO: dict[tuple, str] = {}


def _local_path(value: str) -> Path | None:
    if value.startswith("file://"):
        value = value[len("file://"):]
    elif not value.startswith(("/", "./", "../", "~")):
        return None
    path = Path(value).expanduser()
    return path if path.exists() else None


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes),
    memoised by the files' mtimes and sizes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    sig = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    with _LOCK:
        hit = _TREE_MEMO.get(sig)
    if hit is not None:
        return hit
    from tasks.core.files import sha256_file

    h = hashlib.sha256()
    for p in files:
        rel = p.name if p == path else p.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0" + sha256_file(p).encode())
    result = h.hexdigest()[:16]
    with _LOCK:
        _TREE_MEMO[sig] = result
    return result


def local_files(cfg: dict[str, Any]) -> dict[str, str]:
    """``config path -> content hash`` of every local file or folder the config names."""
    out: dict[str, str] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if not (where == "" and k in NOT_INPUTS):
                    walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, str) and (path := _local_path(value)) is not None:
            out[where] = content_hash(path)

    walk(cfg, "")
    return out


def fingerprint(manifest: dict[str, Any]) -> str:
    """Identifies a stored result (a manifest as a dict): its config and the bytes of its
    outputs (its finish time, for a result written before outputs were hashed)."""
    digests = manifest.get("digests") or {}
    blob = json.dumps({"config": manifest.get("config_hash"), "digests": digests,
                       "finished_at": manifest.get("finished_at") if not digests else None},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def upstream_inputs(cfg: dict[str, Any], store) -> dict[str, str]:
    """Fingerprints of the upstream results the config names by store prefix."""
    from tasks.core.errors import MissingKeyError

    out = {}
    for key in UPSTREAM_FIELDS:
        value = cfg.get(key)
        if not (isinstance(value, str) and value):
            continue
        try:
            manifest = store.get_json(f"{value.strip('/')}/manifest.json")
        except (MissingKeyError, ValueError):  # not a prefix with a finished result
            continue
        out[key] = fingerprint(manifest)
    return out


# ------------------------------------------------------------------ the identity

def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Identity:
    """A step's identity: its parts and the key they hash to."""

    parts: dict[str, Any]

    @property
    def key(self) -> str:
        return _digest(self.parts)

    @property
    def basis(self) -> str:
        """The key without the config: what must match for a stored result or a checkpoint
        at a prefix to be continued or reused (configs are checked by the task's own rules)."""
        return _digest({k: v for k, v in self.parts.items() if k != "config"})

    def record(self) -> dict[str, Any]:
        """What a manifest keeps: the key, the basis and the parts but the config (the
        manifest holds it already)."""
        return {"key": self.key, "basis": self.basis,
                "parts": {k: v for k, v in self.parts.items() if k != "config"}}

    @classmethod
    def from_record(cls, record: dict[str, Any], config: dict[str, Any]) -> Identity:
        return cls({**record.get("parts", {}),
                    "config": {k: v for k, v in config.items() if k not in NOT_INPUTS}})


def of_step(task: str, cfg: dict[str, Any], store, image_id: str | None = None,
            root: Path | None = None) -> Identity:
    """The identity of task ``task`` run with the resolved config ``cfg`` (a JSON dict)
    against ``store``. ``image_id``: the docker launcher's image (``VF_IMAGE_ID`` inside
    the container), which stands for the code and the environment."""
    # the registry sits above the core: looked up by name, it adds no import edge (it only
    # maps task names to modules, and every step counts it as an ENTRY unit)
    task_module = importlib.import_module("tasks.registry").task_module
    image_id = image_id or raw("VF_IMAGE_ID")
    parts: dict[str, Any] = {
        "config": {k: v for k, v in cfg.items() if k not in NOT_INPUTS},
        "inputs": upstream_inputs(cfg, store),
        "files": local_files(cfg),
        "environment": environment(image_id),
    }
    if not image_id:
        parts["code"] = code_identity(task_module(task), root)
    if isinstance(cfg.get("device"), str):
        parts["device"] = device_kind(cfg["device"])
    return Identity(parts)


REASONS_SHOWN = 10


def explain(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Why the parts ``new`` differ from ``old``, one reason per change (empty when
    equal), at most ``REASONS_SHOWN`` and then how many more; ``old`` None: never computed
    before. A part ``old`` has no record of at all (an entry from an older visionflows) is
    one reason, not one per file or package."""
    if old is None:
        return ["never run before"]
    reasons = []
    for part in ("code", "environment"):
        if new.get(part) and not old.get(part):
            reasons.append(f"{part} not recorded by the earlier result (an older visionflows)")
            old = {**old, part: new[part]}
    oe, ne = old.get("environment") or {}, new.get("environment") or {}
    if ne.get("packages") and not oe.get("packages"):
        reasons.append("package versions not recorded by the earlier result")
        old = {**old, "environment": {**oe, "packages": ne["packages"]}}
    reasons += _changes(old, new)
    if len(reasons) > REASONS_SHOWN + 1:
        reasons = [*reasons[:REASONS_SHOWN], f"and {len(reasons) - REASONS_SHOWN} more"]
    return reasons


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    reasons = []
    oc, nc = old.get("config", {}), new.get("config", {})
    for k in sorted(set(oc) | set(nc)):
        if oc.get(k) != nc.get(k):
            reasons.append(f"config changed: {k} {oc.get(k)!r} -> {nc.get(k)!r}")
    ocode, ncode = old.get("code", {}), new.get("code", {})
    for path in sorted(set(ocode) | set(ncode)):
        if ocode.get(path) != ncode.get(path):
            verb = ("added" if path not in ocode else "removed" if path not in ncode
                    else "changed")
            reasons.append(f"{path} {verb}")
    oi, ni = old.get("inputs", {}), new.get("inputs", {})
    for k in sorted(set(oi) | set(ni)):
        if oi.get(k) != ni.get(k):
            reasons.append(f"input {k!r} changed")
    of, nf = old.get("files", {}), new.get("files", {})
    for k in sorted(set(of) | set(nf)):
        if of.get(k) != nf.get(k):
            reasons.append(f"local file {k!r} changed")
    oe, ne = old.get("environment", {}), new.get("environment", {})
    if oe.get("image") != ne.get("image"):
        reasons.append(f"image changed: {oe.get('image')} -> {ne.get('image')}")
    if oe.get("python") != ne.get("python"):
        reasons.append(f"Python changed: {oe.get('python')} -> {ne.get('python')}")
    op, np_ = oe.get("packages", {}), ne.get("packages", {})
    for k in sorted(set(op) | set(np_)):
        if op.get(k) != np_.get(k):
            reasons.append(f"{k} version changed: {op.get(k)} -> {np_.get(k)}")
    if old.get("device") != new.get("device"):
        reasons.append(f"device changed: {old.get('device')} -> {new.get('device')}")
    if not reasons and _digest(old) != _digest(new):
        reasons.append("the step's identity changed")
    return reasons
