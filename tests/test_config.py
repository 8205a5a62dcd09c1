from __future__ import annotations

import pydantic
import pytest

from tasks.core.config import config_hash, deep_merge, parse_sets, validate
from tasks.core.errors import ConfigError
from tasks.plans import PROFILES, resolve_config
from tasks.q1.plan import q1_mlp_cells


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


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("flow", sorted(PROFILES))
@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_every_profile_composes(flow, profile):
    """Each profile validates, every value it sets is the resolved config's value, and the
    result is immutable."""
    cfg = resolve_config(flow, profile)
    resolved = _leaves(cfg.model_dump(mode="json"))
    for key, value in _leaves(PROFILES[flow][profile]).items():
        assert resolved[key] == value, (flow, profile, key)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
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
    from tasks.q1.train import TrainConfig

    a = validate(TrainConfig, {"out": "o", "data": "d"})
    b = validate(TrainConfig, {"data": "d", "out": "o"})
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(validate(TrainConfig, {"out": "o", "data": "d",
                                                                "seed": 1}))


# ---------------------------------------------------------------- one source per default

def _builders():
    """For each (flow, task): a function building that task's config from the flow config,
    exactly as the flow does (the plan modules' builders), and the plan module."""
    from tasks.q1 import plan as q1
    from tasks.q2 import plan as q2
    from tasks.q3 import plan as q3
    from tasks.q4 import plan as q4

    def first_cell(cells_of):
        def build(cfg):
            cells, _ = cells_of(cfg)
            return {**next(iter(cells.values())), "out": "o", "data": "d"}
        return build

    return {
        ("q1-mlp", "classifier.train"): (first_cell(q1.q1_mlp_cells), q1),
        ("q1-mlp", "classifier.evaluate"): (
            lambda c: {**q1.eval_fields(c), "out": "o", "train": "t"}, q1),
        ("q1-cnn", "classifier.train"): (first_cell(q1.q1_cnn_cells), q1),
        ("q1-cnn", "classifier.evaluate"): (
            lambda c: {**q1.eval_fields(c), "out": "o", "train": "t"}, q1),
        ("q1-mlp", "fashion-mnist.fetch"): (lambda c: c.data.model_dump(mode="json"), q1),
        ("q2-transfer", "stl10.fetch"): (lambda c: c.data.model_dump(mode="json"), q2),
        ("q2-transfer", "transfer.weights"): (lambda c: q2.weights_config(c, "o"), q2),
        ("q2-transfer", "transfer.explore"): (lambda c: q2.explore_config(c, "o", "d"), q2),
        ("q2-transfer", "transfer.train"): (
            lambda c: q2.train_config(c, "resnet18", "o", "d"), q2),
        ("q2-transfer", "transfer.finetune"): (lambda c: q2.finetune_config(c, "o", "t"), q2),
        ("q3-segmentation", "images.ingest"): (lambda c: q3.ingest_config(c, "o"), q3),
        ("q3-segmentation", "segment.images"): (lambda c: q3.segment_config(c, "o", "i"), q3),
        ("q4-yolo", "yolo-export.fetch"): (lambda c: c.data.model_dump(mode="json"), q4),
        ("q4-yolo", "yolo.train"): (lambda c: q4.train_config(c, "yolov5s.pt", "o", "d"), q4),
        ("q4-yolo", "yolo.evaluate"): (lambda c: q4.eval_config(c, "o", "t"), q4),
    }


def _other_value(field, current):
    """A valid value different from ``current`` for a config field (bounds respected)."""
    import types
    import typing

    import annotated_types as at

    ann = field.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        ann = next(a for a in typing.get_args(ann) if a is not type(None))
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return next(c for c in typing.get_args(ann) if c != current)
    if origin in (list, tuple):
        return [*current[1:], *current[:1]] if current and len(set(current)) > 1 else [
            *(current or []), *(current or ["x"])[:1]]
    if origin is dict or ann is dict:
        return {"fliplr": 0.25}
    if ann is bool:
        return not current
    if ann in (int, float):
        lo = hi = None
        for m in field.metadata:
            if isinstance(m, at.Ge | at.Gt):
                lo = m.ge if isinstance(m, at.Ge) else m.gt
            if isinstance(m, at.Le | at.Lt):
                hi = m.le if isinstance(m, at.Le) else m.lt
        if ann is int:
            value = (current if current is not None else (lo or 0) + 1) + 1
            return value if hi is None or value <= hi else value - 2
        value = current / 2 if current else ((lo or 0) + (hi or 1)) / 2
        return value
    if ann is str:
        return "cpu" if current == "auto" else f"{current}-other"
    raise AssertionError(f"no other value for {field.annotation}")


# Keys that only make sense with another one set (the configs check the pair).
COMPANIONS = {("q3-segmentation", "weights"): {"pretrained": True},
              ("q4-yolo", "data.source"): {"data": {"location": "/data/export.zip"}},
              ("q4-yolo", "data.location"): {"data": {"source": "export"}},
              ("q1-mlp", "data.mirror"): {"data": {"source": "download"}},
              ("q2-transfer", "data.mirror"): {"data": {"source": "download"}}}


@pytest.mark.parametrize("flow, task", sorted(_builders()))
def test_every_task_config_field_is_reachable_from_the_flow_config(flow, task):
    """Each field of a task's config is a flow key (same name, or the plan's RENAMED), and
    setting that key changes exactly that field of the config the flow sends; fields the
    plan sets itself (store prefixes, what a sweep varies) are in its WIRED table."""
    from tasks.core.config import deep_merge
    from tasks.registry import resolve

    build, plan = _builders()[(flow, task)]
    _, cfg_cls = resolve(task)
    base = resolve_config(flow, "smoke")
    wired = plan.WIRED.get(task, set()) if hasattr(plan, "WIRED") else set()
    renamed = getattr(plan, "RENAMED", {}).get(task, {})
    fetch = task.endswith(".fetch")
    for name, field in cfg_cls.model_fields.items():
        if name in wired:
            continue
        key = ("data." if fetch else "") + renamed.get(name, name)
        node = base.model_dump(mode="json")
        for part in key.split("."):
            assert part in node, f"{task}.{name} is not reachable: no flow key {key!r}"
            node = node[part]
        new = _other_value(field, node)
        override: dict = {}
        cursor = override
        *parents, last = key.split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[last] = new
        changed = resolve_config(flow, "smoke", deep_merge(
            COMPANIONS.get((flow, key), {}), override))
        sent = validate(cfg_cls, build(changed)).model_dump(mode="json")
        assert sent[name] == (list(new) if isinstance(new, tuple) else new), (
            f"{flow}: setting {key}={new!r} did not reach {task}.{name}")


@pytest.mark.parametrize("flow", ["q1-mlp", "q1-cnn", "q2-transfer", "q3-segmentation",
                                  "q4-yolo"])
def test_a_config_is_checked_without_loading_torch(flow):
    """A typo in ``--set`` is answered before torch is imported (about 2 CPU-seconds): the
    flow configs and their task configs live apart from the training code."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from flows.cli import main\n"
            f"code = main(['run', '{flow}', '--set', 'epochz=2'])\n"
            "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert "epochz" in out.stderr
