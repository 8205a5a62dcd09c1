"""Every question's flow config and profiles, by flow name, and ``resolve_config`` (pure
data, no Prefect). It sits on top of the questions' plan modules (``tasks/q<N>/plan.py``),
which hold the configs, profiles and cell planning themselves.

A profile picks sizes, not code paths: ``smoke`` (generated data, tiny epochs, CPU) and
``full`` (the SPEC's hyperparameters on the real data). Users override any key with
``--set key=value`` (dotted for nested keys); unknown keys are rejected by name.
"""

from __future__ import annotations

from typing import Any

from tasks.core.config import Config, deep_merge, did_you_mean, validate
from tasks.core.errors import ConfigError
from tasks.q1 import plan as q1
from tasks.q2 import plan as q2
from tasks.q3 import plan as q3
from tasks.q4 import plan as q4

FLOW_CONFIGS: dict[str, type[Config]] = {
    "q1-mlp": q1.Q1MlpConfig, "q1-cnn": q1.Q1CnnConfig, "q2-transfer": q2.Q2TransferConfig,
    "q3-segmentation": q3.Q3SegmentationConfig, "q4-yolo": q4.Q4YoloConfig}
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    **q1.PROFILES, **q2.PROFILES, **q3.PROFILES, **q4.PROFILES}


def resolve_config(flow: str, profile: str, overrides: dict[str, Any] | None = None) -> Config:
    """Class defaults, then the profile, then the user's overrides, merged key by key;
    validated."""
    if flow not in FLOW_CONFIGS:
        raise ConfigError(f"unknown flow {flow!r}{did_you_mean(flow, FLOW_CONFIGS)}; known: "
                          f"{', '.join(sorted(FLOW_CONFIGS))}")
    profiles = PROFILES[flow]
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r} for {flow}"
                          f"{did_you_mean(profile, profiles)}; use one of: "
                          f"{', '.join(profiles)}")
    # nested tables (e.g. ``resources``) merge key by key: ``--set resources.train.gpus=0.5``
    # keeps the question's other numbers
    defaults = FLOW_CONFIGS[flow]().model_dump(mode="json")
    merged = deep_merge(deep_merge(defaults, profiles[profile]), overrides or {})
    return validate(FLOW_CONFIGS[flow], merged, what=f"{flow} ({profile} profile)")
