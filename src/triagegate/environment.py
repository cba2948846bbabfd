"""Every environment variable triagegate reads, defined once.

A variable's name lives here and nowhere else, so the CLI's help, the graph loader's list of
reserved names and the code that reads the value cannot disagree. Model-binding overrides
(``TRIAGEGATE_<ALIAS>`` and its ``_BASE_URL``/``_MODEL``/... suffixes) are derived from the
alias by :func:`binding_variable`; an alias whose variable would equal one of the names below
is refused when the graph loads.
"""

from __future__ import annotations

PREFIX = "TRIAGEGATE_"

API_KEYS = "TRIAGEGATE_API_KEYS"
"""Comma- or line-separated bearer keys for ``triagegate serve``."""
METRICS_TOKEN = "TRIAGEGATE_METRICS_TOKEN"
"""A separate bearer token for ``/metrics`` (see the serve settings)."""
CACHE_DIR = "TRIAGEGATE_CACHE_DIR"
"""Where trained classifiers and other derived artefacts are cached (default ``~/.cache/triagegate``)."""
LOG_LEVEL = "TRIAGEGATE_LOG_LEVEL"
"""The log level for the CLI and the service entry points."""
RECORD = "TRIAGEGATE_RECORD"
"""Append every model call to this JSONL file, as ``--record`` does."""
REPLAY = "TRIAGEGATE_REPLAY"
"""Answer every model call from this recording, as ``--replay`` does."""
REDIS_URL = "TRIAGEGATE_REDIS_URL"
"""The Redis URL for ``enqueue``, ``worker`` and ``queue status``."""
RESULTS_DSN = "TRIAGEGATE_RESULTS_DSN"
"""The PostgreSQL DSN the workers write outcomes to."""

CHECKPOINTS = "TRIAGEGATE_CHECKPOINTS"
"""Where handoffs and threads are kept: a SQLite file or a ``postgresql://`` DSN (default: a
SQLite file per graph under the cache directory)."""
STORE = "TRIAGEGATE_STORE"
"""The outcome store ``batch`` and ``serve`` write to (a SQLite path or a ``postgresql://`` URL), as ``--store`` does."""

RESERVED = frozenset(
    {
        API_KEYS,
        METRICS_TOKEN,
        CACHE_DIR,
        LOG_LEVEL,
        RECORD,
        REPLAY,
        REDIS_URL,
        RESULTS_DSN,
        CHECKPOINTS,
        STORE,
    }
)
"""Variables with a meaning of their own, so no model alias may map onto them."""


def binding_variable(alias: str, suffix: str = "") -> str:
    """The variable that overrides model alias ``alias`` (or one field of it, with ``suffix``)."""
    base = PREFIX + alias.upper().replace("-", "_")
    return f"{base}_{suffix}" if suffix else base
