"""Logging: one structlog configuration, JSON lines off a TTY, readable on one, secrets redacted.

Ticket and run ids are bound as context at the start of each ticket
(:func:`structlog.contextvars.bound_contextvars`), so every event a node logs carries them.
"""

from __future__ import annotations

from triagegate import environment

import functools
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|token|secret|password|bearer)", re.IGNORECASE)
SECRET_VALUES = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
_known_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Make sure ``value`` never reaches a log line, whatever key it hides under."""
    if len(value) >= 6:
        _known_secrets.add(value)


def _scrub(value: str) -> str:
    for secret in _known_secrets:
        if secret in value:
            value = value.replace(secret, "[REDACTED]")
    if "sk-" in value or "Bearer" in value:
        return SECRET_VALUES.sub("[REDACTED]", value)
    return value


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether ``key`` looks like it names a secret; cached because log lines reuse a few keys."""
    return SECRET_KEYS.search(key) is not None


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank values under secret-looking keys and secret-looking strings anywhere."""
    for key, value in list(event_dict.items()):
        if _secret_key(key) and key not in {
            "tokens_in",
            "tokens_out",
            "input_tokens",
            "output_tokens",
            "max_tokens",
        }:
            event_dict[key] = "[REDACTED]"
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


def _redact_value(value: Any) -> Any:
    """Scrub strings, and blank secret-looking keys, inside nested dicts, lists and tuples."""
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {
            k: "[REDACTED]" if isinstance(k, str) and _secret_key(k) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


def configure(
    level: str | int | None = None, *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog for the process. Safe to call more than once (the last call wins).

    ``level`` defaults to ``TRIAGEGATE_LOG_LEVEL`` or WARNING (the CLI prints its own
    summary; logs are for operators). ``json`` defaults to "stream is not a TTY".
    """
    stream = stream or sys.stderr
    level = level or os.environ.get(environment.LOG_LEVEL, "WARNING")
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        numeric = logging.WARNING
    as_json = (not stream.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=functools.partial(_shared_logger, structlog.PrintLogger(file=stream)),
        cache_logger_on_first_use=False,
    )


def _shared_logger(logger: structlog.PrintLogger, *_args: Any) -> structlog.PrintLogger:
    """Logger factory handing out one writer per configuration, not a new one per log call."""
    return logger


def ensure_configured() -> None:
    """Give a library user quiet defaults (WARNING, stderr) unless the application configured structlog."""
    if not structlog.is_configured():
        configure()
