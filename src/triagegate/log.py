"""Logging: one configuration for applications, and quiet defaults for the library.

The library configures nothing. triagegate's modules log through :func:`get_logger`,
which follows structlog's configuration when the application has made one and otherwise
hands each event to the standard library's :mod:`logging` under the module's name, so a
program that configures nothing sees WARNING and above on stderr (Python's last-resort
handler) and one that configures :mod:`logging` gets triagegate's events through it.

:func:`configure` is for applications: the CLI and the service and worker entry points
call it. It renders structlog events and every standard-library record (uvicorn, httpx,
psycopg, ...) through the same processors, so both come out in one shape, with secrets
redacted and exceptions rendered: in JSON as structured frames under ``exception``.

Ticket and run ids are bound as context at the start of each ticket
(:func:`structlog.contextvars.bound_contextvars`), so every event a node logs carries them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from triagegate import environment

SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|token|secret|password|bearer)", re.IGNORECASE)
SECRET_VALUES = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,})")
SECRET_QUERY = re.compile(
    r"([?&;][A-Za-z0-9_.\-]*(?:key|token|secret|password|passwd|signature|sig|auth)[A-Za-z0-9_.\-]*=)[^&#\s\"']+",
    re.IGNORECASE,
)
"""A URL query parameter whose name says it holds a credential (``?api_key=...``, ``&token=...``)."""
SECRET_USERINFO = re.compile(r"(://[^/\s:@]*:)[^/\s@]+@")
"""The password in a URL's ``user:password@`` part."""
_NOT_SECRET_KEYS = frozenset({"tokens_in", "tokens_out", "input_tokens", "output_tokens", "max_tokens"})
NOISY_AT_INFO = ("httpx",)
"""Libraries that log every request at INFO; shown only at DEBUG so INFO stays one line per ticket."""
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
        value = SECRET_VALUES.sub("[REDACTED]", value)
    if "=" in value:
        value = SECRET_QUERY.sub(r"\1[REDACTED]", value)
    if "@" in value:
        value = SECRET_USERINFO.sub(r"\1[REDACTED]@", value)
    return value


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether ``key`` looks like it names a secret; cached because log lines reuse a few keys."""
    return SECRET_KEYS.search(key) is not None and key not in _NOT_SECRET_KEYS


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank values under secret-looking keys and secret-looking strings anywhere."""
    for key, value in list(event_dict.items()):
        if _secret_key(key):
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


# --- the library side: log without configuring anything -------------------------------------


def _as_stdlib_call(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[str], dict[str, Any]]:
    """Last processor of the unconfigured path: ``event key=value ...`` as the record's message,
    with the exception handed to :mod:`logging` so its handlers format the traceback."""
    exc_info = event_dict.pop("exc_info", None)
    event = event_dict.pop("event", "")
    message = " ".join([str(event), *(f"{k}={v!r}" for k, v in event_dict.items())])
    return (message,), {"exc_info": exc_info}


_UNCONFIGURED: list[Processor] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    redact_secrets,
    _as_stdlib_call,
]


class Logger:
    """What triagegate's modules log through; see the module docstring for where events go.

    The choice is made per call (structlog's :func:`~structlog.is_configured` is one
    attribute read), so configuring logging after triagegate is imported takes effect.
    """

    __slots__ = ("_fallback", "_name", "_proxy")

    def __init__(self, name: str) -> None:
        self._name = name
        self._proxy: Any = structlog.get_logger(name)
        self._fallback: structlog.stdlib.BoundLogger | None = None

    def _target(self) -> Any:
        if structlog.is_configured():
            return self._proxy
        if self._fallback is None:
            self._fallback = structlog.stdlib.BoundLogger(
                logging.getLogger(self._name), processors=_UNCONFIGURED, context={}
            )
        return self._fallback

    def debug(self, event: str, **kw: Any) -> None:
        self._target().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._target().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._target().warning(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._target().error(event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        """An ERROR carrying the exception being handled (call it inside ``except``)."""
        self._target().exception(event, **kw)


def get_logger(name: str) -> Logger:
    """The logger for module ``name`` (``triagegate.<area>``)."""
    return Logger(name)


# --- the application side: one configuration for structlog and the standard library ---------


class _Writer:
    """Writes rendered lines for both structlog and :mod:`logging`, under one lock so lines never
    interleave. Without a fixed stream it writes to whatever ``sys.stderr`` is at the time."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


class _NamedWriter:
    """The wrapped logger structlog calls (``msg``, ``info``, ...), carrying the logger's name."""

    __slots__ = ("_writer", "name")

    def __init__(self, writer: _Writer, name: str) -> None:
        self._writer = writer
        self.name = name

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _Factory:
    def __init__(self, writer: _Writer) -> None:
        self.writer = writer

    def __call__(self, *args: Any) -> _NamedWriter:
        return _NamedWriter(self.writer, str(args[0]) if args else "")


class _Handler(logging.Handler):
    """The root handler :func:`configure` installs: standard-library records through our processors."""

    def __init__(self, writer: _Writer, level: int) -> None:
        super().__init__(level)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.writer.write_line(line)


def _renderers(as_json: bool) -> list[Processor]:
    """The tail every event goes through: exceptions rendered, secrets redacted (tracebacks too), output."""
    if as_json:
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        return [
            structlog.processors.StackInfoRenderer(),
            tracebacks,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ]
    return [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_secrets,
        structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
    ]


def level_number(level: str | int | None) -> int:
    """``level`` (a name or number), else ``TRIAGEGATE_LOG_LEVEL``, else WARNING, as a number."""
    level = level or os.environ.get(environment.LOG_LEVEL) or "WARNING"
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    return numeric if isinstance(numeric, int) else logging.WARNING


def configure(
    level: str | int | None = None, *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's root logger for this process.

    For applications (the CLI and service entry points call it), never for a library.
    Safe to call more than once: the last call wins, and it replaces only the handler an
    earlier call installed, leaving other root handlers alone. ``level`` defaults to
    ``TRIAGEGATE_LOG_LEVEL`` or WARNING (the CLI prints its own summary; logs are for
    operators). ``json`` defaults to "stderr (or ``stream``) is not a TTY". Without
    ``stream``, lines go to the current ``sys.stderr``.
    """
    numeric = level_number(level)
    as_json = (not (stream or sys.stderr).isatty()) if json is None else json
    writer = _Writer(stream)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render = _renderers(as_json)
    structlog.configure(
        processors=[*shared, *render],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_Factory(writer),
        cache_logger_on_first_use=False,
    )
    handler = _Handler(writer, numeric)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        )
    )
    root = logging.getLogger()
    _remove_handlers(root)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in NOISY_AT_INFO:
        logging.getLogger(name).setLevel(
            logging.NOTSET if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        )


def _remove_handlers(root: logging.Logger) -> None:
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)


def reset() -> None:
    """Undo :func:`configure`: structlog's defaults, and the root logger without our handler."""
    structlog.reset_defaults()
    root = logging.getLogger()
    _remove_handlers(root)
    root.setLevel(logging.WARNING)
    for name in NOISY_AT_INFO:
        logging.getLogger(name).setLevel(logging.NOTSET)
