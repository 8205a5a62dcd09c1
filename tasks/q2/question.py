"""Q2's descriptor: the ``q2-transfer`` flow, ResNet18 and VGG16 on STL10
(tasks.core.descriptor)."""

from __future__ import annotations

from tasks.core.descriptor import Nightly, Question, QuestionFlow

QUESTION = Question(
    name="q2",
    tasks={
        "stl10.fetch": "tasks.q2.data:fetch",
        "transfer.weights": "tasks.q2.transfer:weights",
        "transfer.explore": "tasks.q2.transfer:explore",
        "transfer.train": "tasks.q2.transfer:train",
        "transfer.finetune": "tasks.q2.transfer:finetune",
        "transfer.report": "tasks.q2.report:render",
    },
    cached_tasks=frozenset({"transfer.train", "transfer.finetune"}),
    flows=(
        QuestionFlow(
            name="q2-transfer", title="Q2: transfer learning on STL10 (ResNet18, VGG16)",
            flow="flows.q2_transfer:q2_transfer", config="tasks.q2.plan:Q2TransferConfig",
            profiles="tasks.q2.plan:PROFILES", comparer="tasks.q2.comparer:COMPARER",
            resources="tasks.q2.plan:RESOURCES", step_kinds="tasks.q2.plan:STEP_KINDS",
            nightly=Nightly("0 2 * * *", "Q2 transfer learning on STL10 (ResNet18, VGG16)",
                            {"fail_on_regression": True}),
            mirror="tasks.q2.plan:mirror_entries", reference="tasks.q2.reference:REFERENCE"),
    ),
)
