"""visionflows tasks: all ML and I/O code, independent of Prefect.

Run any task with ``python -m tasks <task-name> --config cfg.json [--store URI]``.

Layout (dependencies point down; ``tests/test_layout.py`` checks it):

- ``tasks.questions`` finds every question's descriptor (``tasks/q<N>/question.py`` and the
  ``visionflows.questions`` entry points); ``tasks.registry`` (task names), ``tasks.plans``
  (flow configs by name), ``tasks.comparers`` and ``tasks.catalog`` (what ``visionflows
  mirror`` fetches) sit on top and are built from the descriptors;
- one package per question, ``tasks.q1`` .. ``tasks.q4``: its descriptor (``question.py``),
  data fetch and generator, models, tasks, report, reference numbers and flow-level plan
  (``plan.py``); questions never import each other;
- shared pieces: ``tasks.ml`` (the training loop, metrics, plots, model summaries),
  ``tasks.inputs`` (the one downloader, the store's mirror index, the one weights
  resolver), ``tasks.reporting`` (report rendering, the final report);
- ``tasks.core``: errors, log, configs, the store, the task runtime, cache keys, limits,
  files and hashes, progress, champion promotion. It imports nothing above it.
"""

__version__ = "0.1.0"
