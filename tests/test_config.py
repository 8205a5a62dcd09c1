from __future__ import annotations

import pytest

from tasks.config import config_hash, deep_merge, parse_sets, validate
from tasks.errors import ConfigError
from tasks.experiments import PROFILES, q1_mlp_cells, resolve_config


def test_parse_sets_nested_and_json():
    assert parse_sets(["epochs=2", "data.mirror=/x y", "batch_sizes=[32,256]", "x=true",
                       "name=abc"]) == {
        "epochs": 2, "data": {"mirror": "/x y"}, "batch_sizes": [32, 256], "x": True,
        "name": "abc"}


@pytest.mark.parametrize("item", ["noequals", "=1", "a..b=1"])
def test_parse_sets_rejects(item):
    with pytest.raises(ConfigError):
        parse_sets([item])


def test_deep_merge_keeps_base():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    out = deep_merge(base, {"a": {"b": 5}, "d": [2]})
    assert out == {"a": {"b": 5, "c": 2}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


@pytest.mark.parametrize("flow", sorted(PROFILES))
@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_every_profile_composes(flow, profile):
    cfg = resolve_config(flow, profile)
    assert cfg.model_dump()  # validated and frozen
    with pytest.raises(Exception):  # noqa: B017 - pydantic frozen error
        cfg.seed = 5


@pytest.mark.parametrize("overrides, message", [
    ({"batch_sizes": [0, 64]}, "batch_sizes"),
    ({"activations": ["relu", "swish"]}, "'relu', 'tanh' or 'sigmoid'"),
    ({"epochs": 0}, "epochs: Input should be greater than 0"),
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"data": {"source": "ftp"}}, "data.source"),
    ({"losses": []}, "losses"),
])
def test_bad_overrides_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match="invalid q1-mlp") as exc:
        resolve_config("q1-mlp", "smoke", overrides)
    assert message in str(exc.value)


def test_unknown_profile_and_flow():
    with pytest.raises(ConfigError, match="use one of: smoke, full"):
        resolve_config("q1-mlp", "huge")
    with pytest.raises(ConfigError, match="unknown flow"):
        resolve_config("q9", "smoke")


def test_q1_mlp_cells_dedupe_shared_baseline():
    cfg = resolve_config("q1-mlp", "smoke")
    cells, groups = q1_mlp_cells(cfg)
    # 3 batch sizes + 2 other activations + 1 other loss: the baseline is trained once
    assert len(cells) == 6
    assert [g["key"] for g in groups] == ["batch_size", "activation", "loss"]
    baseline = "b64-relu-cross_entropy"
    assert sum(cid == baseline for g in groups for _, _, cid in g["runs"]) == 3


def test_config_hash_stable():
    from tasks.classify import TrainConfig

    a = validate(TrainConfig, {"out": "o", "data": "d"})
    b = validate(TrainConfig, {"data": "d", "out": "o"})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(validate(TrainConfig, {"out": "o", "data": "d",
                                                                "seed": 1}))
