"""The flows by name: one per question, plus the final report. Imported by the CLI and the
deployments alike; it imports neither (flow modules are loaded on demand)."""

from __future__ import annotations

import importlib
import secrets
from datetime import UTC, datetime

from tasks.core.config import did_you_mean
from tasks.core.errors import VisionflowsError

FLOWS: dict[str, str] = {
    "q1-mlp": "flows.q1_mlp:q1_mlp",
    "q1-cnn": "flows.q1_cnn:q1_cnn",
    "q2-transfer": "flows.q2_transfer:q2_transfer",
    "q3-segmentation": "flows.q3_segmentation:q3_segmentation",
    "q4-yolo": "flows.q4_yolo:q4_yolo",
}
REPORT_FLOW = "flows.report:report"


def load_flow(name: str):
    """The Prefect flow object of ``name`` (a question, or ``report``)."""
    if name == "report":
        target = REPORT_FLOW
    elif name in FLOWS:
        target = FLOWS[name]
    else:
        raise VisionflowsError(f"unknown flow {name!r}{did_you_mean(name, [*FLOWS, 'report'])}"
                               f"; known flows: {', '.join(FLOWS)}, report")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def new_run_id() -> str:
    """Sortable and unique: UTC time plus 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
