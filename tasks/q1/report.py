"""``classifier.report``: the per-question report of a Q1 sweep (MLP or CNN).

Reads the train and evaluate manifests of every run, draws the plots, compares with the
reference numbers and writes ``report.md`` + self-contained ``report.html`` to the store.
Runs that are missing or failed are listed as such, never silently dropped.
"""

from __future__ import annotations

import statistics
from typing import Any, Literal

from pydantic import Field

from tasks.core.config import Config
from tasks.core.runtime import Manifest, TaskRun, find_verified
from tasks.core.store import Store
from tasks.ml import plots
from tasks.ml.summary import format_summary, summarize
from tasks.q1.data import CLASSES
from tasks.q1.reference import REFERENCE
from tasks.q1.train import TrainConfig, build_model
from tasks.reporting.compare import ComparisonLink, link_section
from tasks.reporting.render import (
    Image,
    Report,
    Section,
    Table,
    fmt,
    metric_kind,
    slug,
    write_report,
)
from tasks.reporting.stats import CONFIDENCE, interval_text, metric_delta, t_interval


class RepeatRef(Config):
    train: str
    eval: str


class RunRef(Config):
    name: str = Field(description="display name, e.g. 'batch 32'")
    value: Any = Field(description="the swept value, e.g. 32, 'tanh', 0.4")
    train: str = Field(description="store prefix of the classifier.train run")
    eval: str = Field(description="store prefix of the classifier.evaluate run")
    repeats: list[RepeatRef] = Field(default_factory=list,
                                     description="the same cell with other seeds")


class Group(Config):
    key: str = Field(description="swept parameter: batch_size, activation, loss, model, dropout")
    title: str
    runs: list[RunRef]
    select_by: str = "test/accuracy"
    numeric: bool = False


class ReportConfig(Config):
    out: str
    question: Literal["q1-mlp", "q1-cnn"]
    title: str
    profile: str
    run_id: str
    groups: list[Group] = Field(min_length=1)
    intro: list[str] = Field(default_factory=list)
    comparison: ComparisonLink | None = Field(
        None, description="the comparison with the champion the flow writes after promotion")


def _aggregate(manifests: list[Manifest]) -> Manifest:
    """The first run's manifest with each numeric metric replaced by the mean over all runs,
    plus ``<metric>/std`` (sample standard deviation), ``<metric>/n`` and
    ``<metric>/values`` (every seed's value, in seed order)."""
    if len(manifests) == 1:
        return manifests[0]
    out = manifests[0].model_copy(deep=True)
    for key, value in manifests[0].metrics.items():
        values = [m.metrics.get(key) for m in manifests]
        if isinstance(value, bool) or not all(isinstance(v, int | float) for v in values):
            continue
        out.metrics[key] = statistics.fmean(values)
        out.metrics[f"{key}/std"] = statistics.stdev(values)
        out.metrics[f"{key}/n"] = len(values)
        out.metrics[f"{key}/values"] = [float(v) for v in values]
    return out


def _load(store: Store, ref: RunRef) -> tuple[Manifest | None, Manifest | None]:
    """Train and eval manifests of a cell; with repeats, their means over every seed that
    finished (the first seed's manifest carries the curves and plots)."""
    pairs = [(find_verified(store, ref.train), find_verified(store, ref.eval))]
    pairs += [(find_verified(store, r.train), find_verified(store, r.eval)) for r in ref.repeats]
    first_tr, first_ev = pairs[0]
    if first_tr is None or first_ev is None:
        return first_tr, first_ev
    done = [(t, e) for t, e in pairs if t is not None and e is not None]
    return _aggregate([t for t, _ in done]), _aggregate([e for _, e in done])


def _metric(train: Manifest | None, ev: Manifest | None, key: str) -> float | None:
    for m in (ev, train):
        if m is not None and key in m.metrics:
            return m.metrics[key]
    return None


def _values(train: Manifest | None, ev: Manifest | None, key: str) -> list[float]:
    """Every seed's value of ``key`` (one value for a single run, none when absent)."""
    values = _metric(train, ev, f"{key}/values")
    if values is not None:
        return list(values)
    one = _metric(train, ev, key)
    return [] if one is None else [float(one)]


def _stats(train: Manifest | None, ev: Manifest | None, key: str) -> dict[str, Any]:
    """``key`` over a cell's seeds: mean, std (None for one run), n, values and the 95 %
    t-interval (``ci``: [lo, hi], None for one run) with its full record (``interval``)."""
    values = _values(train, ev, key)
    ci = t_interval(values)
    return {"mean": statistics.fmean(values) if values else None,
            "std": ci["std"] if ci else None, "n": len(values), "values": values,
            "ci": [ci["lo"], ci["hi"]] if ci else None, "interval": ci}


def _pm(st: dict[str, Any], kind: str | None) -> str:
    """``mean ± std (n)`` by kind (percentages: the std in points); a single run bare."""
    if st["mean"] is None:
        return "—"
    if st["std"] is None:
        return fmt(st["mean"], kind)
    std = f"{100 * st['std']:.2f} pts" if kind == "pct" else fmt(st["std"])
    return f"{fmt(st['mean'], kind)} ± {std} (n={st['n']})"


def _ci_text(st: dict[str, Any], kind: str | None) -> str:
    if st["ci"] is None:
        return "one run: no interval"
    lo, hi = st["ci"]
    return f"[{fmt(lo, kind)}, {fmt(hi, kind)}]"


def _per_seed(st: dict[str, Any], kind: str | None) -> str:
    return ", ".join(fmt(v, kind) for v in st["values"]) or "—"


def _group_section(question: str, group: Group, store: Store,
                   summary_rows: list[dict]) -> tuple[Section, dict]:
    loaded = {ref.name: (ref, *_load(store, ref)) for ref in group.runs}
    ok = {n: v for n, v in loaded.items() if v[1] is not None and v[2] is not None}
    repeated = any("test/accuracy/n" in v[2].metrics for v in ok.values())
    best_name = (max(ok, key=lambda n: _metric(ok[n][1], ok[n][2], group.select_by) or -1)
                 if ok else None)
    section = Section(group.title, tables=[_metrics_table(
        question, group, loaded, ok, best_name, repeated, summary_rows)])
    if repeated:
        section.tables.append(_seeds_table(group, ok))
    result: dict[str, Any] = {"key": group.key, "select_by": group.select_by, "best": None,
                              "comparison": []}
    if not ok:
        section.paragraphs.append("No run of this sweep finished: nothing to compare.")
        return section, result
    ref = REFERENCE.get(question, {}).get(group.key)
    section.paragraphs.append(_best_and_reference(group, ok, best_name, repeated, ref, result,
                                                  section))
    section.images.extend(_group_images(group, ok, repeated, ref))
    return section, result


def _metrics_table(question: str, group: Group, loaded: dict, ok: dict, best_name: str | None,
                   repeated: bool, summary_rows: list[dict]) -> Table:
    """The sweep's final metrics, a row per cell (missing and failed ones included); each
    cell's test accuracy is also added to ``summary_rows``."""
    has_dev = any("dev/accuracy" in v[1].metrics for v in ok.values())
    by = f"{'mean ' if repeated else ''}{group.select_by}"
    cols = ["variant", f"best by {by}", "status", "test acc",
            *(["± std (n seeds)"] if repeated else []),
            "precision", "recall", "F1", "test loss"]
    cols += ["dev acc (final)", "best dev acc"] if has_dev else []
    cols += ["train time", "epochs"]
    formats = [None] * (len(cols) - 2) + ["time", "count"]
    rows = []
    for name, (run_ref, tr, ev) in loaded.items():
        status = "ok" if (tr and ev) else ("trained, not evaluated" if tr else "missing/failed")
        spread = ([f"± {ev.metrics['test/accuracy/std']:.4f} "
                   f"({ev.metrics['test/accuracy/n']})" if ev and "test/accuracy/n" in
                   ev.metrics else "(1)"] if repeated else [])
        row = [name, "◀ best" if name == best_name else "", status,
               _metric(tr, ev, "test/accuracy"), *spread,
               _metric(tr, ev, "test/precision_macro"), _metric(tr, ev, "test/recall_macro"),
               _metric(tr, ev, "test/f1_macro"), _metric(tr, ev, "test/loss")]
        if has_dev:
            row += [_metric(tr, ev, "dev/accuracy"), _metric(tr, ev, "best/dev/accuracy")]
        row += [_metric(tr, ev, "train/time_s"), _metric(tr, ev, "epochs")]
        rows.append(row)
        acc = _stats(tr, ev, "test/accuracy")
        summary_rows.append({"question": question, "variant": f"{group.key}={name}",
                             "status": status, "metric": "test/accuracy",
                             "value": acc["mean"], "std": acc["std"], "seeds": acc["n"] or 1,
                             "values": acc["values"], "ci": acc["ci"],
                             "best": name == best_name,
                             "time_s": _metric(tr, ev, "train/time_s"),
                             "run": tr.prefix if tr else run_ref.train})
    return Table(cols, rows, f"{group.title}: final metrics"
                 + (" (means over seeds)" if repeated else ""), formats)


def _seeds_table(group: Group, ok: dict) -> Table:
    """Every seed of every finished cell, with the t-interval of each mean over seeds."""
    keys = list(dict.fromkeys([group.select_by, "test/accuracy"]))
    return Table(
        ["variant", "metric", "mean ± std (n seeds)",
         f"{100 * CONFIDENCE:g} % t-interval of the mean", "per seed"],
        [[name, k, _pm(st, metric_kind(k)), _ci_text(st, metric_kind(k)),
          _per_seed(st, metric_kind(k))]
         for name, v in ok.items() for k in keys
         for st in [_stats(v[1], v[2], k)]],
        f"{group.title}: every seed, and the {100 * CONFIDENCE:g} % t-interval of each "
        "mean over seeds (one run: no interval)")


def _best_and_reference(group: Group, ok: dict, best_name: str, repeated: bool,
                        ref: dict | None, result: dict, section: Section) -> str:
    """The sentence on our best setting (recorded in ``result``) and, with a reference, how
    ours compares with it: its items go to ``result['comparison']``, its table to
    ``section``."""
    best_ref, best_tr, best_ev = ok[best_name]
    best_st = _stats(best_tr, best_ev, group.select_by)
    result.update(best=best_ref.value, best_name=best_name, best_score=best_st["mean"],
                  best_std=best_st["std"], best_n=best_st["n"], best_ci=best_st["ci"])
    text = (f"Ours: best {group.key} = {best_ref.value!r} by "
            f"{'the mean ' if repeated else ''}{group.select_by} "
            f"({_pm(best_st, metric_kind(group.select_by))}).")
    if not ref:
        return text
    at_ref = None  # the reference's setting among ours, when it differs from our best
    if ref.get("best") is not None and ref["best"] != best_ref.value:
        at_ref = next((n for n, v in ok.items() if v[0].value == ref["best"]), None)
    text += f" Reference (original report): {ref['note']}."
    by = f"{'mean ' if repeated else ''}{group.select_by}"
    choice = {"item": f"best {group.key} (by {by})", "ours": best_ref.value,
              "reference": ref["best"] if ref.get("best") is not None else ref["note"],
              "kind": "choice" if ref.get("best") is not None else "text"}
    if ref.get("best") is not None:
        agree = ref["best"] == best_ref.value
        text += " Our choice agrees." if agree else " Our choice differs."
        result["reference_best"] = ref["best"]
        result["agrees"] = agree
        if at_ref is not None:
            choice["position"] = _position(group, ok[at_ref], ok[best_name], ref)
            text += f" {choice['position'][0].upper()}{choice['position'][1:]}."
    result["comparison"].append(choice)
    ref_rows = _reference_rows(group, ok, best_name, at_ref, ref, result["comparison"])
    if ref_rows:
        section.tables.append(Table(
            ["metric", "setting (ours)", "reference (original report)",
             "ours: mean ± std (n seeds)", f"our {100 * CONFIDENCE:g} % t-interval",
             "ours per seed", "where the reference lies"], ref_rows,
            "The original report's numbers beside ours: the reference is one run; "
            "ours is the mean over seeds with the t-interval of that mean"))
    return text


def _position(group: Group, at_ref: tuple, best: tuple, ref: dict) -> str:
    """Ours at the reference's setting, and our best minus it with its test."""
    d = metric_delta(_values(*at_ref[1:], group.select_by), _values(*best[1:], group.select_by))
    kind = metric_kind(group.select_by)
    there = _pm(_stats(*at_ref[1:], group.select_by), kind)
    gap = f"{100 * d['delta']:+.2f} points" if kind == "pct" else fmt(d["delta"], kind)
    return (f"ours at {group.key} {ref['best']!r}: {there}; our best minus it: "
            f"{gap} ({d['test']})")


def _reference_rows(group: Group, ok: dict, best_name: str, at_ref: str | None, ref: dict,
                    comparison: list[dict]) -> list[list]:
    """The reference's numbers beside ours (at our best setting, and at the reference's
    when it differs); each is also added to ``comparison``."""
    best_ref = ok[best_name][0]
    metric_keys = [k for k in ref if "/" in k]
    rows = []
    for label, (tr_, ev_), setting in (
            (f"at our best {group.key}", ok[best_name][1:], best_ref.value),
            *([(f"at the reference's {group.key}", ok[at_ref][1:], ref["best"])]
              if at_ref is not None else [])):
        for k in metric_keys:
            st = _stats(tr_, ev_, k)
            kind = metric_kind(k)
            where = interval_text(ref[k], st["interval"], percent=kind == "pct",
                                  what="the reference")
            comparison.append({
                "item": f"{k} {label}", "ours": st["mean"], "reference": ref[k],
                "kind": kind, "std": st["std"], "n": st["n"],
                "values": st["values"], "interval": st["ci"], "position": where})
            rows.append([k, f"{group.key} {setting!r}", fmt(ref[k], kind),
                         _pm(st, kind), _ci_text(st, kind), _per_seed(st, kind), where])
    return rows


def _group_images(group: Group, ok: dict, repeated: bool, ref: dict | None) -> list[Image]:
    """The sweep's figures: curves, scores, time, spread over seeds, accuracy against a
    numeric parameter, then the per-cell details."""
    tag = slug(group.key)
    what = f"one per {group.key}"
    histories = {n: v[1].model_extra.get("history", []) for n, v in ok.items()}
    imgs = [
        Image(f"curves-{tag}.png", plots.curves(histories, title=group.title),
              f"{group.title}: loss and accuracy per epoch, a colour per {group.key} "
              "(train solid, dev dashed, test dotted)"),
        Image(f"aprf-{tag}.png", plots.grouped_bars(
            {n: {"accuracy": _metric(*v[1:], "test/accuracy"),
                 "precision": _metric(*v[1:], "test/precision_macro"),
                 "recall": _metric(*v[1:], "test/recall_macro"),
                 "F1": _metric(*v[1:], "test/f1_macro")} for n, v in ok.items()},
            "score", "Accuracy, precision, recall, F1 (macro, test)"),
            f"{group.title}: test accuracy, precision, recall and F1 (macro), {what}"),
        Image(f"time-{tag}.png", plots.bars(
            {n: _metric(*v[1:], "train/time_s") for n, v in ok.items()}, "seconds",
            "Training compute time"),
            f"{group.title}: wall-clock training time (seconds), {what}"),
    ]
    if repeated:
        imgs.append(Image(f"spread-{tag}.png", plots.bars(
            {n: _metric(*v[1:], "test/accuracy") for n, v in ok.items()}, "test accuracy",
            "Test accuracy: mean ± std over seeds",
            errors={n: _metric(*v[1:], "test/accuracy/std") or 0.0 for n, v in ok.items()}),
            f"{group.title}: mean test accuracy {what}; error bars: standard deviation "
            "over seeds"))
    if group.numeric:
        imgs.append(_accuracy_line(group, ok, ref, tag))
    return imgs + _detail_images(group, ok, tag, what)


def _accuracy_line(group: Group, ok: dict, ref: dict | None, tag: str) -> Image:
    """Final accuracy against a numeric swept parameter, the reference's as stars."""
    xs = [v[0].value for v in ok.values()]
    series = {s: [_metric(*v[1:], f"{s}/accuracy") for v in ok.values()]
              for s in ("dev", "test") if all(
                  _metric(*v[1:], f"{s}/accuracy") is not None for v in ok.values())}
    markers = {}
    if ref and "dev/accuracy" in ref:
        markers["reference dev"] = (ref["best"], ref["dev/accuracy"])
        markers["reference test"] = (ref["best"], ref["test/accuracy"])
    return Image(f"{tag}-vs-accuracy.png", plots.line(
        xs, series, group.key, "accuracy", f"Accuracy vs {group.key}", markers),
        f"{group.title}: final accuracy against {group.key}; stars: the original "
        "report's (reference)")


def _detail_images(group: Group, ok: dict, tag: str, what: str) -> list[Image]:
    """Per-cell plots as small multiples: one figure per sweep, one panel/row per cell."""
    per_class = {m: {n: v[2].metrics["test/per_class"][m] for n, v in ok.items()}
                 for m in ("precision", "recall")}
    return [
        Image(f"perclass-{tag}.png", plots.heatmaps(
            per_class, CLASSES, f"{group.title}: per-class precision and recall (test)"),
            f"{group.title}: per-class precision and recall on the test set, a row per "
            f"{group.key}", detail=True),
        Image(f"confusion-{tag}.png", plots.confusion_grid(
            {n: v[2].metrics["test/confusion_matrix"] for n, v in ok.items()}, CLASSES,
            f"{group.title}: confusion matrices (test)"),
            f"{group.title}: test confusion matrices, {what}, coloured by the share of each "
            "true class (rows: true, columns: predicted)", detail=True),
    ]


def why_different(store: Store, question: str, tcfgs: list[TrainConfig],
                  summary_rows: list[dict]) -> str:
    """Why our numbers may differ from the original report's, from what this run did."""
    first = tcfgs[0]
    data = find_verified(store, first.data)
    counts = data.metrics.get("counts", {}) if data else {}
    n_train, n_test = counts.get("train_images"), counts.get("test_images")
    source = data.inputs.get("source") if data else None
    sizes = (f" ({n_train:,} training / {n_test:,} test images)"
             if n_train is not None and n_test is not None else "")
    if source == "generator":
        what = f"generated images in Fashion-MNIST's format{sizes}, not the real dataset"
    elif source:
        what = f"the real Fashion-MNIST{sizes}, from {source}"
    else:
        what = "a dataset whose manifest is missing"
    epochs = "/".join(str(e) for e in sorted({c.epochs for c in tcfgs}))
    opt = sorted({f"{c.optimizer} (learning rate {c.learning_rate:g})" for c in tcfgs})
    seeds = max((int(r.get("seeds") or 1) for r in summary_rows), default=1)
    parts = [f"ours: {what}", f"{epochs} epoch(s)", f"optimizer {', '.join(opt)}",
             f"{seeds} seed(s) per setting"]
    if any(c.model == "mlp" for c in tcfgs):
        hidden = sorted({" -> ".join(map(str, c.hidden)) for c in tcfgs if c.model == "mlp"})
        parts.append(f"MLP hidden layers {', '.join(hidden)} (our choice)")
    if question == "q1-cnn":
        dev = first.dev_fraction
        if n_test is not None and dev:
            n_dev = int(round(n_test * dev))
            parts.append(f"test set split {n_dev:,} dev / {n_test - n_dev:,} test")
    stds = [r["std"] for r in summary_rows if isinstance(r.get("std"), int | float)]
    if stds:
        parts.append(f"the test accuracy of one setting varies by up to "
                     f"{100 * max(stds):.2f} points (standard deviation) between our seeds")
    ref = ("Reference: the real 60,000 / 10,000 images (Q1-CNN: 6,000 dev / 4,000 test); the "
           "original report does not print its MLP layer sizes, optimizer, learning rate or "
           "Q1 epoch count, and shows one run per setting.")
    if question == "q1-cnn":  # measured on the real data: docs/fidelity.md
        ref += (" The epoch count matters most for the dropout sweep: its cells still "
                "under-fit after 10 epochs (docs/fidelity.md, 'The CNN gap').")
    return "Why our numbers may differ: " + "; ".join(parts) + ". " + ref


def render(cfg: ReportConfig, store: Store) -> Manifest:
    """Build the question's report from the manifests of its runs."""
    with TaskRun("classifier.report", cfg, store, cfg.out) as run:
        report = Report(cfg.title, list(cfg.intro), meta={
            "question": cfg.question, "profile": cfg.profile, "run id": cfg.run_id,
            "store": store.uri})
        if cfg.profile != "full":
            report.title += f" ({cfg.profile} profile: generated data, not comparable to the "\
                            "reference)"
        if cfg.comparison is not None:
            report.sections.append(link_section(cfg.comparison, store))
        results, summary_rows, archs = [], [], {}
        for group in cfg.groups:
            section, result = _group_section(cfg.question, group, store, summary_rows)
            report.sections.append(section)
            results.append(result)
            for ref in group.runs:
                tr = find_verified(store, ref.train)
                if tr is not None:
                    tcfg = TrainConfig.model_validate(tr.config)
                    archs.setdefault((tcfg.model, tcfg.hidden, tcfg.activation), tcfg)
        arch = Section("Architectures")
        for (kind, hidden, act), tcfg in archs.items():
            s = summarize(build_model(tcfg), [32, 1, 28, 28])
            label = f"{kind} ({act}" + (f", hidden {list(hidden)}" if kind == "mlp" else "") + ")"
            arch.subsections.append(Section(label, code=format_summary(s)))
        if archs:
            report.sections.append(arch)
        if archs:
            report.why = why_different(store, cfg.question, list(archs.values()), summary_rows)
            report.sections.append(Section("Why our numbers may differ from the reference",
                                           [report.why]))
        keys = write_report(report, store, cfg.out)
        for name, key in keys.items():
            run.outputs[name] = key
        comparison = [{"question": cfg.question, **row} for r in results
                      for row in r.pop("comparison")]
        return run.finish({"groups": results, "summary": summary_rows,
                           "comparison": comparison})
