"""Errors that carry a message meant for the user: what is wrong and how to fix it."""


class VisionflowsError(Exception):
    """Base class for every error the CLI reports as a one-line message and exit code 2."""


class ConfigError(VisionflowsError):
    """A configuration value is missing, unknown or out of range."""


class StoreError(VisionflowsError):
    """The artifact store cannot be reached, or a key is missing."""


class MissingKeyError(StoreError, KeyError):
    """A key does not exist in the store."""

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
