"""Flow ``q2-transfer``: weights -> fetch STL10 -> explore -> per model: train head, grid +
fine-tune -> report."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.common import Progress, champion_question, new_run_id, publish, remember_flow_run
from flows.compare import finish_run, plan_comparison
from flows.fanout import Steps
from tasks.core.store import join, open_store
from tasks.plans import resolve_config
from tasks.q2 import plan
from tasks.q2.plan import Q2TransferConfig

FLOW = "q2-transfer"


@flow(name=FLOW, log_prints=True)
def q2_transfer(profile: str = "smoke", store: str | None = None,
                overrides: dict[str, Any] | None = None, launcher: str = "local",
                run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q2 on STL10: ResNet18 and VGG16, frozen ImageNet backbones, new heads, fine-tuning."""
    remember_flow_run()
    log = get_run_logger()
    cfg: Q2TransferConfig = resolve_config(FLOW, profile, overrides)  # type: ignore[assignment]
    st = open_store(store)
    run_id = run_id or new_run_id()
    base = join("runs", FLOW, run_id)
    steps = Steps(cfg, st.uri, launcher, plan.STEP_KINDS, refresh=refresh)
    log.info("q2-transfer run %s (profile %s, pretrained %s) -> %s", run_id, profile,
             cfg.pretrained, st.url(base))
    progress = Progress(3 + 2 * len(cfg.models) + 1, f"q2-transfer {run_id}")

    # the weights first: a full run without them stops before a 2.6 GB download
    weights = steps.run("weights", "transfer.weights",
                        plan.weights_config(cfg, join(base, "weights")))
    progress.advance()
    data = steps.run("fetch-stl10", "stl10.fetch", cfg.data.model_dump())
    progress.advance()
    explore = steps.submit("explore", "transfer.explore", plan.explore_config(
        cfg, join(base, "explore"), data["prefix"]))
    # the models are independent: every training at once (as the runner allows), then each
    # model's fine-tuning after its own training
    training = {arch: steps.submit(f"train-{arch}", "transfer.train", plan.train_config(
        cfg, arch, join(base, f"train-{arch}"), data["prefix"]),
        slot=f"{FLOW}/train-{arch}") for arch in cfg.models}
    tuning = {arch: steps.submit(f"finetune-{arch}", "transfer.finetune", plan.finetune_config(
        cfg, join(base, f"finetune-{arch}"), train=""),  # "train": from its training, below
        slot=f"{FLOW}/finetune-{arch}", upstream={"train": training[arch]})
        for arch in cfg.models}
    explore = explore.result()
    progress.advance()
    trained, tuned = {}, {}
    for arch in cfg.models:
        trained[arch] = training[arch].result()
        progress.advance()
    for arch in cfg.models:
        tuned[arch] = tuning[arch].result()
        progress.advance()
    weights_note = ("ImageNet weights (torchvision IMAGENET1K_V1)" if cfg.pretrained else
                    "**random initialisation (pretrained: false)**")
    planned = plan_comparison(FLOW, profile, run_id, st)
    report = steps.run("report", "transfer.report", {
        "out": join("reports", FLOW, run_id), "profile": profile, "run_id": run_id,
        "comparison": planned,
        "title": "Q2: transfer learning on STL10 with ResNet18 and VGG16",
        "data": data["prefix"], "explore": explore["prefix"], "weights": weights["prefix"],
        "models": [{"arch": a, "train": trained[a]["prefix"], "finetune": tuned[a]["prefix"]}
                   for a in cfg.models],
        "intro": [
            f"Backbones: {weights_note}, every layer frozen and run in eval mode (BatchNorm "
            "keeps its stored statistics instead of batch ones), features computed without "
            "autograd. New head: "
            f"Linear(-> 10), {cfg.optimizer} (lr {cfg.learning_rate}), batch {cfg.batch_size}, "
            f"{cfg.epochs} epochs, images at {cfg.image_size} px, horizontal flips "
            f"{'on' if cfg.augment else 'off'}, seed {cfg.seed}. Fine-tuning: every layer "
            f"unfrozen, {cfg.optimizer} (lr {cfg.finetune_lr}), {cfg.finetune_epochs} epochs "
            f"on the misclassified images of a {cfg.grid_size}-image grid (seed "
            f"{cfg.grid_seed}). The reference's optimiser and learning rate are not printed; "
            "these are our choices.",
            f"Dataset: {data['prefix']} ({data['inputs'].get('source', '?')})."]})
    progress.advance()
    rows = []
    for arch in cfg.models:
        m, f = trained[arch]["metrics"], tuned[arch]["metrics"]
        rows.append({"model": arch, "test_accuracy": round(m["test/accuracy"], 4),
                     "best_test_accuracy": round(m["best/test/accuracy"], 4),
                     "trainable_params": m["trainable_params"],
                     "total_params_imagenet": m["total_params_imagenet"],
                     "features_time_s": round(m["features/cache_time_s"], 2),
                     "head_time_s": round(m["train/time_s"], 2),
                     "misclassified": f["misclassified"], "fixed": f["fixed"]})
    comparison = report["metrics"]
    best = max(cfg.models, key=lambda a: trained[a]["metrics"]["test/accuracy"])
    groups = [{"key": "model", "select_by": "test/accuracy", "best": best,
               "best_score": trained[best]["metrics"]["test/accuracy"]}]
    summary_md = "\n".join(
        f"- {r['model']}: test accuracy {r['test_accuracy']:.4f}, fine-tuning fixed "
        f"{r['fixed']} of {r['misclassified']}" for r in rows)
    publish(FLOW, run_id, rows, report["outputs"], st, summary_md)
    promotion = steps.run("promote", "model.promote", {
        "question": champion_question(FLOW, profile), "run_id": run_id,
        "metric": "test/accuracy", "value": trained[best]["metrics"]["test/accuracy"],
        "model": trained[best]["prefix"], "profile": profile, "out": join(base, "promote")})
    result = {
        "run_id": run_id, "profile": profile, "store": st.uri,
        "config": cfg.model_dump(mode="json"), "data": data["prefix"],
        "weights": weights["metrics"]["weights"], "explore": explore["prefix"],
        "train": {a: m["prefix"] for a, m in trained.items()},
        "finetune": {a: m["prefix"] for a, m in tuned.items()},
        "test_accuracy_per_epoch": {a: m["metrics"]["test/accuracy_per_epoch"]
                                    for a, m in trained.items()},
        "finetune_result": {a: {k: m["metrics"][k] for k in (
            "misclassified", "fixed", "broken", "finetune/accuracy_per_epoch",
            "test/accuracy_after")} for a, m in tuned.items()},
        "comparison": comparison, "report": report["outputs"], "groups": groups,
        "champion": {"best_cell": best, "metric": "test/accuracy",
                     "value": trained[best]["metrics"]["test/accuracy"],
                     **promotion["metrics"]},
        "metrics": rows, "task_runner": steps.describe(),
    }
    done = [weights, data, explore, report, promotion, *trained.values(), *tuned.values()]
    return finish_run(FLOW, cfg, run_id, result, done, st, launcher, planned)
