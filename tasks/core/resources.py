"""What a step needs to run: CPUs, memory, GPUs (a share of one, or whole ones), ``/dev/shm``,
scratch disk and a time limit, per question and step kind; and how long a whole flow run
may take (``flow_time_limit_s``).

Each question's plan holds its table (``tasks/q<N>/plan.py``: ``RESOURCES`` and the kind of
each of its tasks, ``STEP_KINDS``); the flow config carries it as ``resources``, so a run
overrides it like any key (``--set resources.train.gpus=0.5``). The same numbers are meant
for every place that asks: Ray's ``remote_options``, the docker launcher's limits and
device requests, and the Kubernetes job variables.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tasks.core.config import Config
from tasks.core.limits import parse_size

StepKind = Literal["fetch", "train", "evaluate", "report"]
KINDS: tuple[str, ...] = ("fetch", "train", "evaluate", "report")


class Resources(Config):
    """One step's needs. ``gpus`` below 1 is a share of one GPU (Ray packs such steps on one
    device); above 1 it must be a whole number."""

    cpus: float = Field(1.0, gt=0, description="CPU cores")
    memory: str = Field("4g", description="memory limit, e.g. 512m, 4g")
    gpus: float = Field(0.0, ge=0, description="GPUs: 0.25 = a quarter of one, 2 = two")
    shm: str = Field("1g", description="/dev/shm size (DataLoader workers)")
    time_limit_s: float | None = Field(6 * 3600.0, gt=0, description="seconds; none: no limit")
    scratch: str = Field("10g", description="scratch disk (/tmp: downloads, caches, "
                         "checkpoints before upload), e.g. 20g")

    @field_validator("memory", "shm", "scratch")
    @classmethod
    def _size(cls, v: str) -> str:
        parse_size(v, "a size")
        return v

    @field_validator("gpus")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"more than one GPU must be a whole number (got {v}); "
                             "a share (e.g. 0.5) is only possible below one")
        return v

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def shm_bytes(self) -> int:
        return parse_size(self.shm)

    @property
    def scratch_bytes(self) -> int:
        return parse_size(self.scratch)


class ResourceTable(Config):
    """A question's needs by step kind."""

    fetch: Resources = Resources(cpus=1, memory="2g", time_limit_s=3 * 3600)
    train: Resources = Resources()
    evaluate: Resources = Resources()
    report: Resources = Resources(cpus=1, memory="2g", scratch="2g", time_limit_s=3600)
    # The whole flow run, every step and wait included: the flow stops its steps past it
    # under every launcher (flows.fanout), and a Kubernetes Job gets it, plus a margin, as
    # activeDeadlineSeconds (flows.work_pools). A step gets what is left of it at most.
    flow_time_limit_s: float | None = Field(
        24 * 3600.0, gt=0, description="seconds a whole flow run may take; none: no limit")

    def for_kind(self, kind: str) -> Resources:
        if kind not in KINDS:
            raise ValueError(f"unknown step kind {kind!r}; use one of {', '.join(KINDS)}")
        return getattr(self, kind)


def resources_field(table: ResourceTable) -> Any:
    """A flow config's ``resources`` key, defaulting to the question's ``table``."""
    return Field(default_factory=lambda: table, description="what each step kind needs")


def parallel_field(what: str) -> Any:
    """A flow config's ``parallel`` key: how many ``what`` train at once on the thread
    pool."""
    return Field(1, ge=1, le=32, description=(
        f"{what} trained at once on the thread-pool runner, each in its own process with 1/N "
        "of the CPU threads (1: one after another; on Ray the resource table decides)"))


def on_cpu(table: ResourceTable) -> dict:
    """The override that takes every GPU out of ``table`` (a CPU profile)."""
    return {kind: {"gpus": 0} for kind in KINDS if table.for_kind(kind).gpus}
