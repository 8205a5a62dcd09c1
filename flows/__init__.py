"""visionflows flows: Prefect orchestration only (which tasks, in what order, with what configs).

One flow module per question (``q1_mlp``, ``q1_cnn`` through ``classifier_sweep``,
``q2_transfer``, ``q3_segmentation``, ``q4_yolo``) and the final ``report``; each says
only which steps run, in what order, with what configs, through ``question_run`` (the
sequence every question shares: preamble, report with the planned comparison, publish,
promote, result, ``finish_run``); ``registry`` names them (from the questions'
descriptors) for the ``cli`` and the ``deployments``; ``common`` runs one task under Prefect
(cache, retries, progress, artifacts); ``fanout`` submits a flow's steps to its task runner
with the question's resource table; ``runners`` picks that runner (Prefect's thread pool, or
Ray through prefect-ray); ``launchers`` run a task in this process, a child process or a
container.
"""
