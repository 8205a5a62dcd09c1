"""The sequence every question's flow run shares, in one place.

A question's flow module says only which steps run, in what order, with what configs::

    run = QuestionRun.start(FLOW, profile, store, overrides, launcher, run_id, refresh)
    data = run.steps.run("fetch", "x.fetch", ...)          # the question's own steps
    report = run.report("x.report", {...})                 # plans the comparison first
    champion = run.promote(metric, value, model_prefix)    # questions with a champion
    run.publish(rows, report, summary)                     # Prefect artifacts
    return run.finish({...}, done)                         # manifest, comparison, verdict

:meth:`QuestionRun.start` is the preamble (the flow run remembered for signals, the config
resolved from the profile and overrides, the store opened, the run id, the step submitter
with the question's step kinds). :meth:`report` plans the comparison with the champion (or
the previous run) before the report is written, so the report links it; :meth:`finish` adds
what every result holds (run id, profile, store, config, task runner) and ends with
:func:`flows.champion.finish_run`. Report prose and metric names live in the question's
tasks (``tasks/q<N>/plan.py``); the title comes from the question's descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger

from flows.champion import finish_run, plan_comparison
from flows.common import champion_question, new_run_id, publish, remember_flow_run
from flows.fanout import Steps
from tasks.core.config import Config
from tasks.core.layout import report_prefix, run_prefix
from tasks.core.store import Store, join, open_store
from tasks.plans import resolve_config, step_kinds
from tasks.questions import question_flow


@dataclass
class QuestionRun:
    """One run of a question's flow: its config, store, run id and step submitter."""

    flow: str
    profile: str
    cfg: Any
    st: Store
    run_id: str
    launcher: str
    steps: Steps
    title: str
    planned: dict[str, Any] | None = None
    report_keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, flow: str, profile: str, store: str | None,
              overrides: dict[str, Any] | None, launcher: str, run_id: str | None,
              refresh: bool | None = None, describe=None) -> QuestionRun:
        """The preamble. ``describe(cfg)``: what this run does, for its first log line."""
        remember_flow_run()
        cfg: Config = resolve_config(flow, profile, overrides)
        st = open_store(store)
        run_id = run_id or new_run_id()
        steps = Steps(cfg, st.uri, launcher, step_kinds(flow), refresh=refresh)
        run = cls(flow, profile, cfg, st, run_id, launcher, steps, question_flow(flow).title)
        what = f", {describe(cfg)}" if describe else ""
        get_run_logger().info("%s run %s (profile %s%s) -> %s", flow, run_id, profile, what,
                              st.url(run.base))
        return run

    @property
    def base(self) -> str:
        """``runs/<flow>/<run-id>``: where the run's steps write."""
        return run_prefix(self.flow, self.run_id)

    def at(self, name: str) -> str:
        """A step's output prefix under the run."""
        return join(self.base, name)

    def report(self, task: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Plan the comparison, then run the question's report task with ``fields`` and
        the fields every report takes (out, profile, run id, the planned comparison)."""
        self.planned = plan_comparison(self.flow, self.profile, self.run_id, self.st)
        report = self.steps.run("report", task, {
            "out": report_prefix(self.flow, self.run_id), "profile": self.profile,
            "run_id": self.run_id, "comparison": self.planned, **fields})
        self.report_keys = report["outputs"]
        return report

    def promote(self, metric: str, value: float, model: str, best_cell: str
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Offer the run's best model as this profile's champion (``model.promote``);
        returns the step's manifest and the result's ``champion`` entry."""
        promotion = self.steps.run("promote", "model.promote", {
            "question": champion_question(self.flow, self.profile), "run_id": self.run_id,
            "metric": metric, "value": value, "model": model, "profile": self.profile,
            "out": self.at("promote")})
        return promotion, {"best_cell": best_cell, "metric": metric, "value": value,
                           **promotion["metrics"]}

    def publish(self, rows: list[dict], summary_md: str = "") -> None:
        """The run's Prefect artifacts: its metrics table and the links to its report."""
        publish(self.flow, self.run_id, rows, self.report_keys, self.st, summary_md)

    def finish(self, result: dict[str, Any], done: list[dict[str, Any] | None]
               ) -> dict[str, Any]:
        """The flow result (what every result holds, then ``result``), written as the flow
        manifest, compared and judged (:func:`flows.champion.finish_run`)."""
        full = {"run_id": self.run_id, "profile": self.profile, "store": self.st.uri,
                "config": self.cfg.model_dump(mode="json"), "report": self.report_keys,
                **result, "task_runner": self.steps.describe()}
        return finish_run(self.flow, self.cfg, self.run_id, full, done, self.st,
                          self.launcher, self.planned)
