"""visionflows tasks: all ML and I/O code, independent of Prefect.

Run any task with ``python -m tasks <task-name> --config cfg.json [--store URI]``.
"""

__version__ = "0.1.0"
