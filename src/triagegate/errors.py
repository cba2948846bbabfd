"""Every exception triagegate raises on purpose, in one small hierarchy.

Callers catch at the level they care about: ``TriagegateError`` for anything of ours,
``ConfigError`` for a bad graph file or prompt, ``ModelError`` for a provider that failed
after retries and fallbacks, ``InputError`` for a ticket that cannot be processed.
Messages say what went wrong and what to do; they never contain secrets.
"""

from __future__ import annotations


class TriagegateError(Exception):
    """Base class of all triagegate errors."""


class ConfigError(TriagegateError):
    """A graph file, prompt template or model binding is invalid.

    ``file``, ``line`` and ``key`` locate the problem when it is known, so the message can
    point at the exact place to edit.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.reason = message
        where = ""
        if file:
            where = file + (f":{line}" if line else "")
        if key:
            where = f"{where} [{key}]" if where else f"[{key}]"
        super().__init__(f"{where}: {message}" if where else message)


class InputError(TriagegateError):
    """A ticket (or a row of a batch) is malformed: missing text, unreadable image, too large.

    ``code`` names the kind of problem (``text_too_long``, ``too_many_attachments``, ...) for
    callers that group or map failures, so none of them reads the message's text.
    """

    def __init__(self, message: str, *, code: str = "invalid_input") -> None:
        self.code = code
        super().__init__(message)


class HandoffError(TriagegateError):
    """A resume names a handoff that cannot be resumed; ``thread_id`` names it."""

    def __init__(self, message: str, *, thread_id: str) -> None:
        self.thread_id = thread_id
        super().__init__(message)


class HandoffNotFound(HandoffError):
    """No handoff is kept under that thread id (HTTP 404)."""


class HandoffResolved(HandoffError):
    """The handoff was already answered, or another resume holds it right now (HTTP 409); nothing changed."""


class ModelError(TriagegateError):
    """A model backend failed for good: retries and fallbacks are exhausted, or the error is permanent."""

    def __init__(self, message: str, *, model: str | None = None, status: int | None = None) -> None:
        self.model = model
        self.status = status
        super().__init__(message)


class ModelTimeout(ModelError):
    """The provider did not answer within the configured timeout."""


class RateLimited(ModelError):
    """The provider kept answering 429 after the allowed retries."""

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        status: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, model=model, status=status)


class ModelUnavailable(ModelError):
    """The endpoint could not be reached or answered with a server error."""


class BadModelOutput(ModelError):
    """The model answered, but not with output matching the requested schema."""


class UnsupportedOperation(ModelError):
    """The backend cannot do what was asked (e.g. a classifier asked to write text)."""


class ReplayMiss(ModelError):
    """A replay backend was asked for a request that is not in its recording."""
