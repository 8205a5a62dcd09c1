"""Cache keys you can explain.

A step's key is its identity (:mod:`tasks.core.identity`): config, inputs, local files,
the code it may run, the environment (or the docker image) and the device. Each part is
kept, so that a miss can say what changed.

Entries live in the store: ``cache/<task>/<key>.json`` points at the manifest prefix of the
run that produced it; ``cache/<task>/slots/<slot>.json`` remembers the last key of a named
step (e.g. ``<flow>/train-b64-relu-cross_entropy``) so that a miss can be explained. An entry
is trusted only when the manifest it points at records the same key: one written by an older
visionflows (no key in its manifest) or for another identity is ignored.
"""

from __future__ import annotations

from typing import Any

from tasks.core.errors import MissingKeyError
from tasks.core.identity import Identity, explain, of_step
from tasks.core.log import get_logger
from tasks.core.runtime import Manifest, find_manifest
from tasks.core.store import Store, join

__all__ = ["components", "cache_key", "explain", "lookup", "record", "manifest_key_of"]


def components(task: str, cfg: dict[str, Any], store: Store,
               image_id: str | None = None) -> dict[str, Any]:
    """The parts of the cache key of task ``task`` run with ``cfg`` (see
    :func:`tasks.core.identity.of_step`)."""
    return of_step(task, cfg, store, image_id=image_id).parts


def cache_key(parts: dict[str, Any]) -> str:
    return Identity(parts).key


def manifest_key_of(manifest: Manifest) -> str | None:
    """The key a manifest records it was computed under (None: written without one)."""
    ident = manifest.identity
    return ident.get("key") if isinstance(ident, dict) else None


def lookup(store: Store, task: str, slot: str, parts: dict[str, Any]
           ) -> tuple[Manifest | None, list[str]]:
    """A cached manifest for these parts, or None with the reasons for the miss.

    An entry whose manifest does not record this very key (computed under another identity,
    or written by an older visionflows that recorded none) is ignored, with a warning.
    """
    key = cache_key(parts)
    entry_key = join("cache", task, f"{key}.json")
    entry = _read_entry(store, entry_key)
    if entry is not None:
        manifest = find_manifest(store, entry["prefix"])
        if manifest is not None and manifest_key_of(manifest) == key:
            return manifest, []
        if manifest is not None:
            why = ("records no key (written by an older visionflows)"
                   if manifest_key_of(manifest) is None else "was computed under another key")
            get_logger("cache").warning("cache entry %s points at %s, which %s: not trusted",
                                        store.url(entry_key), store.url(entry["prefix"]), why)
            return None, [f"the cached result {why} (not trusted)"]
    slot_entry = _read_entry(store, join("cache", task, "slots", f"{slot}.json"))
    reasons = explain(slot_entry["parts"] if slot_entry else None, parts) or [
        "cached output is gone"]
    return None, reasons


def _read_entry(store: Store, key: str) -> dict[str, Any] | None:
    """A cache entry, or None when absent or unreadable: entries are written without waiting
    for the disk (:meth:`Store.put_index`), so a crash may leave one empty; the step is then
    recomputed and the entry rewritten, with a warning naming it."""
    try:
        entry = store.get_json(key)
    except MissingKeyError:
        return None
    except (ValueError, UnicodeDecodeError):
        entry = None
    if isinstance(entry, dict) and isinstance(entry.get("prefix"), str) \
            and isinstance(entry.get("parts"), dict):
        return entry
    get_logger("cache").warning("cache entry %s is damaged (a crash while it was written?): "
                                "taken as a miss, rewritten after the step", store.url(key))
    return None


def record(store: Store, task: str, slot: str, parts: dict[str, Any],
           manifest: Manifest) -> str | None:
    """Remember ``manifest`` under the key of ``parts``, only if the manifest records that
    very key (returns None, recording nothing, otherwise: the task ran under another
    identity than the flow computed, e.g. code edited during the run)."""
    key = cache_key(parts)
    own = manifest_key_of(manifest)
    if own != key:
        ident = manifest.identity or {}
        why = ("it records no key" if own is None else "it was computed under another key: "
               + "; ".join(explain(Identity.from_record(ident, manifest.config).parts, parts)))
        get_logger("cache").warning("not caching %s: %s", store.url(manifest.prefix), why)
        return None
    entry = {"key": key, "task": task, "slot": slot, "prefix": manifest.prefix, "parts": parts}
    store.put_index(join("cache", task, f"{key}.json"), entry)
    store.put_index(join("cache", task, "slots", f"{slot}.json"), entry)
    return key
