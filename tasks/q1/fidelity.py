"""The table of docs/fidelity.md: every Q1 cell of a run over its seeds beside the original
report's numbers, read from the stored step manifests (a run still in progress gives the
cells that have finished and lists the rest as pending).

    python -m tasks.q1.fidelity --store file:///work/real/store --flow q1-cnn [--run-id ID]

Each row: the cell, dev and test accuracy as mean ± std over its seeds (n) with every seed's
value, the 95 % t-interval of the test mean, the reference number where the report printed
one and where it lies against our interval, and the cell's wall time (its trainings' and
evaluations' durations, summed over seeds). The statistics are the reports' own
(``tasks.reporting.stats``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from typing import Any

from tasks.core.errors import ConfigError
from tasks.core.layout import (
    flow_manifest_key,
    flow_runs_prefix,
    run_ids,
    run_prefix,
    step_prefix,
)
from tasks.core.runtime import find_manifest
from tasks.core.store import Store, join, open_store
from tasks.q1.plan import POOLED_MODEL, q1_cnn_cells, q1_mlp_cells
from tasks.q1.reference import REFERENCE
from tasks.reporting.stats import interval_text, t_interval

SEED = re.compile(r"-seed(\d+)$")
CELLS = {"q1-cnn": q1_cnn_cells, "q1-mlp": q1_mlp_cells}


def latest_run(store: Store, flow: str) -> str:
    """The newest run id of ``flow`` that has any stored step (finished or not)."""
    ids = run_ids(store.list(flow_runs_prefix(flow)), flow)
    if not ids:
        raise ConfigError(f"no {flow} run in {store.uri}: nothing to tabulate")
    return ids[-1]


def cell_rows(store: Store, flow: str, run_id: str) -> list[dict[str, Any]]:
    """One row per planned cell (seeds grouped), in plan order: the cells of the run's own
    config once it has finished (its flow manifest holds it), else of the ``full`` profile
    (a run in progress: its pending cells too)."""
    # the question's own plan (tasks.plans sits above the questions: no import from here)
    from tasks.core.config import deep_merge, validate
    from tasks.q1.plan import PROFILES, Q1CnnConfig, Q1MlpConfig

    cls = {"q1-mlp": Q1MlpConfig, "q1-cnn": Q1CnnConfig}[flow]
    key = flow_manifest_key(flow, run_id)
    if store.exists(key):
        planned = validate(cls, store.get_json(key)["config"], what=f"{flow} run {run_id}")
    else:
        planned = validate(cls, deep_merge(cls().model_dump(mode="json"),
                                           PROFILES[flow]["full"]), what=f"{flow} (full profile)")
    cells, groups = CELLS[flow](planned)
    base = run_prefix(flow, run_id)
    names: dict[str, str] = {}
    for g in groups:  # a cell shared by two sweeps: both names
        for name, _, cid in g["runs"]:
            names[cid] = f"{names[cid]} = {name}" if cid in names else name
    rows = []
    for cid in [c for c in cells if not SEED.search(c)]:
        seeds = [cid, *[c for c in cells if SEED.sub("", c) == cid and c != cid]]
        done = []  # (training, its evaluation or None while that is still to run)
        for sid in seeds:
            tr = find_manifest(store, join(base, f"train-{sid}"))
            if tr is not None:
                done.append((tr, find_manifest(store, join(base, f"eval-{sid}"))))
        row: dict[str, Any] = {"cell": cid, "name": names.get(cid, cid), "planned": len(seeds),
                               "n": len(done), "evaluated": sum(e is not None for _, e in done),
                               "seeds": [int(t.config.get("seed", 0)) for t, _ in done]}
        for key in ("dev/accuracy", "test/accuracy"):
            # the evaluation's number; before it ran, the training's last epoch (the same
            # model on the same split)
            merged = [{**t.metrics, **(e.metrics if e else {})} for t, e in done]
            values = [float(m[key]) for m in merged if key in m]
            row[key] = {"values": values, "mean": statistics.fmean(values) if values else None,
                        "std": statistics.stdev(values) if len(values) > 1 else None,
                        "interval": t_interval(values)}
        row["wall_s"] = sum(t.duration_s + (e.duration_s if e else 0.0) for t, e in done)
        row["train_s"] = sum(float(t.metrics.get("train/time_s", 0.0)) for t, _ in done)
        rows.append(row)
    return rows


def _pct(st: dict[str, Any]) -> str:
    if st["mean"] is None:
        return "pending"
    seeds = ", ".join(f"{100 * v:.2f}" for v in st["values"])
    if st["std"] is None:
        return f"{100 * st['mean']:.2f} (one run: {seeds})"
    return f"{100 * st['mean']:.2f} ± {100 * st['std']:.2f} ({seeds})"


def _reference(flow: str, cell: str) -> dict[str, float]:
    """The reference's printed numbers for this cell (Q1-CNN (e) at dropout 0.4 only)."""
    ref = REFERENCE.get(flow, {}).get("dropout")
    if ref and cell in {f"{model}-d{ref['best']:g}" for model in POOLED_MODEL.values()}:
        return {k: v for k, v in ref.items() if "/" in k}
    return {}


def markdown(flow: str, run_id: str, rows: list[dict[str, Any]]) -> str:
    """The docs table for one run."""
    out = [f"Run `{run_id}` ({flow}, profile full): accuracy in %, mean ± std over the "
           "seeds (each seed's value); 95 % t-interval of the test mean.", "",
           "| cell | seeds | dev acc | test acc | test 95 % interval | reference "
           "(dev / test) | where the reference lies | wall time (train + eval steps) |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = r["test/accuracy"]["interval"]
        span = (f"[{100 * ci['lo']:.2f}, {100 * ci['hi']:.2f}]" if ci else
                "one run: no interval" if r["n"] == 1 else "—")
        ref = _reference(flow, r["cell"])
        refs = " / ".join(f"{100 * v:.2f}" for v in ref.values()) or "—"
        where = "; ".join(
            f"{k.split('/')[0]}: " + interval_text(v, r[k]["interval"], percent=True)
            for k, v in ref.items()) or "—"
        if r["n"] == 0:
            where = "pending"
        unevaluated = (f" ({r['n'] - r['evaluated']} not evaluated yet: test from its "
                       "training's last epoch)" if r["evaluated"] < r["n"] else "")
        dev = _pct(r["dev/accuracy"]) if r["dev/accuracy"]["values"] or not r["n"] else "—"
        out.append(f"| {r['name']} (`{r['cell']}`) | {r['n']} of {r['planned']}{unevaluated} | "
                   f"{dev} | "
                   f"{_pct(r['test/accuracy'])} | {span} | {refs} | {where} | "
                   f"{r['wall_s'] / 60:.1f} min |")
    total = sum(r["wall_s"] for r in rows)
    pending = [r["cell"] for r in rows if r["n"] < r["planned"]]
    out += ["", f"Steps' wall time, all cells: {total / 60:.1f} min."
            + (f" Pending (not all seeds stored yet): {', '.join(pending)}." if pending else "")]
    return "\n".join(out)


def split_spread(store: Store, train_prefix: str, draws: int = 10_000, seed: int = 0
                 ) -> dict[str, Any]:
    """How far the test number moves with the choice of test images alone: a trained
    Q1-CNN cell's last model on all 10,000 test images, on our dev / test split
    (``split_seed``) and on ``draws`` random splits of the same sizes (no training)."""
    import tempfile

    import torch

    from tasks.core.runtime import read_verified
    from tasks.ml.loop import evaluate, make_loss
    from tasks.q1.train import (
        NUM_CLASSES,
        TrainConfig,
        build_model,
        load_splits,
        make_preprocess,
        split_indices,
    )

    tr = read_verified(store, train_prefix)
    tcfg = TrainConfig.model_validate(tr.config)
    if tcfg.dev_fraction <= 0:
        raise ConfigError(f"{train_prefix} has no dev split (dev_fraction 0): nothing to "
                          "resample; use a Q1-CNN cell")
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = torch.load(store.get_file(tr.output_key("last"), f"{tmp}/last.pt"),
                          map_location=cpu, weights_only=False)
    model = build_model(tcfg)
    model.load_state_dict(ckpt["model"])
    full = load_splits(tcfg.model_copy(update={"dev_fraction": 0.0}), store, cpu)["test"]
    ev = evaluate(model, full, batch_size=1000, loss_fn=make_loss(tcfg.loss, NUM_CLASSES),
                  preprocess=make_preprocess(tcfg), return_predictions=True)
    correct = (ev["predictions"] == full.y.cpu()).double()
    n = len(correct)
    dev_idx, test_idx = split_indices(n, tcfg.dev_fraction, tcfg.split_seed)
    gen = torch.Generator().manual_seed(seed)
    n_dev = len(dev_idx)
    accs = torch.stack([correct[torch.randperm(n, generator=gen)[n_dev:]].mean()
                        for _ in range(draws)])
    ours = float(correct[test_idx].mean())
    return {"cell": train_prefix, "epoch": int(ckpt["epoch"]), "all": float(correct.mean()),
            "dev": float(correct[dev_idx].mean()), "test": ours, "n_test": len(test_idx),
            "draws": draws, "random_mean": float(accs.mean()), "random_std": float(accs.std()),
            "below_ours": float((accs < ours).double().mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tasks.q1.fidelity", description=__doc__
                                 .split("\n\n")[0])
    ap.add_argument("--store", required=True, help="store URI, e.g. file:///work/real/store")
    ap.add_argument("--flow", choices=sorted(CELLS), required=True)
    ap.add_argument("--run-id", default=None, help="default: the newest run of the flow")
    ap.add_argument("--splits", default=None, metavar="CELL", help="instead: how the test "
                    "accuracy of this trained Q1-CNN cell (e.g. cnn_pool_bn-d0.4) moves over "
                    "random dev/test splits of the 10,000 test images")
    args = ap.parse_args(argv)
    store = open_store(args.store)
    if args.splits:
        run_id = args.run_id or latest_run(store, args.flow)
        r = split_spread(store, step_prefix(args.flow, run_id, f"train-{args.splits}"))
        print(f"{r['cell']} (epoch {r['epoch']}): all 10,000 test images "
              f"{100 * r['all']:.2f} %; our split: dev {100 * r['dev']:.2f} %, test "
              f"{100 * r['test']:.2f} % ({r['n_test']:,} images); {r['draws']:,} random "
              f"splits: test {100 * r['random_mean']:.2f} ± {100 * r['random_std']:.2f} %, "
              f"ours above {100 * r['below_ours']:.0f} % of them")
        return 0
    try:
        run_id = args.run_id or latest_run(store, args.flow)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(args.flow, run_id, cell_rows(store, args.flow, run_id)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
