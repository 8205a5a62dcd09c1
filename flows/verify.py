"""``visionflows verify FLOW [RUN_ID|latest]``: does a stored result still follow from its
inputs and the code that runs now?

Each step of a finished run (every result its flow manifest names, or those whose step name
matches ``--steps``) is computed again from its recorded config and its recorded inputs,
with the cache off, into a scratch prefix (``verify/<flow>/<run id>/<attempt>/``; datasets,
whose place is their version, into a scratch store below the store), and compared with what
is stored:

- every metric and every history row (numbers exactly, or within ``--tolerance``; values
  that measure the machine rather than the model -- times, durations, thread counts, the
  host -- are listed as not compared);
- the sha256 of every output, except outputs whose bytes embed such measurements (their
  metrics are compared instead; they are named in the line).

Per step it prints ``identical``, ``within tolerance (max diff X)`` or ``DIFFERENT (...)``,
and when the step's identity changed since it ran, what changed (the code, a version, the
device). The scratch prefix is removed on every exit path. Exit 0 only when every step
agrees. Steps with effects beyond their own prefix (promotion, comparisons with the run
history) are not recomputed.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tasks.core.errors import ConfigError, MissingKeyError
from tasks.core.layout import flow_manifest_key, flow_runs_prefix, is_flow_manifest, latest_key
from tasks.core.log import get_logger
from tasks.core.runtime import Manifest, find_manifest, identity_changes, identity_of
from tasks.core.store import Store, join, open_store

# Tasks whose effect is not confined to their prefix, or that read the run history.
NOT_RECOMPUTED = {"model.promote": "promotes a champion (an effect outside its prefix)",
                  "report.compare": "compares with the champion and run history of the store",
                  "report.trend": "reads the run history of the store"}
# Metric and history keys that measure the machine, not the model.
MEASUREMENT = re.compile(r"(^|[/_.])(time|times|time_s|seconds|duration|duration_s|threads|"
                         r"throughput|per_s|hostname|pid|started|started_at|finished|"
                         r"finished_at|date|speed|speed_ms)($|[/_.])|_s$|/s$|_ms$")
# Binary outputs whose bytes hold such measurements (a checkpoint's history, ultralytics'
# results table and weights, which carry a date; its args.yaml, which names its scratch
# folder): compared through the metrics. JSON outputs are compared by content, measurements
# set aside, with the recomputation's own prefix read as the stored one's.
VOLATILE_OUTPUTS = re.compile(r"(^|/)(last|best|results|train_state|args)(\.(csv|pt|yaml))?$")
SCRATCH = "verify"


@dataclass
class StepCheck:
    """The verdict of one recomputed step."""

    name: str
    task: str
    verdict: str = "identical"  # identical | within tolerance | DIFFERENT | skipped | failed
    max_diff: float = 0.0
    differences: list[str] = field(default_factory=list)
    outputs_differ: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    identity_changes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    def line(self) -> str:
        head = f"{self.name:<40} {self.task:<20} "
        if self.verdict in ("skipped", "failed"):
            return head + f"{self.verdict}: {self.note}"
        text = self.verdict
        if self.verdict == "within tolerance":
            text += f" (max diff {self.max_diff:.3g})"
        if self.verdict == "DIFFERENT":
            shown = self.differences[:6] + (
                [f"... {len(self.differences) - 6} more"] if len(self.differences) > 6 else [])
            text += " (" + "; ".join(shown) + ")"
        if self.outputs_differ and self.verdict != "DIFFERENT":
            text += (f" ({len(self.outputs_differ)} outputs differ in timings only: "
                     f"{', '.join(self.outputs_differ[:4])})")
        if self.identity_changes:
            text += " -- since it ran: " + "; ".join(self.identity_changes[:4])
        return head + text + f" [{self.seconds:.1f}s]"


def resolve_run(store: Store, flow: str, ref: str) -> str:
    """A run id of ``flow`` from ``ref`` (a run id or ``latest``); a clear error otherwise."""
    from tasks.core.config import did_you_mean

    if ref == "latest":
        try:
            return str(store.get_json(latest_key(flow))["run_id"])
        except MissingKeyError:
            raise ConfigError(f"no finished {flow} run in {store.uri}: nothing to verify "
                              f"(run `visionflows run {flow}` first)") from None
    if store.exists(flow_manifest_key(flow, ref)):
        return ref
    runs = sorted(k.split("/")[2] for k in store.list(flow_runs_prefix(flow))
                  if is_flow_manifest(k, flow))
    raise ConfigError(f"no finished {flow} run {ref!r} in {store.uri}"
                      f"{did_you_mean(ref, runs)}; finished runs: "
                      f"{', '.join(runs[-5:]) or 'none'} (or use latest)")


def run_steps(store: Store, flow_manifest: dict[str, Any]) -> dict[str, Manifest]:
    """Every step result a flow manifest names (by prefix), keyed by its step name."""
    found: dict[str, Manifest] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif (isinstance(value, str) and value.startswith(("runs/", "data/", "reports/"))
              and not value.endswith((".json", ".html", ".md", ".png"))):
            m = find_manifest(store, value)
            if m is not None:
                found.setdefault(value.rstrip("/").rsplit("/", 1)[-1] if value.startswith(
                    "runs/") else value, m)

    walk({k: v for k, v in flow_manifest.items() if k not in ("code", "config")})
    return dict(sorted(found.items()))


def _numbers(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _numbers(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _numbers(f"{prefix}[{i}]", v, out)
    else:
        out[prefix] = value


def compare_values(stored: dict[str, Any], now: dict[str, Any], tolerance: float,
                   check: StepCheck, what: str, rename: tuple[str, str] | None = None) -> None:
    """Compare two nested dicts of metrics (or history rows) into ``check``; ``rename``
    ``(new, old)``: the recomputation's prefix, read as the stored one's in strings."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _numbers("", stored, a)
    _numbers("", now, b)
    if rename:
        b = {k: v.replace(*rename) if isinstance(v, str) else v for k, v in b.items()}
    for key in sorted(set(a) | set(b)):
        if MEASUREMENT.search(key.split("[")[-1].split("]")[-1] or key):
            label = f"{what}:{key}"
            if label not in check.not_compared:
                check.not_compared.append(label)
            continue
        x, y = a.get(key, "(absent)"), b.get(key, "(absent)")
        if isinstance(x, bool) or isinstance(y, bool) or not (
                isinstance(x, int | float) and isinstance(y, int | float)):
            if x != y:
                check.differences.append(f"{what} {key}: {x!r} -> {y!r}")
            continue
        if math.isnan(x) and math.isnan(y):
            continue
        diff = abs(float(x) - float(y))
        if diff == 0:
            continue
        check.max_diff = max(check.max_diff, diff)
        if diff > tolerance:
            check.differences.append(f"{what} {key}: {x:.6g} -> {y:.6g} ({y - x:+.3g})")
        elif check.verdict == "identical":
            check.verdict = "within tolerance"


def compare_manifests(stored: Manifest, now: Manifest, tolerance: float,
                      check: StepCheck, stores: tuple[Store, Store] | None = None,
                      rename: tuple[str, str] | None = None) -> StepCheck:
    """Fill ``check`` with how ``now`` (recomputed) differs from ``stored``; ``stores``
    (where each lives) lets JSON outputs whose bytes differ be compared by content."""
    compare_values(stored.metrics, now.metrics, tolerance, check, "metric")
    old_hist = (stored.model_extra or {}).get("history")
    new_hist = (now.model_extra or {}).get("history")
    if old_hist is not None or new_hist is not None:
        if len(old_hist or []) != len(new_hist or []):
            check.differences.append(f"history: {len(old_hist or [])} rows -> "
                                     f"{len(new_hist or [])}")
        else:
            compare_values({"rows": old_hist}, {"rows": new_hist}, tolerance, check, "history")
    for name in sorted(set(stored.digests) | set(now.digests)):
        a, b = stored.digests.get(name), now.digests.get(name)
        if a is None or b is None:
            check.differences.append(f"output {name}: "
                                     f"{'absent' if a is None else 'present'} -> "
                                     f"{'absent' if b is None else 'present'}")
        elif a.get("sha256") != b.get("sha256"):
            key = stored.outputs.get(name, "")
            if stores is not None and key.endswith(".json"):
                before = len(check.differences)
                compare_values({"v": stores[0].get_json(key)},
                               {"v": stores[1].get_json(now.outputs[name])}, tolerance, check,
                               f"output {name}", rename)
                if len(check.differences) == before:
                    check.outputs_differ.append(name)  # in measurements only
            elif VOLATILE_OUTPUTS.search(name):
                check.outputs_differ.append(name)
            else:
                check.differences.append(f"output {name}: sha256 {str(a.get('sha256'))[:10]} "
                                         f"-> {str(b.get('sha256'))[:10]}")
    if check.differences:
        check.verdict = "DIFFERENT"
    return check


def _scratch_store_uri(store: Store, attempt: str) -> str:
    return f"{store.uri.rstrip('/')}/{SCRATCH}/{attempt}/store"


def verify_run(store_uri: str, flow: str, ref: str = "latest", steps: str | None = None,
               tolerance: float = 0.0, launcher: str = "local", out=print) -> list[StepCheck]:
    """Recompute and compare the steps of one finished run; see the module docstring."""
    from flows.launchers import launch
    from tasks.registry import resolve

    if tolerance < 0:
        raise ConfigError(f"--tolerance must be 0 or more (got {tolerance})")
    store = open_store(store_uri)
    run_id = resolve_run(store, flow, ref)
    flow_manifest = store.get_json(flow_manifest_key(flow, run_id))
    found = run_steps(store, flow_manifest)
    if steps:
        chosen = {n: m for n, m in found.items() if fnmatch.fnmatch(n, steps)}
        if not chosen:
            raise ConfigError(f"--steps {steps!r} matches none of the {len(found)} steps of "
                              f"{flow} run {run_id}: {', '.join(found)}")
        found = chosen
    attempt = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.urandom(3).hex()}"
    scratch = join(SCRATCH, flow, run_id, attempt)
    scratch_store = _scratch_store_uri(store, attempt)
    log = get_logger("verify")
    out(f"verifying {flow} run {run_id}: {len(found)} steps, recomputed with the cache off "
        f"into {store.url(scratch)} (removed afterwards)")
    results = []
    try:
        for name, stored in found.items():
            check = StepCheck(name, stored.task)
            results.append(check)
            if stored.task in NOT_RECOMPUTED:
                check.verdict, check.note = "skipped", NOT_RECOMPUTED[stored.task]
                out(check.line())
                continue
            _func, cfg_cls = resolve(stored.task)
            cfg = dict(stored.config)
            shared = "out" not in cfg  # a dataset: its version is its place
            target = scratch_store if shared else store_uri
            if not shared:
                cfg["out"] = join(scratch, name)
            try:
                now_ident = identity_of(stored.task, cfg_cls.model_validate(cfg), store)
                check.identity_changes = identity_changes(stored.identity, stored.config,
                                                          now_ident)
            except Exception as exc:  # noqa: BLE001 - explaining is best effort; the
                # recomputation below is the verdict
                log.warning("could not compute the identity of %s: %s", name, exc)
            started = time.monotonic()
            fresh = launch(stored.task, cfg, target, launcher)
            check.seconds = time.monotonic() - started
            compare_manifests(stored, fresh, tolerance, check,
                              stores=(store, open_store(target)),
                              rename=None if shared else (cfg["out"], stored.prefix))
            out(check.line())
    finally:  # the scratch results (and a scratch store of datasets) never stay
        for prefix in (scratch, join(SCRATCH, attempt)):
            for key in store.list(prefix):
                store.delete(key)
    bad = [c for c in results if c.verdict in ("DIFFERENT", "failed")]
    agree = [c for c in results if c.verdict in ("identical", "within tolerance")]
    out(f"{len(agree)} of {len(results)} steps agree"
        + (f", {len(bad)} DIFFERENT" if bad else "")
        + (f", {len(results) - len(agree) - len(bad)} skipped"
           if len(results) - len(agree) - len(bad) else "")
        + (f" (tolerance {tolerance:g})" if tolerance else " (exact)"))
    return results
