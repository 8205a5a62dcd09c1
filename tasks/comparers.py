"""Every question's comparer by flow name, and the tasks ``report.compare``,
``report.trend`` and ``report.final`` (no Prefect; the last two get each question's cells
from its comparer, for the check against a recorded interval). It sits on top of the
questions' ``compare`` modules (``tasks/q<N>/compare.py``: what a cell is, which images go
side by side, per-class numbers) and the shared machinery (``tasks/reporting/compare.py``,
``trend.py``, ``final.py``), which never imports a question.
"""

from __future__ import annotations

import importlib

from tasks.core.errors import ConfigError
from tasks.core.runtime import Manifest
from tasks.core.store import Store
from tasks.reporting import final as final_report
from tasks.reporting import trend as trend_report
from tasks.reporting.compare import CompareConfig, Comparer, render
from tasks.reporting.final import FinalReportConfig
from tasks.reporting.runs import RunInfo, resolve_refs
from tasks.reporting.trend import CellsOf, TrendConfig

# flow name -> "module:attribute" of its Comparer, imported when used
COMPARERS: dict[str, str] = {
    "q1-mlp": "tasks.q1.compare:MLP",
    "q1-cnn": "tasks.q1.compare:CNN",
    "q2-transfer": "tasks.q2.compare:COMPARER",
    "q3-segmentation": "tasks.q3.compare:COMPARER",
    "q4-yolo": "tasks.q4.compare:COMPARER",
}


def comparer(question: str) -> Comparer:
    try:
        module, attr = COMPARERS[question].split(":")
    except KeyError:
        raise ConfigError(f"unknown question {question!r}; use one of: "
                          f"{', '.join(COMPARERS)}") from None
    return getattr(importlib.import_module(module), attr)


def resolve(store: Store, a: str, b: str, question: str | None = None,
            profile: str | None = None) -> tuple[RunInfo, RunInfo]:
    """Resolve two run references (run ids, champion, latest, latest~N) of one question."""
    return resolve_refs(store, a, b, flows=list(COMPARERS), question=question, profile=profile)


def compare(cfg: CompareConfig, store: Store) -> Manifest:
    """``report.compare``: the comparison of two finished runs of one question."""
    return render(cfg, store, comparer(cfg.question), flows=list(COMPARERS))


def cells_of(question: str) -> CellsOf | None:
    """The cells of a run of ``question`` (its comparer's), None for an unknown question."""
    return comparer(question).cells if question in COMPARERS else None


def trend(cfg: TrendConfig, store: Store) -> Manifest:
    """``report.trend``: a question's last runs, each against its champion's interval."""
    return trend_report.render(cfg, store, cells_of(cfg.question))


def final(cfg: FinalReportConfig, store: Store) -> Manifest:
    """``report.final``: every question's latest run beside the reference, with trends."""
    return final_report.render(cfg, store, cells_of)
