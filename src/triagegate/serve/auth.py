"""Bearer API keys: where they come from, how a request's key is checked, where the server may bind.

Keys are compared with :func:`hmac.compare_digest` against every configured key, with
no early exit, so neither the position of a match nor a shared prefix shows in timing.
A key is never logged: requests are attributed to ``key-<8 hex>``, a digest prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path

from triagegate import environment
from triagegate.errors import ConfigError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def parse_keys(text: str, *, separators: str = ",\n") -> list[str]:
    """Keys from a comma- or line-separated text; blanks and ``#`` comment lines are ignored."""
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    keys = []
    for part in text.split(separators[0]):
        part = part.strip()
        if part and not part.startswith("#"):
            keys.append(part)
    return keys


def load_keys(environ: Mapping[str, str], keys_file: Path | None = None) -> tuple[str, ...]:
    """The union of ``TRIAGEGATE_API_KEYS`` and the keys file (one key per line), in order, deduplicated."""
    keys = parse_keys(environ.get(environment.API_KEYS, ""))
    if keys_file is not None:
        try:
            keys += parse_keys(keys_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"cannot read the API keys file: {exc.strerror or exc}", file=str(keys_file)
            ) from None
    short = [k for k in keys if len(k) < 16]
    if short:
        raise ConfigError(
            f"{len(short)} API key(s) are shorter than 16 characters; use long random keys "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return tuple(dict.fromkeys(keys))


def load_metrics_token(environ: Mapping[str, str]) -> str | None:
    """``TRIAGEGATE_METRICS_TOKEN``, the bearer token ``/metrics`` asks for, or ``None`` when unset."""
    token = environ.get(environment.METRICS_TOKEN, "").strip()
    if not token:
        return None
    if len(token) < 16:
        raise ConfigError(
            f"{environment.METRICS_TOKEN} is shorter than 16 characters; use a long random token "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def key_id(key: str) -> str:
    """A log-safe name for ``key``."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


class KeyRing:
    """The configured keys; :meth:`identify` maps an ``Authorization`` header to a key id."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [(k.encode(), key_id(k)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: bytes | None) -> str | None:
        """The id of the key presented as ``Bearer <key>``, or ``None`` when it matches none."""
        if not authorization:
            return None
        scheme, _, presented = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        presented = presented.strip()
        found: str | None = None
        for key, ident in self._keys:
            if hmac.compare_digest(presented, key) and found is None:
                found = ident
        return found


def is_loopback(host: str) -> bool:
    """True for addresses that only this machine can reach (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
