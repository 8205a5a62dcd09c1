"""The project's logger. Tasks log through it; the CLI and Prefect decide where it goes."""

from __future__ import annotations

import logging
import os
import re
import sys

LOGGER_NAME = "visionflows"
# Environment variables holding credentials: never logged, never in messages.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def _secrets() -> list[str]:
    return [v for k in SECRET_ENV if (v := os.environ.get(k)) and len(v) >= 4]


def redact(text: str) -> str:
    """Replace any credential found in the environment, and URL passwords, with '***'."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return re.sub(r"(://[^/\s:@]+:)[^@\s/]+@", r"\1***@", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def setup_cli_logging(level: int = logging.INFO) -> None:
    """Send the project's logs to stderr (used by the CLIs, never at import time)."""
    logger = logging.getLogger(LOGGER_NAME)
    if any(getattr(h, "_vf", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._vf = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
