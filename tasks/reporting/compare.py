"""Compare two runs of one question: what differs between them (resolved config, code, input
data, library versions, image, device, machine), every cell's metrics with their
differences, the per-epoch curves of both overlaid, per-class deltas and the difference of
the confusion matrices, and images side by side.

This is the shared half: the provenance diff, the verdict and the report (run references:
:mod:`tasks.reporting.runs`; the statistics: :mod:`tasks.reporting.stats`). Each question
supplies a
:class:`Comparer` (which cells a run has and their metrics, curves and per-class numbers,
its input data's identity, which images to put side by side, its own extra sections); they
are registered on top (``tasks/comparers.py``) and handed in, never imported here.

A run is its flow manifest ``runs/<flow>/<run-id>/manifest.json``; a run with step
manifests but no flow manifest has not finished (still running, or interrupted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from tasks.core.config import Config
from tasks.core.errors import MissingKeyError, VisionflowsError
from tasks.core.layout import flow_manifest_key, run_prefix
from tasks.core.promote import is_regression
from tasks.core.runtime import Manifest, TaskRun, read_manifest
from tasks.core.store import Store
from tasks.reporting.render import Image, Report, Section, Table, fmt, slug, write_report
from tasks.reporting.runs import RunInfo, resolve_refs
from tasks.reporting.stats import CONFIDENCE, metric_delta


class RegressionError(VisionflowsError):
    """A challenger worse than its champion by more than the tolerance (fail_on_regression).

    Raised by the flow after everything is written, so the run ends Failed (and Prefect
    notifications and automations can fire); the CLI exits with code 4.
    """

    exit_code = 4


# ---------------------------------------------------------------- what a question supplies

@dataclass
class Cell:
    """One experiment of a run (a sweep cell, a model, an image), with its seeds' metrics."""

    name: str
    seeds: list[dict[str, float]]
    history: list[dict[str, Any]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    per_class: dict[str, list[float | None]] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    confusion_labels: list[str] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ImagePair:
    """The same picture from both runs: store keys (None: that run has none)."""

    title: str
    a: str | None
    b: str | None
    caption: str = ""


class Comparer:
    """A question's side of a comparison. Subclasses set the attributes and override the
    methods that apply; the defaults compare nothing question-specific."""

    question: str = ""
    primary: str | None = None          # the metric promotion ranks by (None: no champion)
    mode: str = "max"
    secondary: tuple[str, ...] = ()     # other metrics shown per cell
    curve_metrics: tuple[str, ...] = ("loss", "accuracy")
    curve_splits: tuple[str, ...] = ("train", "dev", "test")
    cell_label: str = "cell"

    def cells(self, store: Store, run: RunInfo) -> dict[str, Cell]:
        return {}

    def inputs(self, store: Store, run: RunInfo) -> dict[str, str]:
        """Identity of the run's input data: name -> sha256 (or another content hash)."""
        return {}

    def images(self, store: Store, a: RunInfo, b: RunInfo, cells_a: dict[str, Cell],
               cells_b: dict[str, Cell]) -> list[ImagePair]:
        return []

    def sections(self, store: Store, a: RunInfo, b: RunInfo, cells_a: dict[str, Cell],
                 cells_b: dict[str, Cell]) -> tuple[list[Section], dict[str, Any]]:
        """Question-specific sections, and their numbers for the comparison's manifest."""
        return [], {}

    def summary(self, metrics: dict[str, Any]) -> list[str]:
        """Extra stdout lines from the comparison manifest's ``metrics``."""
        return []


def numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The plain numeric metrics (no bools, lists or dicts)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def dataset_identity(store: Store, prefix: str | None, label: str = "data") -> dict[str, str]:
    """``{"<label> <file>": sha256}`` of a fetched dataset (its manifest's sha256 record)."""
    if not prefix:
        return {}
    try:
        m = read_manifest(store, prefix)
    except VisionflowsError:
        return {label: f"missing ({prefix})"}
    sha = m.metrics.get("sha256") or (m.model_extra or {}).get("sha256")
    if isinstance(sha, dict):
        return {f"{label} {k}": str(v) for k, v in sorted(sha.items())}
    if isinstance(sha, str):
        return {label: sha}
    if zip_sha := (m.model_extra or {}).get("zip_sha256"):
        return {label: str(zip_sha)}
    return {label: f"{prefix} (no sha256 recorded)"}


def verdict(a: RunInfo, b: RunInfo, mode: str, tolerance: float) -> dict[str, Any]:
    """B against A on the primary metric of the flow manifests (the value promotion used)."""
    ca, cb = a.manifest.get("champion") or {}, b.manifest.get("champion") or {}
    metric = ca.get("metric") or cb.get("metric")
    va, vb = ca.get("value"), cb.get("value")
    base = {"metric": metric, "mode": mode, "tolerance": tolerance, "a": va, "b": vb,
            "a_cell": ca.get("best_cell"), "b_cell": cb.get("best_cell"), "delta": None,
            "regression": False, "outcome": "no primary metric"}
    if not metric or va is None or vb is None:
        base["text"] = (f"{a.flow} has no primary metric (no champion is kept): the "
                        "comparison shows what changed, with no verdict.")
        return base
    if ca.get("metric") != cb.get("metric"):
        base["text"] = (f"A is ranked by {ca.get('metric')}, B by {cb.get('metric')}: no "
                        "verdict.")
        base["outcome"] = "not comparable"
        return base
    delta = float(vb) - float(va)
    better = delta > 0 if mode == "max" else delta < 0
    regression = is_regression(float(vb), float(va), mode, tolerance)
    outcome = ("regression" if regression else "better" if better
               else "equal" if delta == 0 else "worse, within tolerance")
    base.update(delta=delta, regression=regression, outcome=outcome,
                text=(f"{metric} (best cell): A {float(va):.4f} ({ca.get('best_cell')}), B "
                      f"{float(vb):.4f} ({cb.get('best_cell')}), B - A = {delta:+.4f}; "
                      f"tolerance {tolerance:g}: {outcome}."))
    return base


# ---------------------------------------------------------------- what differs

def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (lists stay values)."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The resolved config keys whose values differ, dotted, sorted."""
    fa, fb = flatten(a), flatten(b)
    missing = "(absent)"
    return [{"key": k, "a": fa.get(k, missing), "b": fb.get(k, missing)}
            for k in sorted(set(fa) | set(fb)) if fa.get(k, missing) != fb.get(k, missing)]


def run_steps(store: Store, run: RunInfo, cells: dict[str, Cell]) -> list[dict[str, Any]]:
    """Every step manifest of a run: those under its folder and those its cells reuse from
    earlier runs (cache hits)."""
    seen: dict[str, dict[str, Any]] = {}
    own = run_prefix(run.flow, run.run_id)
    for key in store.list(own):
        if key.endswith("/manifest.json") and key != flow_manifest_key(run.flow, run.run_id):
            try:
                m = store.get_json(key)
            except MissingKeyError:
                continue
            seen[str(m.get("prefix", key))] = m
    for cell in cells.values():
        for m in cell.steps:
            seen.setdefault(str(m.get("prefix")), m)
    return list(seen.values())


def _values(steps: list[dict[str, Any]], get) -> str:
    """Distinct values over the steps, with how many steps had each when they disagree."""
    counts: dict[str, int] = {}
    for m in steps:
        v = get(m)
        if v is None:
            continue
        counts[str(v)] = counts.get(str(v), 0) + 1
    if not counts:
        return "(not recorded)"
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{v} ({n} steps)" for v, n in sorted(counts.items()))


def identity(store: Store, run: RunInfo, cells: dict[str, Cell],
             comparer: Comparer) -> dict[str, dict[str, str]]:
    """What a run was made of, by aspect: code, data, libraries, image, device, machine."""
    steps = run_steps(store, run, cells)
    code = run.manifest.get("code") or {}

    def prov(key):
        return lambda m: (m.get("provenance") or {}).get(key)

    devices = _values(steps, lambda m: (m.get("metrics") or {}).get("device")
                      if isinstance((m.get("metrics") or {}).get("device"), str) else None)
    gpus = _values(steps, lambda m: (m.get("provenance") or {}).get("cuda") or None)
    libs = {"python": _values(steps, prov("python")), "torch": _values(steps, prov("torch"))}
    for name, version in sorted((code.get("versions") or {}).items()):
        libs.setdefault(name, str(version))
    source = code.get("source")
    return {
        "code": {"git commit": _values(steps, prov("git_commit")),
                 **({f"file {p}": h for p, h in sorted(source.items())} if source else
                    {"files": "(per-file hashes not recorded by this run)"})},
        "input data": comparer.inputs(store, run) or {"data": "(not recorded)"},
        "library versions": libs,
        "image tag": {"image tag": _values(steps, prov("image_tag"))},
        "device": {"device": devices, "GPU": gpus if gpus != "(not recorded)" else "none"},
        "where it ran": {"hostname": _values(steps, prov("hostname")),
                         "platform": _values(steps, prov("platform"))},
    }


def identity_diff(ia: dict[str, dict[str, str]], ib: dict[str, dict[str, str]]
                  ) -> tuple[list[dict[str, str]], list[str]]:
    """Rows ``{aspect, key, a, b}`` that differ, and the aspects that are the same."""
    rows, same = [], []
    for aspect in ia:
        a, b = ia[aspect], ib.get(aspect, {})
        if aspect == "code" and ("files" in a) != ("files" in b):  # recorded on one side only
            a = {k: v for k, v in a.items() if not k.startswith("file")}
            b = {k: v for k, v in b.items() if not k.startswith("file")}
            rows.append({"aspect": aspect, "key": "files",
                         "a": "recorded" if "files" not in ia[aspect] else "not recorded",
                         "b": "recorded" if "files" not in ib[aspect] else "not recorded"})
        diff = [{"aspect": aspect, "key": k, "a": a.get(k, "(absent)"), "b": b.get(k, "(absent)")}
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if diff:
            rows.extend(diff)
        elif not any(r["aspect"] == aspect for r in rows):
            same.append(aspect)
    return rows, same


# ---------------------------------------------------------------- the comparison task

class ComparisonLink(Config):
    """A question report's pointer to the comparison with the champion (or, for a question
    without one, with the previous run) that the flow writes right after promotion."""

    a: str = Field(description="run id of the run compared against (the champion)")
    b: str = Field(description="run id of this run")
    key: str = Field(description="store key of the comparison's report.html")
    against: str = Field("the champion", description="what run a is, in words")


def link_section(link: ComparisonLink, store: Store) -> Section:
    """The report section pointing at the comparison."""
    return Section(f"Comparison with {link.against}", [
        f"This run (B, {link.b}) side by side with {link.against} (A, {link.a}): what "
        "differs, every metric's difference, curves, per-class deltas and images: "
        f"{store.url(link.key)}"])


class CompareConfig(Config):
    """Compare two finished runs of one question (resolved run ids)."""

    question: str = Field(description="the question's flow name")
    a: str = Field(description="run id of A (e.g. the champion)")
    b: str = Field(description="run id of B (e.g. this run)")
    out: str = Field(description="store prefix of the comparison: reports/compare/<Q>/<A>..<B>")
    a_ref: str | None = Field(None, description="how A was named (champion, latest~1, ...)")
    b_ref: str | None = None
    tolerance: float = Field(0.0, ge=0.0, description="regression tolerance of the verdict")


def _cell_table(comparer: Comparer, cells_a: dict[str, Cell], cells_b: dict[str, Cell]
                ) -> tuple[Table, dict[str, dict[str, Any]]]:
    rows, data = [], {}
    for name in [c for c in cells_b if c in cells_a]:
        a, b = cells_a[name], cells_b[name]
        keys = [k for k in ([comparer.primary] if comparer.primary else []) + list(
            comparer.secondary) if any(k in s for s in a.seeds + b.seeds)]
        if not keys:  # a question without named metrics: every common number
            keys = sorted(set.intersection(*(set(s) for s in a.seeds + b.seeds)))
        data[name] = {}
        for key in keys:
            va = [s[key] for s in a.seeds if key in s]
            vb = [s[key] for s in b.seeds if key in s]
            if not va or not vb:
                continue
            d = metric_delta(va, vb)
            data[name][key] = d
            rows.append([name, key + (" (primary)" if key == comparer.primary else ""),
                         _pm(d["a"], d["a_std"], d["a_n"]), _pm(d["b"], d["b_std"], d["b_n"]),
                         _num(d["delta"], sign=True), _ci(d["a_ci"]), _ci(d["b_ci"]),
                         _seeds(d["a_values"]), _seeds(d["b_values"]),
                         "—" if d["b_in_a"] is None else f"{d['b_in_a']} A's interval",
                         d["test"]])
    if all(d["a_n"] == d["b_n"] == 1 for by in data.values() for d in by.values()):
        return Table([comparer.cell_label, "metric", "A", "B", "B - A"],
                     [r[:5] for r in rows], f"Every {comparer.cell_label} in both runs (one "
                     "seed each: no seed-to-seed spread to test against)"), data
    table = Table([comparer.cell_label, "metric", "A", "B", "B - A",
                   f"A {100 * CONFIDENCE:g} % interval", f"B {100 * CONFIDENCE:g} % interval",
                   "A per seed", "B per seed", "B's mean", "seed-to-seed spread"],
                  rows, f"Every {comparer.cell_label} in both runs: mean over its seeds ± "
                  f"standard deviation (n seeds), the {100 * CONFIDENCE:g} % t-interval of "
                  "each mean over its seeds (one run: no interval), every seed's value, and "
                  "whether B's mean lies inside A's interval")
    return table, data


def _ci(ci: list[float] | None) -> str:
    return "one run: no interval" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _seeds(values: list[float]) -> str:
    return ", ".join(_num(v) for v in values)


def _num(x: float, sign: bool = False) -> str:
    """A number for a table: whole numbers (epochs, counts) without decimals."""
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):+d}" if sign else str(int(x))
    return f"{x:+.4f}" if sign else f"{x:.4f}"


def _pm(mean: float, std: float | None, n: int) -> str:
    return _num(mean) if std is None else f"{mean:.4f} ± {std:.4f} ({n})"


def _per_class(name: str, a: Cell, b: Cell, ra: RunInfo, rb: RunInfo
               ) -> tuple[Section | None, dict[str, Any]]:
    if not (a.per_class and b.per_class) and not (a.confusion and b.confusion):
        return None, {}
    sec = Section(name)
    data: dict[str, Any] = {}
    if a.per_class and b.per_class:
        if a.classes != b.classes:
            sec.paragraphs.append("The two runs have different classes "
                                  f"({len(a.classes)} vs {len(b.classes)}): no per-class "
                                  "comparison.")
        else:
            metrics = [m for m in a.per_class if m in b.per_class]
            rows = []
            for i, cls in enumerate(a.classes):
                row: list[Any] = [cls]
                for m in metrics:
                    va, vb = a.per_class[m][i], b.per_class[m][i]
                    d = None if va is None or vb is None else vb - va
                    row += [va, vb, None if d is None else f"{d:+.4f}"]
                    data.setdefault(m, {})[cls] = d
                if any(v for v in row[1::3] + row[2::3]):  # zero in both runs: not shown
                    rows.append(row)
            cols = ["class"] + [f"{m} {s}" for m in metrics for s in ("A", "B", "B - A")]
            hidden = len(a.classes) - len(rows)
            sec.tables.append(Table(cols, rows, f"{name}: per class, A and B and the difference"
                                    + (" (first seed)" if len(a.seeds) + len(b.seeds) > 2
                                       else "")
                                    + (f"; {hidden} classes at 0 in both runs not shown"
                                       if hidden else "")))
    if a.confusion and b.confusion:
        ca, cb = a.confusion, b.confusion
        if len(ca) == len(cb) and all(len(x) == len(y) for x, y in zip(ca, cb, strict=True)):
            delta = [[int(y) - int(x) for x, y in zip(r1, r2, strict=True)]
                     for r1, r2 in zip(ca, cb, strict=True)]
            labels = b.confusion_labels or b.classes or [str(i) for i in range(len(delta))]
            from tasks.ml import plots

            sec.images.append(Image(f"confusion-delta-{slug(name)}.png", plots.confusion_delta(
                delta, labels, f"{name}: confusion matrix B - A"),
                f"Confusion matrix of B minus A (rows true, columns predicted): red = more "
                f"in B ({rb.run_id}), blue = fewer"))
            moved = sorted(((abs(v), v, labels[i], labels[j]) for i, r in enumerate(delta)
                            for j, v in enumerate(r) if v and i != j), reverse=True)[:3]
            if moved:
                sec.paragraphs.append("Largest changes off the diagonal: " + "; ".join(
                    f"true {t} predicted {p} {v:+d}" for _, v, t, p in moved) + ".")
            data["confusion_delta"] = delta
        else:
            sec.paragraphs.append("The confusion matrices have different shapes: no difference.")
    return sec, data


def render(cfg: CompareConfig, store: Store, comparer: Comparer, flows: Sequence[str]
           ) -> Manifest:
    """Write the comparison of runs ``cfg.a`` (A) and ``cfg.b`` (B) under ``cfg.out``."""
    a, b = resolve_refs(store, cfg.a, cfg.b, flows=flows, question=cfg.question)
    a.ref, b.ref = cfg.a_ref or cfg.a, cfg.b_ref or cfg.b
    with TaskRun("report.compare", cfg, store, cfg.out) as run:
        cells_a, cells_b = comparer.cells(store, a), comparer.cells(store, b)
        common = [c for c in cells_b if c in cells_a]
        report = _new_report(cfg, store, a, b)
        v = verdict(a, b, comparer.mode, cfg.tolerance)
        report.sections.append(Section("Verdict", [v["text"]]))
        differs, cdiff, drows, same = _differs_section(store, comparer, a, b, cells_a, cells_b)
        report.sections.append(differs)
        cells_sec, cell_data, only_a, only_b = _cells_section(comparer, cells_a, cells_b,
                                                              common)
        report.sections.append(cells_sec)
        curve_sec, curves = _curves_section(comparer, a, b, cells_a, cells_b, common)
        if curves:
            report.sections.append(curve_sec)
        pc_sec, per_class = _per_class_section(a, b, cells_a, cells_b, common)
        if pc_sec.subsections:
            report.sections.append(pc_sec)
        img_sec, images = _images_section(store, comparer, a, b, cells_a, cells_b)
        if images:
            report.sections.append(img_sec)
        extra, extra_data = comparer.sections(store, a, b, cells_a, cells_b)
        report.sections.extend(extra)
        run.outputs.update(write_report(report, store, cfg.out))
        return run.finish({
            "question": cfg.question, "a": a.run_id, "b": b.run_id, "a_ref": a.ref,
            "b_ref": b.ref, "a_profile": a.profile, "b_profile": b.profile, "verdict": v,
            "config_diff": cdiff, "differs": drows, "same": same, "cells": cell_data,
            "only_a": only_a, "only_b": only_b, "curves": curves, "per_class": per_class,
            "images": images, **extra_data})


def _new_report(cfg: CompareConfig, store: Store, a: RunInfo, b: RunInfo) -> Report:
    """The comparison's title, the two runs it compares, and its meta."""
    named = {ref: (f" ({ref})" if ref != rid else "") for ref, rid in
             ((a.ref, a.run_id), (b.ref, b.run_id))}
    return Report(f"Compare {cfg.question}: A {a.run_id} .. B {b.run_id}", [
        f"A = run {a.run_id}{named[a.ref]}, profile {a.profile}, finished "
        f"{a.manifest.get('finished_at', '?')}. B = run {b.run_id}{named[b.ref]}, profile "
        f"{b.profile}, finished {b.manifest.get('finished_at', '?')}. Every difference is "
        "B minus A."], meta={
            "question": cfg.question, "A": f"{a.run_id}{named[a.ref]}",
            "B": f"{b.run_id}{named[b.ref]}", "store": store.uri,
            "generated": datetime.now(UTC).isoformat(timespec="seconds")})


def _differs_section(store: Store, comparer: Comparer, a: RunInfo, b: RunInfo,
                     cells_a: dict[str, Cell], cells_b: dict[str, Cell]
                     ) -> tuple[Section, list[dict], list[dict], list[str]]:
    """What differs between the runs (config, then code, data, libraries, ...), with the
    config differences, the identity rows that differ and what is the same."""
    cdiff = config_diff(a.manifest.get("config") or {}, b.manifest.get("config") or {})
    ida = identity(store, a, cells_a, comparer)
    idb = identity(store, b, cells_b, comparer)
    drows, same = identity_diff(ida, idb)
    differs = Section("What differs", [
        ("Resolved config: " + ", ".join(f"{d['key']} {d['a']!r} -> {d['b']!r}"
                                         for d in cdiff) + "."
         if cdiff else "Resolved config: identical."),
        "Same in both: " + (", ".join(same) if same else "nothing else") + "."])
    if cdiff:
        differs.tables.append(Table(["config key", "A", "B"],
                                    [[d["key"], d["a"], d["b"]] for d in cdiff],
                                    "Config keys that differ (dotted for nested keys)"))
    if drows:
        differs.tables.append(Table(["aspect", "what", "A", "B"],
                                    [[r["aspect"], r["key"], r["a"], r["b"]] for r in drows],
                                    "Code, data, libraries, image, device, machine: only "
                                    "what differs"))
    return differs, cdiff, drows, same


def _cells_section(comparer: Comparer, cells_a: dict[str, Cell], cells_b: dict[str, Cell],
                   common: list[str]) -> tuple[Section, Any, list[str], list[str]]:
    """The metrics of every cell in both runs, and the cells only one run has."""
    table, cell_data = _cell_table(comparer, cells_a, cells_b)
    cells_sec = Section(f"Metrics per {comparer.cell_label}", tables=[table] if table.rows
                        else [])
    only_a = [c for c in cells_a if c not in cells_b]
    only_b = [c for c in cells_b if c not in cells_a]
    if only_a or only_b:
        cells_sec.paragraphs.append(
            f"Only in A: {', '.join(only_a) or 'none'}. Only in B: "
            f"{', '.join(only_b) or 'none'}.")
    if not common:
        cells_sec.paragraphs.append(f"No {comparer.cell_label} is in both runs.")
    return cells_sec, cell_data, only_a, only_b


def _curves_section(comparer: Comparer, a: RunInfo, b: RunInfo, cells_a: dict[str, Cell],
                    cells_b: dict[str, Cell], common: list[str]
                    ) -> tuple[Section, dict[str, dict[str, int]]]:
    """A and B's per-epoch curves of every common cell that has a history."""
    from tasks.ml import plots

    curves: dict[str, dict[str, int]] = {}
    curve_sec = Section("Per-epoch curves", [
        f"A ({a.run_id}) in the first colour, B ({b.run_id}) in the second; train solid, "
        "dev dashed, test/val dotted."])
    for name in common:
        ha, hb = cells_a[name].history, cells_b[name].history
        if not ha and not hb:
            continue
        curves[name] = {"a_epochs": len(ha), "b_epochs": len(hb)}
        shown = [k for k in comparer.curve_metrics if any(
            f"{s}/{k}" in h for h in ha + hb for s in comparer.curve_splits)]
        curve_sec.images.append(Image(f"curves-{slug(name)}.png", plots.curves(
            {"A": ha, "B": hb}, metrics=shown or comparer.curve_metrics,
            splits=comparer.curve_splits, title=f"{name}: A vs B"),
            f"{name}: A {len(ha)} epochs, B {len(hb)} epochs"))
    return curve_sec, curves


def _per_class_section(a: RunInfo, b: RunInfo, cells_a: dict[str, Cell],
                       cells_b: dict[str, Cell], common: list[str]
                       ) -> tuple[Section, dict[str, Any]]:
    """The per-class differences of every common cell that has per-class metrics."""
    per_class: dict[str, Any] = {}
    pc_sec = Section("Per-class differences")
    for name in common:
        sec, data = _per_class(name, cells_a[name], cells_b[name], a, b)
        if sec is not None:
            pc_sec.subsections.append(sec)
            per_class[name] = data
    return pc_sec, per_class


def _images_section(store: Store, comparer: Comparer, a: RunInfo, b: RunInfo,
                    cells_a: dict[str, Cell], cells_b: dict[str, Cell]
                    ) -> tuple[Section, list[dict[str, Any]]]:
    """The comparer's image pairs, A beside B (a missing side is drawn as missing)."""
    from tasks.ml import plots

    pairs = comparer.images(store, a, b, cells_a, cells_b)
    img_sec = Section("Images side by side", [
        f"Left: A ({a.run_id}); right: B ({b.run_id})."])
    images = []
    for i, pair in enumerate(pairs):
        left = store.get_bytes(pair.a) if pair.a and store.exists(pair.a) else None
        right = store.get_bytes(pair.b) if pair.b and store.exists(pair.b) else None
        img_sec.images.append(Image(f"pair-{i:02d}-{slug(pair.title)}.png",
                                    plots.side_by_side(left, right, [f"A {a.run_id}",
                                                                     f"B {b.run_id}"]),
                                    f"{pair.title}. {pair.caption}".strip()))
        images.append({"title": pair.title, "a": pair.a if left else None,
                       "b": pair.b if right else None, "caption": pair.caption})
    return img_sec, images


def summary_lines(metrics: dict[str, Any], primary: str | None, limit: int = 12) -> list[str]:
    """The short stdout table of a comparison manifest's metrics."""
    lines = []
    cd = metrics.get("config_diff", [])
    lines.append("config: " + (", ".join(f"{d['key']} {d['a']!r} -> {d['b']!r}" for d in cd)
                               if cd else "identical"))
    others = list(metrics.get("differs", []))
    if others:
        shown = [f"{r['aspect']}/{r['key']}: {fmt(r['a'])} -> {fmt(r['b'])}" for r in others[:6]]
        more = f" (+{len(others) - 6} more)" if len(others) > 6 else ""
        lines.append("differs: " + "; ".join(shown) + more)
    lines.append("same: " + (", ".join(metrics.get("same", [])) or "nothing else"))
    cells = metrics.get("cells", {})
    if cells:
        width = max(len(c) for c in cells)
        lines.append(f"{'cell':{width}s}  {'metric':18s} {'A':>9s} {'B':>9s} {'B - A':>9s}")
        n = 0
        for cell, by_metric in cells.items():
            keys = [primary] if primary in by_metric else list(by_metric)[:1]
            for key in keys:
                d = by_metric[key]
                flag = {True: "  exceeds spread", False: "  within spread"}.get(
                    d.get("exceeds_spread"), "")
                if d.get("a_ci"):
                    flag += (f"  A {100 * CONFIDENCE:g} % [{d['a_ci'][0]:.4f}, "
                             f"{d['a_ci'][1]:.4f}] (n={d['a_n']}): B {d['b_in_a']}")
                lines.append(f"{cell:{width}s}  {key:18s} {d['a']:9.4f} {d['b']:9.4f} "
                             f"{d['delta']:+9.4f}{flag}")
                n += 1
            if n >= limit:
                lines.append(f"... ({len(cells) - limit} more in the report)")
                break
    lines.append("verdict: " + metrics.get("verdict", {}).get("text", ""))
    return lines
