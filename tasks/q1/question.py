"""Q1's descriptor: the ``q1-mlp`` and ``q1-cnn`` flows on Fashion-MNIST (tasks.core.descriptor)."""

from __future__ import annotations

from tasks.core.descriptor import Nightly, Question, QuestionFlow

# Every nightly question run fails when it regresses against its champion.
REGRESSION_SWITCH = {"fail_on_regression": True}

QUESTION = Question(
    name="q1",
    tasks={
        "fashion-mnist.fetch": "tasks.q1.data:fetch",
        "classifier.train": "tasks.q1.train:train",
        "classifier.evaluate": "tasks.q1.train:evaluate",
        "classifier.report": "tasks.q1.report:render",
    },
    cached_tasks=frozenset({"classifier.train", "classifier.evaluate"}),
    flows=(
        QuestionFlow(
            name="q1-mlp", title="Q1-MLP: fully connected classifier on Fashion-MNIST",
            flow="flows.q1_mlp:q1_mlp", config="tasks.q1.plan:Q1MlpConfig",
            profiles="tasks.q1.plan:PROFILES", comparer="tasks.q1.comparer:MLP",
            resources="tasks.q1.plan:RESOURCES", step_kinds="tasks.q1.plan:STEP_KINDS",
            nightly=Nightly("0 1 * * *", "Q1-MLP sweeps on Fashion-MNIST", REGRESSION_SWITCH),
            mirror="tasks.q1.plan:mirror_entries", reference="tasks.q1.reference:REFERENCE"),
        QuestionFlow(
            name="q1-cnn", title="Q1-CNN: convolutional classifiers on Fashion-MNIST",
            flow="flows.q1_cnn:q1_cnn", config="tasks.q1.plan:Q1CnnConfig",
            profiles="tasks.q1.plan:PROFILES", comparer="tasks.q1.comparer:CNN",
            resources="tasks.q1.plan:RESOURCES", step_kinds="tasks.q1.plan:STEP_KINDS",
            nightly=Nightly("30 1 * * *",
                            "Q1-CNN pooling/BN and dropout sweep on Fashion-MNIST",
                            REGRESSION_SWITCH),
            mirror="tasks.q1.plan:mirror_entries", reference="tasks.q1.reference:REFERENCE"),
    ),
)
