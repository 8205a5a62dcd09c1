"""The flows by name: one per question (from the descriptors, ``tasks.registry``), plus the
final report. Imported by the CLI and the deployments alike; it imports neither (flow
modules are loaded on demand)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from tasks.core.config import did_you_mean
from tasks.core.descriptor import load
from tasks.core.errors import VisionflowsError
from tasks.questions import question_flows

REPORT_FLOW = "flows.final_report:report"


def flows() -> dict[str, str]:
    """Question flow name -> ``"module:attribute"`` of its Prefect flow, in report order."""
    return {name: f.flow for name, f in question_flows().items()}


def __getattr__(name: str) -> Any:
    if name == "FLOWS":
        return flows()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_flow(name: str):
    """The Prefect flow object of ``name`` (a question, or ``report``)."""
    table = flows()
    if name == "report":
        target = REPORT_FLOW
    elif name in table:
        target = table[name]
    else:
        raise VisionflowsError(f"unknown flow {name!r}{did_you_mean(name, [*table, 'report'])}"
                               f"; known flows: {', '.join(table)}, report")
    return load(target)


def new_run_id() -> str:
    """Sortable and unique: UTC time plus 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
