"""A question's descriptor: everything the registries need to know about one question.

Each question package holds one :class:`Question` (``tasks/q<N>/question.py``:
``QUESTION``); the task registry, the flow configs and profiles, the comparers, the mirror
catalog, the final report's sections, the flow registry, the deployments and the CLI's
choices are all built from the descriptors (``tasks.questions``). A question
outside visionflows is a package of its own that names its descriptor in the
``visionflows.questions`` entry-point group (docs/questions.md).

Code is named by ``"module:attribute"`` strings and imported only when used, so reading the
descriptors imports no question's training code (a task step imports its own only).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


def load(target: str) -> Any:
    """The object a ``"module:attribute"`` string names (``attribute`` may be dotted)."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ValueError(f"{target!r} is not of the form 'module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Nightly:
    """A flow's nightly deployment: its cron (UTC), description and ``overrides``."""

    cron: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QuestionFlow:
    """One flow of a question (a question may have several: Q1 has an MLP and a CNN flow).

    Attributes:
        name: the flow name, the question's name everywhere (CLI, store keys, deployments).
        title: one line, shown by the final report, the flow's result and ``--help``.
        flow: the Prefect flow (``"module:attribute"``).
        config: the flow config class (``"module:attribute"``).
        profiles: ``{profile: overrides}`` (``"module:attribute"``), ``smoke`` and ``full``.
        comparer: the :class:`tasks.reporting.compare.Comparer` instance.
        resources: the :class:`tasks.core.resources.ResourceTable` of its steps.
        step_kinds: ``{task name: step kind}`` (the resource table's rows), by name.
        nightly: its nightly deployment.
        mirror: a function returning the inputs its ``full`` profile needs
            (:class:`tasks.inputs.mirror_index.Entry` list), or None; with
            ``mirror_export`` it takes the user's export URL (``mirror --export-url``).
        reference: the original report's numbers (``"module:attribute"``), or None.
        keeps_champion: whether runs are promoted and compared with a champion (else with
            the previous run of the same profile).
    """

    name: str
    title: str
    flow: str
    config: str
    profiles: str
    comparer: str
    resources: str
    step_kinds: str
    nightly: Nightly
    mirror: str | None = None
    mirror_export: bool = False
    reference: str | None = None
    keeps_champion: bool = True

    def config_class(self) -> type:
        return load(self.config)

    def profile_table(self) -> dict[str, dict[str, Any]]:
        """``{profile: overrides}`` of this flow (the ``profiles`` table may hold several
        flows' profiles keyed by flow name)."""
        table = load(self.profiles)
        return table.get(self.name, table)


@dataclass(frozen=True)
class Question:
    """One question: its package, tasks and flows.

    Attributes:
        name: the package's short name (``q1``).
        tasks: ``{task name: "module:function"}``; the function's ``cfg`` parameter is
            annotated with its config class.
        flows: its flows, in the order reports list them.
        cached_tasks: the tasks whose results are reused across runs by identity
            (:mod:`tasks.core.cache`).
    """

    name: str
    tasks: dict[str, str]
    flows: tuple[QuestionFlow, ...]
    cached_tasks: frozenset[str] = frozenset()
