"""``model.promote``: champion/challenger promotion of a question's best model.

Every candidate is recorded under ``models/<question>/candidates/<run-id>.json`` with its
metric, run id and model location, so the history (and its trend) survives. The champion
pointer ``models/<question>/champion.json`` is replaced only when the candidate is at least
as good (ties promote: the newer model wins), through a compare-and-swap write
(``Store.put_if``), so two runs finishing at once cannot both win against a stale champion.
A champion file that cannot be parsed stops the promotion with a clear error and is left
untouched for a person to inspect.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from tasks.core.config import Config
from tasks.core.errors import DataError, StoreError
from tasks.core.runtime import Manifest, TaskRun, read_verified
from tasks.core.store import Store, join

MAX_ATTEMPTS = 10


class PromoteConfig(Config):
    question: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    run_id: str
    metric: str = Field(description="primary metric name, e.g. test/accuracy")
    value: float
    mode: Literal["max", "min"] = "max"
    model: str = Field(description="store prefix of the candidate model's training run")
    profile: str = "smoke"
    out: str


class RegressionOptions(Config):
    """The regression switch every question with a champion shares (a flow-config mixin).

    After promotion a run is compared with the champion it was measured against; with
    ``fail_on_regression`` a run worse than that champion by more than
    ``regression_tolerance`` (in the primary metric's units) ends in a Failed state, after
    everything is written.
    """

    fail_on_regression: bool = Field(False, description="fail the run when it is worse than "
                                     "the champion by more than regression_tolerance")
    regression_tolerance: float = Field(0.0, ge=0.0, description="how much worse than the "
                                        "champion (primary metric units, e.g. 0.01 = one "
                                        "accuracy point) still passes")


def champion_question(flow: str, profile: str) -> str:
    """Champions are kept per profile: ``<flow>`` for full runs, ``<flow>-smoke`` for smoke."""
    return flow if profile == "full" else f"{flow}-{profile}"


def is_regression(value: float, champion: float, mode: str, tolerance: float = 0.0) -> bool:
    """Whether ``value`` is worse than ``champion`` by more than ``tolerance``."""
    return value < champion - tolerance if mode == "max" else value > champion + tolerance


def champion_key(question: str) -> str:
    return join("models", question, "champion.json")


def candidate_key(question: str, run_id: str) -> str:
    return join("models", question, "candidates", f"{run_id}.json")


def read_champion(store: Store, question: str) -> tuple[dict | None, str | None]:
    """The champion record and its version token; a clear error if it is corrupt."""
    got = store.get_versioned(champion_key(question))
    if got is None:
        return None, None
    data, token = got
    try:
        champ = json.loads(data)
        float(champ["value"])
        champ["run_id"], champ["metric"]  # noqa: B018 - required keys
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{store.url(champion_key(question))} is corrupt ({type(exc).__name__}: {exc}); "
            "it was left untouched: fix it by hand or delete it to let the next candidate "
            "become champion") from None
    return champ, token


def history(store: Store, question: str) -> list[dict]:
    """Every recorded candidate of ``question``, oldest first."""
    prefix = join("models", question, "candidates")
    out = [store.get_json(k) for k in store.list(prefix) if k.endswith(".json")]
    return sorted(out, key=lambda c: c.get("recorded_at", ""))


def better_or_equal(value: float, than: float, mode: str) -> bool:
    return value >= than if mode == "max" else value <= than


def promote(cfg: PromoteConfig, store: Store) -> Manifest:
    """Record the candidate, then promote it if it is at least as good as the champion.

    The candidate's training result is checked first: a damaged model is never promoted.
    """
    read_verified(store, cfg.model)
    with TaskRun("model.promote", cfg, store, cfg.out) as run:
        record = {"question": cfg.question, "run_id": cfg.run_id, "metric": cfg.metric,
                  "value": cfg.value, "mode": cfg.mode, "model": cfg.model,
                  "profile": cfg.profile, "recorded_at": datetime.now(UTC).isoformat()}
        store.put_json(candidate_key(cfg.question, cfg.run_id), {**record, "status": "candidate"})
        for _attempt in range(MAX_ATTEMPTS):
            champ, token = read_champion(store, cfg.question)
            if champ is not None and champ.get("metric") != cfg.metric:
                raise DataError(f"champion of {cfg.question} is ranked by {champ['metric']!r}, "
                                f"the candidate by {cfg.metric!r}: they cannot be compared")
            if champ is not None and not better_or_equal(cfg.value, float(champ["value"]),
                                                         cfg.mode):
                decision = "kept as candidate"
                break
            new = {**record, "previous": champ and {k: champ[k] for k in
                                                    ("run_id", "value", "model")}}
            if store.put_if(champion_key(cfg.question), json.dumps(new, indent=2).encode(),
                            token):
                decision = "promoted"
                break
            run.log.info("champion of %s changed while promoting; re-reading", cfg.question)
        else:
            raise StoreError(f"could not promote {cfg.run_id}: the champion of {cfg.question} "
                             f"kept changing ({MAX_ATTEMPTS} attempts)")
        run.outputs["candidate"] = candidate_key(cfg.question, cfg.run_id)
        store.put_json(run.outputs["candidate"], {**record, "status": decision})
        run.log.info("%s %s: %s=%.4f (champion %s)", cfg.question, decision, cfg.metric,
                     cfg.value, "none" if champ is None else f"{champ['value']:.4f}")
        return run.finish({"decision": decision, "value": cfg.value,
                           "champion_value": None if champ is None else champ["value"],
                           "champion_run_id": None if champ is None else champ["run_id"]})
