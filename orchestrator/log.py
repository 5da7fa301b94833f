"""Structured logging with bound ids and secret redaction.

Ids (request, batch, job, task) are bound in a context variable and added to every record;
a filter scrubs configured secrets, auth header values and presigned URL signatures from
every message before any handler sees it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.redact import redact_text

_bound: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_bound", default={})  # noqa: B039
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@contextmanager
def bound(**ids: Any) -> Iterator[None]:
    """Bind ids (batch_id, job_id, request_id, ...) to every log record in this context."""
    token = _bound.set({**_bound.get(), **{k: str(v) for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _bound.reset(token)


def reset(**ids: Any) -> None:
    """Start a fresh context (a new request or task): drop ids bound before."""
    _bound.set({k: str(v) for k, v in ids.items() if v is not None})


def bind(**ids: Any) -> None:
    """Bind ids for the rest of the current context (e.g. a request)."""
    _bound.set({**_bound.get(), **{k: str(v) for k, v in ids.items() if v is not None}})


class RedactingFilter(logging.Filter):
    """Adds bound ids and removes secrets from the message and extras."""

    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        record.msg = redact_text(record.getMessage(), self.secrets)
        record.args = None
        # Tracebacks quote URLs and messages too (an httpx error names the URL it called):
        # render them here, redacted, so no formatter prints the raw text.
        if record.exc_info and not record.exc_text:
            record.exc_text = _plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.secrets)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                setattr(record, key, self._scrub(value))
        for key, value in _bound.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


    def _scrub(self, value: Any, depth: int = 0) -> Any:
        """Redact strings in an extra, also inside dicts and lists."""
        if isinstance(value, str):
            return redact_text(value, self.secrets)
        if depth < 4 and isinstance(value, dict):
            return {k: self._scrub(v, depth + 1) for k, v in value.items()}
        if depth < 4 and isinstance(value, (list, tuple)):
            return [self._scrub(v, depth + 1) for v in value]
        return value


_plain = logging.Formatter()


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record with its extras."""
        data: dict[str, Any] = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                                "logger": record.name, "msg": record.getMessage()}
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info or record.exc_text:
            data["exc"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with extras appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record with its extras."""
        base = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items()
                          if k not in _STANDARD and not k.startswith("_"))
        return f"{base} {extras}".rstrip()


def configure(*, json_logs: bool, level: str = "INFO", secrets: tuple[str, ...] = ()) -> None:
    """Install the handler once per process (called by each command, never at import)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_orchestrator", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._orchestrator = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter(secrets))
    text = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if json_logs else text)
    root.addHandler(handler)
    root.setLevel(level.upper())
