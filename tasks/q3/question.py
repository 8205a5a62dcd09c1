"""Q3's descriptor: the ``q3-segmentation`` flow, DeepLabV3 on the given images
(tasks.core.descriptor). Q3 keeps no champion: a run is compared with the previous one."""

from __future__ import annotations

from tasks.core.descriptor import Nightly, Question, QuestionFlow

QUESTION = Question(
    name="q3",
    tasks={
        "images.ingest": "tasks.q3.segment:ingest",
        "segment.images": "tasks.q3.segment:segment",
        "segment.report": "tasks.q3.report:render",
    },
    flows=(
        QuestionFlow(
            name="q3-segmentation", title="Q3: semantic segmentation with DeepLabV3",
            flow="flows.q3_segmentation:q3_segmentation",
            config="tasks.q3.plan:Q3SegmentationConfig", profiles="tasks.q3.plan:PROFILES",
            comparer="tasks.q3.comparer:COMPARER", resources="tasks.q3.plan:RESOURCES",
            step_kinds="tasks.q3.plan:STEP_KINDS",
            nightly=Nightly("0 3 * * *", "Q3 DeepLabV3 segmentation of the given images"),
            mirror="tasks.q3.plan:mirror_entries", keeps_champion=False),
    ),
)
