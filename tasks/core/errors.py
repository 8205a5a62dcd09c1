"""Errors that carry a message meant for the user: what is wrong and how to fix it.

Every error says whether trying again may help (``transient``): store and network trouble
may pass, a bad config or a corrupt file will not. The one retry rule of the flows
(:func:`is_transient`) reads it, whichever launcher ran the task: a task in a child process
or a container writes :func:`error_record` of its error, and the launcher raises
:func:`error_from_record`, the same class with the same message and fields.
"""

from __future__ import annotations

import builtins
import importlib
import json
from typing import Any


class VisionflowsError(Exception):
    """Base class for every error the CLI reports as a one-line message and exit code 2."""

    transient: bool = False  # may the same call succeed later? (instances may say so)
    exit_code: int = 2


class ConfigError(VisionflowsError):
    """A configuration value is missing, unknown or out of range."""


class StoreError(VisionflowsError):
    """The artifact store cannot be reached, or a key is missing."""

    transient = True


class MissingKeyError(StoreError, KeyError):
    """A key does not exist in the store."""

    transient = False

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "missing key"


class DataError(VisionflowsError):
    """An input dataset is missing, corrupt or fails its checksum."""


class TaskNotRunError(VisionflowsError):
    """A task's output was asked for, but the task has no manifest (it did not finish)."""


class ResourceLimitError(VisionflowsError):
    """A task ran past its time budget or out of memory, and was stopped."""


class TaskTimeoutError(ResourceLimitError):
    """A task ran past its time budget; it was killed with every process it started."""


class TaskOutOfMemoryError(ResourceLimitError):
    """A task ran out of memory (its limit, or the machine's)."""


class TaskCrashedError(VisionflowsError):
    """A task in another process failed with an error that is not one of ours; the message
    names its class. Treated like any unknown failure: worth a retry."""

    transient = True
    exit_code = 1


def is_transient(exc: BaseException) -> bool:
    """The one retry rule: our errors say whether they may pass; an unknown failure
    (network, a crash) gets its retries, an interrupt never does."""
    if isinstance(exc, VisionflowsError):
        return bool(getattr(exc, "transient", False))
    return isinstance(exc, Exception)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def error_record(exc: BaseException, message: str | None = None) -> dict[str, Any]:
    """What crosses a process boundary: the class, the message and the plain fields."""
    return {"module": type(exc).__module__, "class": type(exc).__qualname__,
            "message": str(exc) if message is None else message,
            "fields": {k: v for k, v in vars(exc).items()
                       if not k.startswith("_") and _jsonable(v)},
            "transient": is_transient(exc)}


def error_from_record(record: dict[str, Any], context: str = "") -> BaseException:
    """The error an :func:`error_record` describes, as the same class where that class is
    ours (``tasks.*``) or a builtin; anything else becomes ``TaskCrashedError`` naming it.
    ``context`` (e.g. the task's last log lines) is appended to the message."""
    message = str(record.get("message", ""))
    full = f"{message}\n{context}" if context else message
    module, name = str(record.get("module", "")), str(record.get("class", ""))
    cls: Any = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module == "tasks" or module.startswith("tasks."):
        try:
            cls = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            cls = None
    if isinstance(cls, type) and issubclass(cls, VisionflowsError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, full)
        for key, value in dict(record.get("fields") or {}).items():
            setattr(exc, key, value)
        return exc
    if isinstance(cls, type) and issubclass(cls, Exception) and module == "builtins":
        try:
            return cls(full)
        except TypeError:  # a builtin with another signature
            pass
    crashed = TaskCrashedError(f"{module}.{name}: {full}" if name else full)
    crashed.transient = bool(record.get("transient", True))
    return crashed
