"""Cache keys you can explain.

A step's key is built from four parts, each kept so that a miss can say what changed:
- ``config``: the resolved task config without its output prefix;
- ``source``: a hash of every project module the task's own module imports, transitively
  (found by reading the import statements, so a change in ``tasks/ml/loop.py`` invalidates a
  training task that imports it, while another question's code does not). Each file is
  hashed as its normalised syntax tree without docstrings, so an edit to a comment or a
  docstring is not a code change;
- ``inputs``: the content identity of the store inputs the config names (a dataset's file
  sha256s, an upstream run's config hash and finish time);
- ``versions``: torch / torchvision / ultralytics versions, and the image digest under the
  docker launcher (``VF_IMAGE_DIGEST``).

Entries live in the store: ``cache/<task>/<key>.json`` points at the manifest prefix of the
run that produced it; ``cache/<task>/slots/<slot>.json`` remembers the last key of a named
step (e.g. ``q1-mlp/train-b64-relu-cross_entropy``) so that a miss can be explained.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.core.log import get_logger
from tasks.core.runtime import Manifest, find_manifest
from tasks.core.store import Store, join

PROJECT_PACKAGES = ("tasks",)
INPUT_KEYS = ("data", "train", "dataset", "weights")
VERSIONED = ("torch", "torchvision", "ultralytics")


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
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
    return {m for m in found if m.split(".")[0] in PROJECT_PACKAGES}


@lru_cache(maxsize=64)
def source_modules(module: str) -> tuple[tuple[str, str], ...]:
    """``(relative path, sha256)`` of ``module`` and every project module it imports."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(".".join(parts[:i]))
        todo.extend(_imports(path, name))
    root = _module_file(PROJECT_PACKAGES[0]).parent.parent  # type: ignore[union-attr]
    out = []
    for path in sorted(set(seen.values())):
        rel = os.path.relpath(path, root)
        out.append((rel, code_hash(path)))
    return tuple(out)


def code_hash(path: Path) -> str:
    """A hash of what a module runs: its syntax tree without docstrings or comments (and
    without line numbers), so only a change to the code itself changes it."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if digest := os.environ.get("VF_IMAGE_DIGEST"):
        out["image"] = digest
    return out


def _input_identity(manifest: Manifest) -> str:
    sha = manifest.metrics.get("sha256")
    if isinstance(sha, dict):
        blob = json.dumps(sha, sort_keys=True)
    else:
        blob = f"{manifest.task}:{manifest.config_hash}:{manifest.finished_at}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def components(module: str, cfg: dict[str, Any], store: Store,
               image_digest: str | None = None) -> dict[str, Any]:
    """The parts of the cache key of a step whose task function lives in ``module``."""
    config = {k: v for k, v in cfg.items() if k != "out"}
    inputs = {}
    for key in INPUT_KEYS:
        value = cfg.get(key)
        if isinstance(value, str) and (m := find_manifest(store, value)) is not None:
            inputs[key] = _input_identity(m)
    vers = dict(versions())
    if image_digest:
        vers["image"] = image_digest
    return {"config": config, "source": dict(source_modules(module)),
            "inputs": inputs, "versions": vers}


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def explain(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Human-readable reasons why ``new`` differs from ``old`` (empty when equal)."""
    if old is None:
        return ["never run before"]
    reasons = []
    oc, nc = old.get("config", {}), new["config"]
    for k in sorted(set(oc) | set(nc)):
        if oc.get(k) != nc.get(k):
            reasons.append(f"config changed: {k} {oc.get(k)!r} -> {nc.get(k)!r}")
    os_, ns = old.get("source", {}), new["source"]
    for path in sorted(set(os_) | set(ns)):
        if os_.get(path) != ns.get(path):
            verb = "added" if path not in os_ else "removed" if path not in ns else "changed"
            reasons.append(f"{path} {verb}")
    oi, ni = old.get("inputs", {}), new["inputs"]
    for k in sorted(set(oi) | set(ni)):
        if oi.get(k) != ni.get(k):
            reasons.append("dataset sha changed" if k in ("data", "dataset")
                           else f"input {k!r} changed")
    ov, nv = old.get("versions", {}), new["versions"]
    for k in sorted(set(ov) | set(nv)):
        if ov.get(k) != nv.get(k):
            reasons.append(f"{k} version changed: {ov.get(k)} -> {nv.get(k)}")
    return reasons


def _same_config(manifest: Manifest, parts: dict[str, Any]) -> bool:
    return {k: v for k, v in manifest.config.items() if k != "out"} == parts["config"]


def lookup(store: Store, task: str, slot: str, parts: dict[str, Any]
           ) -> tuple[Manifest | None, list[str]]:
    """A cached manifest for these parts, or None with the reasons for the miss.

    An entry whose manifest was computed with another config than the key says (written by
    an older version that recorded keys against reused prefixes) is ignored, with a warning.
    """
    key = cache_key(parts)
    entry_key = join("cache", task, f"{key}.json")
    if store.exists(entry_key):
        entry = store.get_json(entry_key)
        manifest = find_manifest(store, entry["prefix"])
        if manifest is not None and _same_config(manifest, parts):
            return manifest, []
        if manifest is not None:
            get_logger("cache").warning(
                "cache entry %s points at %s, which was computed with another config: "
                "ignoring it (a poisoned entry from an older visionflows)",
                store.url(entry_key), store.url(entry["prefix"]))
            return None, ["the cached result was computed with another config (ignored)"]
    slot_key = join("cache", task, "slots", f"{slot}.json")
    previous = store.get_json(slot_key)["parts"] if store.exists(slot_key) else None
    reasons = explain(previous, parts) or ["cached output is gone"]
    return None, reasons


def record(store: Store, task: str, slot: str, parts: dict[str, Any],
           manifest: Manifest) -> str | None:
    """Remember ``manifest`` under the key of ``parts``, only if it was computed with that
    config (returns None, recording nothing, otherwise)."""
    if not _same_config(manifest, parts):
        get_logger("cache").warning("not caching %s: its config is not the requested one",
                                    store.url(manifest.prefix))
        return None
    key = cache_key(parts)
    entry = {"key": key, "task": task, "slot": slot, "prefix": manifest.prefix, "parts": parts}
    store.put_json(join("cache", task, f"{key}.json"), entry)
    store.put_json(join("cache", task, "slots", f"{slot}.json"), entry)
    return key
