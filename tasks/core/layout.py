"""Where things live in the store: the one definition of its key layout.

    runs/<flow>/<run-id>/                 a run: one folder per step (train-<cell>/, ...)
    runs/<flow>/<run-id>/manifest.json    the flow's own manifest, written last: finished
    runs/<flow>/latest.json               {"run_id", "manifest"}: the newest finished run
    reports/<flow>/<run-id>/              a run's report
    reports/final/<run-id>/               the final report over every question
    reports/compare/<flow>/<a>..<b>/      the comparison of two runs
    reports/compare/<flow>/trend-<profile>/  a question's trend page
    models/                               champions and their history (tasks.core.promote)
    cache/                                step cache entries (tasks.core.cache)
    trash/                                results set aside, never deleted (tasks.core.runtime)

Readers and writers of runs and reports build their keys here; ``models/``, ``cache/`` and
``trash/`` belong to the modules named, which own them the same way.
"""

from __future__ import annotations

import re

from tasks.core.store import join

RUNS = "runs"
REPORTS = "reports"
LATEST = "latest.json"
FLOW_MANIFEST = "manifest.json"


def run_prefix(flow: str, run_id: str) -> str:
    """The folder of run ``run_id`` of ``flow``: its steps' prefixes are below it."""
    return join(RUNS, flow, run_id)


def flow_runs_prefix(flow: str) -> str:
    """The folder holding every run of ``flow`` (and its ``latest.json``)."""
    return join(RUNS, flow)


def step_prefix(flow: str, run_id: str, step: str) -> str:
    """The prefix of one step of a run (``train-<cell>``, ``eval-<cell>``, ``fetch``...)."""
    return join(RUNS, flow, run_id, step)


def flow_manifest_key(flow: str, run_id: str) -> str:
    """The flow's own manifest: it exists once the run has finished."""
    return join(RUNS, flow, run_id, FLOW_MANIFEST)


def latest_key(flow: str) -> str:
    """The pointer to the newest finished run of ``flow``."""
    return join(RUNS, flow, LATEST)


def run_ids(keys: list[str], flow: str) -> list[str]:
    """The run ids that ``keys`` (a listing under :func:`flow_runs_prefix`) hold anything
    of, sorted."""
    pattern = re.compile(rf"^{RUNS}/{re.escape(flow)}/([^/]+)/")
    return sorted({m[1] for k in keys if (m := pattern.match(k))})


def is_flow_manifest(key: str, flow: str | None = None) -> bool:
    """Whether ``key`` is a flow manifest (of ``flow`` when given), not a step's."""
    name = re.escape(flow) if flow else "[^/]+"
    return re.fullmatch(rf"{RUNS}/{name}/[^/]+/{FLOW_MANIFEST}", key) is not None


def report_prefix(flow: str, run_id: str) -> str:
    """Where a run's report is written."""
    return join(REPORTS, flow, run_id)


def final_report_prefix(run_id: str) -> str:
    return join(REPORTS, "final", run_id)


def compare_prefix(flow: str, a: str, b: str) -> str:
    """Where the comparison of runs ``a`` and ``b`` of ``flow`` is written."""
    return join(REPORTS, "compare", flow, f"{a}..{b}")


def trend_prefix(flow: str, profile: str) -> str:
    """Where the trend page of ``flow``'s ``profile`` runs is written."""
    return join(REPORTS, "compare", flow, f"trend-{profile}")
