"""The task registry: every task name, the function that runs it, and ``run_task``.

Names map to ``"module:function"`` strings, imported only when a task runs, so this module
imports no question's code; the function's ``cfg`` parameter is annotated with its config
class.
"""

from __future__ import annotations

import importlib

from tasks.core.config import Config, did_you_mean, validate
from tasks.core.errors import ConfigError
from tasks.core.runtime import Manifest
from tasks.core.store import Store, open_store

# name -> "module:function"; the function's first parameter is annotated with its Config class.
TASKS: dict[str, str] = {
    "fashion-mnist.fetch": "tasks.q1.data:fetch",
    "classifier.train": "tasks.q1.train:train",
    "classifier.evaluate": "tasks.q1.train:evaluate",
    "classifier.report": "tasks.q1.report:render",
    "model.promote": "tasks.core.promote:promote",
    "report.final": "tasks.comparers:final",
    "report.compare": "tasks.comparers:compare",
    "report.trend": "tasks.comparers:trend",
    "images.ingest": "tasks.q3.segment:ingest",
    "segment.images": "tasks.q3.segment:segment",
    "segment.report": "tasks.q3.report:render",
    "stl10.fetch": "tasks.q2.data:fetch",
    "transfer.weights": "tasks.q2.transfer:weights",
    "transfer.explore": "tasks.q2.transfer:explore",
    "transfer.train": "tasks.q2.transfer:train",
    "transfer.finetune": "tasks.q2.transfer:finetune",
    "transfer.report": "tasks.q2.report:render",
    "yolo-export.fetch": "tasks.q4.data:fetch",
    "yolo.train": "tasks.q4.yolo:train",
    "yolo.evaluate": "tasks.q4.yolo:evaluate",
    "yolo.report": "tasks.q4.report:render",
    # diagnostics for the launchers' time and memory limits (docs/reliability.md)
    "selftest.sleep": "tasks.selftest:sleep",
    "selftest.alloc": "tasks.selftest:alloc",
    "selftest.fail": "tasks.selftest:fail",
}



def task_module(name: str) -> str:
    """The module that holds task ``name``'s function (not imported)."""
    try:
        return TASKS[name].split(":")[0]
    except KeyError:
        raise ConfigError(
            f"unknown task {name!r}{did_you_mean(name, TASKS)}; known tasks: "
            f"{', '.join(sorted(TASKS))}") from None


def resolve(name: str):
    """The task function and its config class for a registered task name."""
    try:
        target = TASKS[name]
    except KeyError:
        raise ConfigError(
            f"unknown task {name!r}{did_you_mean(name, TASKS)}; known tasks: "
            f"{', '.join(sorted(TASKS))}") from None
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    cfg_cls = func.__annotations__.get("cfg")
    if isinstance(cfg_cls, str):  # postponed annotations
        cfg_cls = getattr(importlib.import_module(module_name), cfg_cls)
    return func, cfg_cls


def run_task(name: str, cfg: dict | Config, store: Store | str | None = None) -> Manifest:
    """Validate ``cfg`` for task ``name`` and run it against ``store``; return its manifest.

    The config is validated before anything is read or written.
    """
    func, cfg_cls = resolve(name)
    cfg_obj = validate(cfg_cls, cfg, what=f"task {name!r}")
    st = store if isinstance(store, Store) else open_store(store)
    return func(cfg_obj, st)
