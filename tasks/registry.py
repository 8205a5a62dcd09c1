"""The task registry: every task name, the function that runs it, and ``run_task``.

Task names come from the questions' descriptors (:mod:`tasks.questions`) and the shared
tasks below. They map to ``"module:function"`` strings, imported only when a task runs, so
this module imports no question's code; the function's ``cfg`` parameter is annotated with
its config class.
"""

from __future__ import annotations

import importlib
from typing import Any

from tasks.core.config import Config, did_you_mean, validate
from tasks.core.errors import ConfigError
from tasks.core.runtime import Manifest
from tasks.core.store import Store, open_store
from tasks.questions import questions

# Tasks that belong to no question: promotion, the comparisons and the final report, and
# diagnostics for the launchers' time and memory limits (docs/reliability.md).
SHARED_TASKS: dict[str, str] = {
    "model.promote": "tasks.core.promote:promote",
    "report.final": "tasks.comparers:final",
    "report.compare": "tasks.comparers:compare",
    "report.trend": "tasks.comparers:trend",
    "selftest.sleep": "tasks.selftest:sleep",
    "selftest.alloc": "tasks.selftest:alloc",
    "selftest.fail": "tasks.selftest:fail",
}


def all_tasks() -> dict[str, str]:
    """``task name -> "module:function"`` of every question's tasks and the shared ones."""
    out: dict[str, str] = dict(SHARED_TASKS)
    for q in questions():
        taken = sorted(set(q.tasks) & set(SHARED_TASKS))
        if taken:
            raise ConfigError(f"question {q.name} defines task(s) {', '.join(taken)}, which "
                              "visionflows itself defines; rename them")
        out.update(q.tasks)
    return out


def __getattr__(name: str) -> Any:
    if name == "TASKS":  # the table, as a module attribute (read when first asked for)
        return all_tasks()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_module(name: str) -> str:
    """The module that holds task ``name``'s function (not imported)."""
    return _target(name).split(":")[0]


def _target(name: str) -> str:
    table = all_tasks()
    try:
        return table[name]
    except KeyError:
        raise ConfigError(
            f"unknown task {name!r}{did_you_mean(name, table)}; known tasks: "
            f"{', '.join(sorted(table))}") from None


def resolve(name: str):
    """The task function and its config class for a registered task name."""
    target = _target(name)
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
