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
from collections.abc import Sequence

from triagegate.models.base import TokenLogprob

OPTION_CODES = string.ascii_uppercase + string.ascii_lowercase
"""At most 52 options can be scored from a single token; larger label sets fall back."""


def option_codes(count: int) -> list[str]:
    if count > len(OPTION_CODES):
        raise ValueError(f"at most {len(OPTION_CODES)} options can be scored by log-probabilities, got {count}")
    return list(OPTION_CODES[:count])


def field_value_distribution(
    tokens: Sequence[TokenLogprob], field: str, codes: Sequence[str]
) -> dict[str, float] | None:
    """Probability of each code as the first character of JSON string field ``field``.

    Returns ``None`` when the field cannot be located in the token stream or none of the
    top alternatives at its position is an option code (the caller then falls back to a
    verbalised confidence).
    """
    text = "".join(t.token for t in tokens)
    match = re.search(r'"' + re.escape(field) + r'"\s*:\s*"', text)
    if match is None:
        return None
    value_start = match.end()
    offset = 0
    for tok in tokens:
        end = offset + len(tok.token)
        if end > value_start:
            return _distribution_at(tok, value_start - offset, codes)
        offset = end
    return None


def _distribution_at(tok: TokenLogprob, cut: int, codes: Sequence[str]) -> dict[str, float] | None:
    prefix = tok.token[:cut]
    allowed = set(codes)
    alternatives = dict(tok.top)
    alternatives.setdefault(tok.token, tok.logprob)
    mass: dict[str, float] = {}
    for alt, logprob in alternatives.items():
        if not alt.startswith(prefix) or len(alt) <= cut:
            continue
        code = alt[cut]
        if code in allowed:
            mass[code] = mass.get(code, 0.0) + math.exp(logprob)
    total = sum(mass.values())
    if total <= 0.0:
        return None
    return {code: mass.get(code, 0.0) / total for code in codes}


def single_token_distribution(tokens: Sequence[TokenLogprob], codes: Sequence[str]) -> dict[str, float] | None:
    """Distribution over ``codes`` at the first token of a bare answer (label scoring with max_tokens=1)."""
    if not tokens:
        return None
    first = tokens[0]
    merged: dict[str, float] = {}
    for alt, logprob in {**first.top, first.token: first.logprob}.items():
        key = alt.lstrip()
        merged[key] = math.log(math.exp(merged[key]) + math.exp(logprob)) if key in merged else logprob
    return _distribution_at(TokenLogprob(first.token.lstrip(), first.logprob, merged), 0, codes)
