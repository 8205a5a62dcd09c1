"""Every question's comparer by flow name (from the descriptors), and the tasks
``report.compare``,
``report.trend`` and ``report.final`` (no Prefect; the last two get each question's cells
from its comparer, for the check against a recorded interval). It sits on top of the
questions' ``compare`` modules (``tasks/q<N>/comparer.py``: what a cell is, which images go
side by side, per-class numbers) and the shared machinery (``tasks/reporting/compare.py``,
``trend.py``, ``final.py``), which never imports a question.
"""

from __future__ import annotations

from typing import Any

from tasks.core.descriptor import load
from tasks.core.runtime import Manifest
from tasks.core.store import Store
from tasks.questions import question_flow, question_flows
from tasks.reporting import final as final_report
from tasks.reporting import trend as trend_report
from tasks.reporting.compare import CompareConfig, Comparer, render
from tasks.reporting.final import FinalReportConfig
from tasks.reporting.runs import RunInfo, resolve_refs
from tasks.reporting.trend import CellsOf, TrendConfig


def comparers() -> dict[str, str]:
    """Flow name -> ``"module:attribute"`` of its Comparer (imported when used)."""
    return {name: f.comparer for name, f in question_flows().items()}


def __getattr__(name: str) -> Any:
    if name == "COMPARERS":
        return comparers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def comparer(question: str) -> Comparer:
    return load(question_flow(question).comparer)


def resolve(store: Store, a: str, b: str, question: str | None = None,
            profile: str | None = None) -> tuple[RunInfo, RunInfo]:
    """Resolve two run references (run ids, champion, latest, latest~N) of one question."""
    return resolve_refs(store, a, b, flows=list(question_flows()), question=question,
                        profile=profile)


def compare(cfg: CompareConfig, store: Store) -> Manifest:
    """``report.compare``: the comparison of two finished runs of one question."""
    return render(cfg, store, comparer(cfg.question), flows=list(question_flows()))


def cells_of(question: str) -> CellsOf | None:
    """The cells of a run of ``question`` (its comparer's), None for an unknown question."""
    return comparer(question).cells if question in question_flows() else None


def trend(cfg: TrendConfig, store: Store) -> Manifest:
    """``report.trend``: a question's last runs, each against its champion's interval."""
    return trend_report.render(cfg, store, cells_of(cfg.question))


def final(cfg: FinalReportConfig, store: Store) -> Manifest:
    """``report.final``: every question's latest run beside the reference, with trends."""
    return final_report.render(cfg, store, cells_of)
