"""Q4's descriptor: the ``q4-yolo`` flow, YOLOv5s and YOLOv5x on the Roboflow export
(tasks.core.descriptor)."""

from __future__ import annotations

from tasks.core.descriptor import Nightly, Question, QuestionFlow

QUESTION = Question(
    name="q4",
    tasks={
        "yolo-export.fetch": "tasks.q4.data:fetch",
        "yolo.train": "tasks.q4.yolo:train",
        "yolo.evaluate": "tasks.q4.yolo:evaluate",
        "yolo.report": "tasks.q4.report:render",
    },
    cached_tasks=frozenset({"yolo.train", "yolo.evaluate"}),
    flows=(
        QuestionFlow(
            name="q4-yolo", title="Q4: object detection with YOLOv5s and YOLOv5x",
            flow="flows.q4_yolo:q4_yolo", config="tasks.q4.plan:Q4YoloConfig",
            profiles="tasks.q4.plan:PROFILES", comparer="tasks.q4.comparer:COMPARER",
            resources="tasks.q4.plan:RESOURCES", step_kinds="tasks.q4.plan:STEP_KINDS",
            nightly=Nightly("30 3 * * *", "Q4 YOLOv5s vs YOLOv5x detection (ultralytics)",
                            {"fail_on_regression": True}),
            # the Roboflow export is the user's own: `mirror --export-url URL`
            mirror="tasks.q4.plan:mirror_entries", mirror_export=True,
            reference="tasks.q4.reference:REFERENCE"),
    ),
)
