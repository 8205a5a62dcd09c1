"""Every question's flow config and profiles, by flow name, and ``resolve_config`` (pure
data, no Prefect), from the questions' descriptors (``tasks.registry.questions``); each
question's plan module (``tasks/q<N>/plan.py``) holds its configs, profiles and cell
planning.

A profile picks sizes, not code paths: ``smoke`` (generated data, tiny epochs, CPU) and
``full`` (the SPEC's hyperparameters on the real data). Users override any key with
``--set key=value`` (dotted for nested keys); unknown keys are rejected by name.
"""

from __future__ import annotations

from typing import Any

from tasks.core.config import Config, deep_merge, did_you_mean, validate
from tasks.core.descriptor import load
from tasks.core.errors import ConfigError
from tasks.questions import question_flow, question_flows


def flow_configs() -> dict[str, type[Config]]:
    """Flow name -> its config class."""
    return {name: f.config_class() for name, f in question_flows().items()}


def profiles() -> dict[str, dict[str, dict[str, Any]]]:
    """Flow name -> ``{profile: overrides}``."""
    return {name: f.profile_table() for name, f in question_flows().items()}


def step_kinds(flow: str) -> dict[str, str]:
    """``{task name: step kind}`` of flow ``flow`` (its resource table's rows)."""
    return load(question_flow(flow).step_kinds)


def __getattr__(name: str) -> Any:
    if name == "FLOW_CONFIGS":
        return flow_configs()
    if name == "PROFILES":
        return profiles()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_config(flow: str, profile: str, overrides: dict[str, Any] | None = None) -> Config:
    """Class defaults, then the profile, then the user's overrides, merged key by key;
    validated."""
    flows = question_flows()
    if flow not in flows:
        raise ConfigError(f"unknown flow {flow!r}{did_you_mean(flow, flows)}; known: "
                          f"{', '.join(sorted(flows))}")
    table = flows[flow].profile_table()
    if profile not in table:
        raise ConfigError(f"unknown profile {profile!r} for {flow}"
                          f"{did_you_mean(profile, table)}; use one of: "
                          f"{', '.join(table)}")
    cls = flows[flow].config_class()
    # nested tables (e.g. ``resources``) merge key by key: ``--set resources.train.gpus=0.5``
    # keeps the question's other numbers
    defaults = cls().model_dump(mode="json")
    merged = deep_merge(deep_merge(defaults, table[profile]), overrides or {})
    return validate(cls, merged, what=f"{flow} ({profile} profile)")
