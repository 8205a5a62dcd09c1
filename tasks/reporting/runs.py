"""Run references: which finished run a name means. A run id, ``latest`` / ``latest~N`` (the
newest finished runs, of a profile), or ``champion`` (the run behind a question's champion);
resolved against the store's layout (:mod:`tasks.core.layout`): a run is finished when its
flow manifest exists; a run with step outputs but no flow manifest is still running or was
interrupted. Errors name the problem and the fix (:class:`RunRefError`, exit code 2)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasks.core.errors import ConfigError, MissingKeyError
from tasks.core.layout import flow_manifest_key, flow_runs_prefix, is_flow_manifest, run_prefix
from tasks.core.promote import champion_key, champion_question, read_champion
from tasks.core.store import Store

REF = re.compile(r"^(?P<kind>champion|latest)(?:~(?P<n>\d+))?$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunRefError(ConfigError):
    """A run reference that cannot be compared: unknown, unfinished, or of another question."""


@dataclass
class RunInfo:
    """A resolved run: its flow, id, the reference it was named by, its flow manifest."""

    flow: str
    run_id: str
    ref: str
    manifest: dict[str, Any]

    @property
    def profile(self) -> str:
        return str(self.manifest.get("profile", "?"))


def finished_runs(store: Store, flow: str, profile: str | None = None) -> list[dict[str, Any]]:
    """Flow manifests of every finished run of ``flow`` (of ``profile`` when given), oldest
    first by finish time."""
    out = []
    for key in store.list(flow_runs_prefix(flow)):
        if is_flow_manifest(key, flow):
            try:
                m = store.get_json(key)
            except MissingKeyError:  # deleted meanwhile
                continue
            if profile is None or m.get("profile") == profile:
                out.append(m)
    return sorted(out, key=lambda m: (str(m.get("finished_at", "")), str(m.get("run_id"))))


def _run_state(store: Store, flow: str, run_id: str) -> tuple[str, int]:
    """``("finished" | "in progress" | "absent", number of stored files)``."""
    if store.exists(flow_manifest_key(flow, run_id)):
        return "finished", 0
    files = store.list(run_prefix(flow, run_id))
    return ("in progress", len(files)) if files else ("absent", 0)


def _recent(store: Store, flow: str, n: int = 5) -> str:
    runs = finished_runs(store, flow)
    if not runs:
        return f"there is no finished {flow} run in {store.url(flow_runs_prefix(flow))}/"
    shown = ", ".join(str(m["run_id"]) for m in reversed(runs[-n:]))
    return f"recent {flow} runs (newest first): {shown}"


def _locate(store: Store, run_id: str, flows: Sequence[str]) -> dict[str, str]:
    """flow -> state for every flow that holds anything of ``run_id``."""
    out = {}
    for f in flows:
        state, _ = _run_state(store, f, run_id)
        if state != "absent":
            out[f] = state
    return out


def _check_id(ref: str) -> None:
    if not RUN_ID.match(ref):
        raise RunRefError(f"{ref!r} is not a run reference: use a run id (e.g. "
                          "20260101T010000Z-a1b2c3), champion, latest or latest~N (N runs "
                          "before the latest)")


def _finished(store: Store, flow: str, run_id: str, ref: str) -> RunInfo:
    state, n_files = _run_state(store, flow, run_id)
    if state == "in progress":
        raise RunRefError(
            f"run {run_id} of {flow} has not finished: {n_files} file(s) are stored under "
            f"{store.url(run_prefix(flow, run_id))}/ but there is no flow manifest "
            f"({flow_manifest_key(flow, run_id)}); it is still running or was interrupted. "
            f"Compare it once it has finished (an interrupted run finishes with `visionflows "
            f"run {flow} --run-id {run_id}`)")
    if state == "absent":
        raise RunRefError(f"no run {run_id} of {flow} in {store.uri}; {_recent(store, flow)}")
    return RunInfo(flow, run_id, ref, store.get_json(flow_manifest_key(flow, run_id)))


def _latest(store: Store, flow: str, n: int, profile: str | None, ref: str) -> RunInfo:
    runs = finished_runs(store, flow, profile)
    of = f" of the {profile} profile" if profile else ""
    if not runs:
        raise RunRefError(f"{ref}: there is no finished {flow} run{of} in {store.uri}; run "
                          f"`visionflows run {flow}` first")
    if n >= len(runs):
        raise RunRefError(f"{ref}: only {len(runs)} finished {flow} run(s){of} in "
                          f"{store.uri}, so the oldest is latest~{len(runs) - 1}")
    m = runs[-1 - n]
    return RunInfo(flow, str(m["run_id"]), ref, m)


def _champion(store: Store, flow: str, profile: str, ref: str) -> RunInfo:
    key = champion_question(flow, profile)
    champ, _ = read_champion(store, key)
    if champ is None:
        raise RunRefError(f"champion: {flow} has no champion for the {profile} profile yet "
                          f"({store.url(champion_key(key))} does not exist); a finished "
                          f"`visionflows run {flow} --profile {profile}` sets it")
    run_id = str(champ["run_id"])
    state, _ = _run_state(store, flow, run_id)
    if state != "finished":
        raise RunRefError(f"champion: the champion of {key} is run {run_id}, but that run has "
                          f"no flow manifest ({state}) under {store.url(flow_runs_prefix(flow))}/; "
                          "compare by run id instead")
    return _finished(store, flow, run_id, ref)


def resolve_refs(store: Store, a_ref: str, b_ref: str, *, flows: Sequence[str],
                 question: str | None = None, profile: str | None = None
                 ) -> tuple[RunInfo, RunInfo]:
    """Resolve two run references of one question.

    ``question`` may be left out when a reference is a run id (its flow is looked up).
    ``latest~N`` counts finished runs of ``profile`` (every profile when None); ``champion``
    is the champion of ``profile``, else of the other run's profile, else of ``full``.
    Errors (:class:`RunRefError`, exit code 2) name the problem and the fix.
    """
    if question is not None and question not in flows:
        raise RunRefError(f"unknown question {question!r}; use one of: {', '.join(flows)}")
    refs = {"A": a_ref.strip(), "B": b_ref.strip()}
    found: dict[str, str] = {}
    for side, ref in refs.items():
        if REF.match(ref):
            continue
        _check_id(ref)
        where = _locate(store, ref, flows)
        if not where:
            hint = _recent(store, question) if question else (
                f"look under {store.url('runs')}/<question>/")
            raise RunRefError(f"{side}: no run {ref!r} in {store.uri} (not a run id there, nor "
                              f"champion, latest or latest~N); {hint}")
        if question is not None and question not in where:
            other = next(iter(where))
            raise RunRefError(f"{side}: run {ref} is a {other} run, not a {question} run: runs "
                              "of different questions cannot be compared; compare it with "
                              f"another {other} run (--question {other})")
        found[side] = question or next(iter(where))
    flow = question
    if flow is None:
        kinds = set(found.values())
        if len(kinds) > 1:
            raise RunRefError(f"run {refs['A']} is a {found['A']} run and run {refs['B']} a "
                              f"{found['B']} run: runs of different questions cannot be "
                              "compared")
        if not kinds:
            raise RunRefError(f"{refs['A']} and {refs['B']} need a question: add --question "
                              f"Q (one of: {', '.join(flows)})")
        flow = kinds.pop()
    runs: dict[str, RunInfo] = {}
    for side, ref in refs.items():  # run ids and latest~N first: champion may need a profile
        if (m := REF.match(ref)) is None:
            runs[side] = _finished(store, flow, ref, ref)
        elif m["kind"] == "latest":
            runs[side] = _latest(store, flow, int(m["n"] or 0), profile, ref)
    for side, ref in refs.items():
        if side not in runs:
            other = runs.get("B" if side == "A" else "A")
            runs[side] = _champion(store, flow, profile or (other.profile if other else "full"),
                                   ref)
    return runs["A"], runs["B"]
