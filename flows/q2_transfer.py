"""Flow ``q2-transfer``: weights -> fetch STL10 -> explore -> per model: train head, grid +
fine-tune -> report -> publish -> promote."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Progress
from flows.question_run import QuestionRun
from tasks.q2 import plan

FLOW = "q2-transfer"


@flow(name=FLOW, log_prints=True)
def q2_transfer(profile: str = "smoke", store: str | None = None,
                overrides: dict[str, Any] | None = None, launcher: str = "local",
                run_id: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Q2 on STL10: ResNet18 and VGG16, frozen ImageNet backbones, new heads, fine-tuning."""
    run = QuestionRun.start(FLOW, profile, store, overrides, launcher, run_id, refresh,
                            describe=lambda c: f"pretrained {c.pretrained}")
    cfg: plan.Q2TransferConfig = run.cfg
    steps = run.steps
    progress = Progress(3 + 2 * len(cfg.models) + 1, f"{FLOW} {run.run_id}")

    # the weights first: a full run without them stops before a 2.6 GB download
    weights = steps.run("weights", "transfer.weights",
                        plan.weights_config(cfg, run.at("weights")))
    progress.advance()
    data = steps.run("fetch-stl10", "stl10.fetch", cfg.data.model_dump())
    progress.advance()
    explore = steps.submit("explore", "transfer.explore", plan.explore_config(
        cfg, run.at("explore"), data["prefix"]))
    # the models are independent: every training at once (as the runner allows), then each
    # model's fine-tuning after its own training
    training = {arch: steps.submit(f"train-{arch}", "transfer.train", plan.train_config(
        cfg, arch, run.at(f"train-{arch}"), data["prefix"]),
        slot=f"{FLOW}/train-{arch}") for arch in cfg.models}
    tuning = {arch: steps.submit(f"finetune-{arch}", "transfer.finetune", plan.finetune_config(
        cfg, run.at(f"finetune-{arch}"), train=""),  # "train": from its training, below
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
    report = run.report("transfer.report", {
        "title": run.title, "data": data["prefix"], "explore": explore["prefix"],
        "weights": weights["prefix"],
        "models": [{"arch": a, "train": trained[a]["prefix"], "finetune": tuned[a]["prefix"]}
                   for a in cfg.models],
        "intro": plan.report_intro(cfg, data)})
    progress.advance()
    rows = plan.summary_rows(cfg, trained, tuned)
    best = max(cfg.models, key=lambda a: trained[a]["metrics"][plan.PRIMARY])
    score = trained[best]["metrics"][plan.PRIMARY]
    run.publish(rows, plan.summary_md(rows))
    promotion, champion = run.promote(plan.PRIMARY, score, trained[best]["prefix"], best)
    return run.finish({
        "data": data["prefix"], "weights": weights["metrics"]["weights"],
        "explore": explore["prefix"],
        "train": {a: m["prefix"] for a, m in trained.items()},
        "finetune": {a: m["prefix"] for a, m in tuned.items()},
        "test_accuracy_per_epoch": {a: m["metrics"]["test/accuracy_per_epoch"]
                                    for a, m in trained.items()},
        "finetune_result": {a: {k: m["metrics"][k] for k in plan.FINETUNE_KEYS}
                            for a, m in tuned.items()},
        "comparison": report["metrics"],
        "groups": [{"key": "model", "select_by": plan.PRIMARY, "best": best,
                    "best_score": score}],
        "champion": champion, "metrics": rows,
    }, [weights, data, explore, report, promotion, *trained.values(), *tuned.values()])
