"""Every question's descriptor (:class:`tasks.core.descriptor.Question`), found in two places.

The four built into visionflows (``BUILTIN``) and any installed distribution's entry point
in the ``visionflows.questions`` group, whose value names a ``Question``
(``"package.module:QUESTION"``): a course or a user adds a question as a package of its
own, with no edit here (docs/questions.md). visionflows' own entry points name the
built-ins: each is read once, whichever way it is found. Every registry (tasks, flow
configs and profiles, comparers, the mirror catalog, the final report, the flows, the
deployments, the CLI's choices) is built from these.
"""

from __future__ import annotations

import functools
from importlib import metadata

from tasks.core.config import did_you_mean
from tasks.core.descriptor import Question, QuestionFlow, load
from tasks.core.errors import ConfigError

ENTRY_POINT_GROUP = "visionflows.questions"
# The questions visionflows ships, in the order the reports list them.
BUILTIN = ("tasks.q1.question:QUESTION", "tasks.q2.question:QUESTION",
           "tasks.q3.question:QUESTION", "tasks.q4.question:QUESTION")


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


@functools.cache
def questions() -> tuple[Question, ...]:
    """Every question: the built-ins, then the installed entry points' (by name), checked
    for clashes (a flow or task name defined twice is an error naming both sources)."""
    found: list[tuple[str, Question]] = [(t, load(t)) for t in BUILTIN]
    for ep in sorted(_entry_points(), key=lambda e: e.name):
        if ep.value.replace(" ", "") in BUILTIN:
            continue
        where = f"entry point {ep.name!r} = {ep.value!r} ({ENTRY_POINT_GROUP})"
        try:
            q = ep.load()
        except Exception as exc:
            raise ConfigError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}; fix "
                              "or uninstall the package that declares it") from exc
        if not isinstance(q, Question):
            raise ConfigError(f"{where} names a {type(q).__name__}, not a "
                              "tasks.core.descriptor.Question")
        found.append((where, q))
    owner = {"flow report": "visionflows' final report"}
    for where, q in found:
        names = [f"question {q.name}", *(f"flow {f.name}" for f in q.flows),
                 *(f"task {t}" for t in q.tasks)]
        for name in names:
            if name in owner:
                raise ConfigError(f"{name} is defined twice: by {owner[name]} and by "
                                  f"{where}; rename one")
            owner[name] = where
    return tuple(q for _, q in found)


def question_flows() -> dict[str, QuestionFlow]:
    """Every question's flows by flow name, in report order."""
    return {f.name: f for q in questions() for f in q.flows}


def question_flow(name: str) -> QuestionFlow:
    """The descriptor of flow ``name``; a clear error for an unknown one."""
    flows = question_flows()
    if name not in flows:
        raise ConfigError(f"unknown question {name!r}{did_you_mean(name, flows)}; use one "
                          f"of: {', '.join(flows)}")
    return flows[name]


def cached_tasks() -> frozenset[str]:
    """The tasks whose results are reused across runs by identity (tasks.core.cache)."""
    return frozenset(t for q in questions() for t in q.cached_tasks)


