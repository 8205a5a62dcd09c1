"""Typed, frozen, validated configs and the override syntax shared by CLI and flows."""

from __future__ import annotations

import copy
import hashlib
import json
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tasks.core.errors import ConfigError

T = TypeVar("T", bound=BaseModel)
T_item = TypeVar("T_item")


class Config(BaseModel):
    """Base of every config: unknown keys rejected, instances immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(Config):
    """Base of a dataset fetch config: ``source="generate"`` makes synthetic data in the
    official on-disk format (offline, smoke runs); ``source="download"`` fetches the real
    files, from ``mirror`` (a local folder) when given."""

    source: Literal["generate", "download"] = "download"
    mirror: str | None = None

    @model_validator(mode="after")
    def _mirror_needs_download(self) -> Self:
        if self.source == "generate" and self.mirror:
            raise ConfigError("mirror: only used with source='download' (got source='generate')")
        return self


def distinct(items: list[T_item]) -> list[T_item]:
    """A list validator (``Annotated[list[str], AfterValidator(distinct)]``): each item at
    most once."""
    if len(set(items)) != len(items):
        dup = sorted({str(x) for x in items if items.count(x) > 1})
        raise ValueError(f"each item at most once (repeated: {', '.join(dup)})")
    return items


def like(cls: type[BaseModel], name: str, **changes: Any) -> Any:
    """A copy of field ``name`` of config ``cls`` (default, bounds, description), optionally
    changed (``default=32``): a flow config states a task's field without restating it, so
    the default and the checks live in one place.
    """
    field = copy.copy(cls.model_fields[name])
    for key, value in changes.items():
        setattr(field, key, value)
    return field


def did_you_mean(word: str, options: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean 'epochs'?)`` for the option closest to ``word``, or an empty string.
    ``prefix`` is put before the suggestion (``resources.`` for a nested key)."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _unwrap(tp: Any) -> Any:
    """``X | None``, ``Annotated[X, ...]`` -> ``X`` (the first model or container)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            inner = _unwrap(arg)
            if _is_model(inner) or typing.get_origin(inner) in (list, tuple, set, dict):
                return inner
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def model_at(cls: type[BaseModel], path: tuple | list) -> type[BaseModel] | None:
    """The config model that the key at ``path`` (a pydantic error location, list indices
    and dict keys included) lives in: ``(resources, train)`` -> ``Resources``."""
    tp: Any = cls
    parts = list(path)
    while parts:
        tp = _unwrap(tp)
        if _is_model(tp):
            part = parts.pop(0)
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) in (list, tuple, set, dict):
            parts.pop(0)  # a list index or a dict key
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            tp = args[-1] if args else Any
        else:
            return None
    tp = _unwrap(tp)
    return tp if _is_model(tp) else None


def _describe(err: dict, cls: type[BaseModel] | None = None) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        path = tuple(err.get("loc", ()))
        owner = model_at(cls, path[:-1]) if cls is not None else None
        if owner is None:
            return f"unknown key {loc!r}"
        where = ".".join(str(p) for p in path[:-1])
        prefix = f"{where}." if where else ""
        allowed = ", ".join(sorted(owner.model_fields))
        return (f"unknown key {loc!r}{did_you_mean(path[-1], owner.model_fields, prefix)}; "
                f"allowed keys{f' in {where}' if where else ''}: {allowed}")
    if kind == "missing":
        return f"missing required key {loc!r}"
    got = err.get("input")
    shown = json.dumps(got, default=str) if not isinstance(got, dict) else "{...}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{loc}: {err.get('msg', 'invalid')} (got {shown})"


def validate(cls: type[T], data: Any, what: str | None = None) -> T:
    """Build ``cls`` from ``data``; raise ConfigError naming each bad field and allowed values."""
    if isinstance(data, cls):
        return data
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        errors = [_describe(e, cls) for e in exc.errors()]
        label = what or cls.__name__
        raise ConfigError(f"invalid {label} config: " + "; ".join(errors)) from None


def parse_value(text: str) -> Any:
    """Parse an override value: JSON when it parses (numbers, lists, true/null), else a string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into a nested dict ``{"a": {"b": 1}, "c": [1, 2]}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. --set epochs=2)")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: empty key")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part!r} was already given a value")
            node = nxt
        node[parts[-1]] = parse_value(raw)
    return out


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated by ``override``, merging nested dicts, replacing everything else."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_hash(cfg: BaseModel | dict, length: int = 12) -> str:
    """A short, stable hash of a resolved config."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
