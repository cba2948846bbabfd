"""Reading a label's probability out of token log-probabilities.

The triage prompt presents each category as a one-character option code (``A``, ``B``, ...)
and asks for JSON whose ``category`` field holds the code. The token that starts that
value carries the model's distribution over the options in its ``top_logprobs``:
normalising over the option codes gives a calibrated-ish probability per category that
text in the ticket cannot talk up, unlike a confidence the model writes down.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Sequence

from triagegate.models.base import MalformedLogprobs, RawTokenLogprobs, TokenLogprob

OPTION_CODES = string.ascii_uppercase + string.ascii_lowercase
"""At most 52 options can be scored from a single token; larger label sets fall back."""

_CODE_END = frozenset(' \t\r\n".,:;)]}')
"""What may follow an option code inside the same token (a closing quote, a full stop, ...)."""


def option_codes(count: int) -> list[str]:
    if count < 0:
        raise ValueError(f"the number of options cannot be negative, got {count}")
    if count > len(OPTION_CODES):
        raise ValueError(
            f"at most {len(OPTION_CODES)} options can be scored by log-probabilities, got {count}"
        )
    return list(OPTION_CODES[:count])


FALLBACK_REASONS = {
    "no_logprobs": "the reply carried no usable log-probabilities",
    "field_not_found": "the reply's tokens do not spell the category field",
    "malformed_alternatives": "the reply's top_logprobs are not token/logprob entries",
    "no_option_code": "no option code is among the top alternatives",
}
"""Why a reply's log-probabilities gave no confidence: the codes ``Outcome.confidence_fallback``
holds, with what each means."""


class LogprobsUnusable(ValueError):
    """The log-probabilities of a reply cannot give a confidence; ``reason`` (a key of
    :data:`FALLBACK_REASONS`) says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_field_value_distribution(
    tokens: Sequence[TokenLogprob] | None, field: str, codes: Sequence[str]
) -> dict[str, float]:
    """Probability of each code as the value of JSON string field ``field``.

    Read from the alternatives of the token where the value starts: an alternative counts
    for a code when the code stands alone there (``"A"``, not the start of ``"Account"``).
    Raises :class:`LogprobsUnusable` naming the reason when there is no distribution to
    read, so the caller can say why it fell back to a verbalised confidence.
    """
    if not tokens:
        raise LogprobsUnusable("no_logprobs", "the reply carried no usable log-probabilities")
    found = _value_token(tokens, field)
    if found is None:
        raise LogprobsUnusable("field_not_found", f"the tokens do not spell a {field!r} field")
    if isinstance(found, int):
        raise LogprobsUnusable("field_not_found", f"the {field!r} value is past the last token")
    return _read_at(tokens, found, field, codes)


def early_field_distribution(
    tokens: Sequence[TokenLogprob] | None, field: str, codes: Sequence[str], *, complete: bool = False
) -> dict[str, float] | None:
    """:func:`read_field_value_distribution` on the first tokens of a reply still arriving.

    ``None`` while the token where ``field``'s value starts has not arrived; from then on,
    the numbers the whole reply will give (the reading looks at that token and the ones
    before it only), or :class:`LogprobsUnusable` for the reason the whole reply will give.
    With ``complete=True`` the tokens are the whole reply and this is
    :func:`read_field_value_distribution` itself. For the early gate, which decides on a
    streamed triage reply as soon as its option code has arrived.
    """
    if complete:
        return read_field_value_distribution(tokens, field, codes)
    if not tokens:
        return None
    found = _value_token(tokens, field)
    if found is None or isinstance(found, int):
        return None
    return _read_at(tokens, found, field, codes)


def _value_token(tokens: Sequence[TokenLogprob], field: str) -> tuple[int, int] | int | None:
    """Where ``field``'s string value starts: ``(token index, offset in that token)``; the
    value's character offset when no token reaches it yet; ``None`` when the tokens do not
    spell the field (with its opening quote)."""
    texts = tokens.texts() if isinstance(tokens, RawTokenLogprobs) else [t.token for t in tokens]
    match = re.search(r'"' + re.escape(field) + r'"\s*:\s*"', "".join(texts))
    if match is None:
        return None
    value_start = match.end()
    offset = 0
    for index, text in enumerate(texts):
        end = offset + len(text)
        if end > value_start:
            return index, value_start - offset
        offset = end
    return value_start


def _read_at(
    tokens: Sequence[TokenLogprob], at: tuple[int, int], field: str, codes: Sequence[str]
) -> dict[str, float]:
    index, cut = at
    tok = tokens[index]
    try:
        alternatives = {**tok.top, tok.token: tok.logprob}
    except MalformedLogprobs as exc:
        raise LogprobsUnusable("malformed_alternatives", str(exc)) from None
    found = _distribution_at(alternatives.items(), cut, tok.token[:cut], codes)
    if found is None:
        raise LogprobsUnusable(
            "no_option_code",
            f"none of the {len(alternatives)} alternatives at the {field!r} value is an option code",
        )
    return found


def field_value_distribution(
    tokens: Sequence[TokenLogprob], field: str, codes: Sequence[str]
) -> dict[str, float] | None:
    """:func:`read_field_value_distribution`, or ``None`` when there is nothing to read."""
    try:
        return read_field_value_distribution(tokens, field, codes)
    except LogprobsUnusable:
        return None


def _distribution_at(
    alternatives: Iterable[tuple[str, float]], cut: int, prefix: str, codes: Sequence[str]
) -> dict[str, float] | None:
    """Normalise the mass of alternatives that put an option code at position ``cut``.

    An alternative counts for a code only when it shares ``prefix``, has the code at
    ``cut`` and then ends or continues with a blank or closing punctuation: ``"Billing"``
    or ``"I'm"`` is the model starting a word, not choosing option ``B`` or ``I``. Normalisation is done relative to the largest
    log-probability, so providers' floor values (``-9999``) cannot underflow to 0/0.
    """
    allowed = set(codes)
    found: list[tuple[str, float]] = []
    for alt, logprob in alternatives:
        if not alt.startswith(prefix) or len(alt) <= cut or math.isnan(logprob):
            continue
        code = alt[cut]
        after = alt[cut + 1 : cut + 2]
        if code in allowed and (not after or after in _CODE_END):
            found.append((code, logprob))
    if not found:
        return None
    top = max(logprob for _, logprob in found)
    if top == -math.inf:
        return None
    mass = dict.fromkeys(codes, 0.0)
    for code, logprob in found:
        mass[code] += math.exp(logprob - top)
    total = sum(mass.values())
    return {code: mass[code] / total for code in codes}


def single_token_distribution(
    tokens: Sequence[TokenLogprob], codes: Sequence[str]
) -> dict[str, float] | None:
    """Distribution over ``codes`` at the first token of a bare answer (label scoring with max_tokens=1).

    Leading blanks are ignored, so ``" A"`` and ``"A"`` both count for option ``A``.
    """
    if not tokens:
        return None
    first = tokens[0]
    try:
        alternatives = {**first.top, first.token: first.logprob}
    except MalformedLogprobs:
        return None
    return _distribution_at(((alt.lstrip(), lp) for alt, lp in alternatives.items()), 0, "", codes)
