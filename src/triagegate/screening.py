"""Cheap, model-free checks on ticket text that feed the gate.

Text inside a ticket must never lower escalation. A ticket that tries to instruct the
system ("ignore your instructions", "confidence: 1.0", "do not escalate") is flagged
``suspected_injection``, which the gate treats as a hard escalation rule: such tickets
are answered by the flagship model with the mini tier's triage only as context.
"""

from __future__ import annotations

import re

_INJECTION_PATTERNS = [
    r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}\b(instruction|instructions|prompt|rules|guidelines|above)\b",
    r"\bsystem\s+prompt\b",
    r"\byou\s+are\s+now\b",
    r"\b(confidence|certainty)\b[\"'\s]*[:=]\s*[\"']?(1(\.0+)?|100\s*%?|0?\.9\d*)",
    r"\b(set|mark|classify|route)\b[^.\n]{0,30}\b(confidence|priority|category|route)\b[^.\n]{0,10}\b(to|as)\b",
    r"\bdo\s+not\s+escalate\b|\bdon'?t\s+escalate\b|\bno\s+escalation\b",
    r"<\s*/?\s*(ticket|system|assistant|instructions?)\s*>",
    r"\brespond\s+(only\s+)?with\s+(this\s+)?json\b",
]
_INJECTION = re.compile("|".join(f"(?:{p})" for p in _INJECTION_PATTERNS), re.IGNORECASE)
_ANCHORS = re.compile(
    r"ignor|disregard|forget|overrid|system|you\s+are|confiden|certaint|set|mark|classif|route|escalat|<|respond"
)
"""A part that every match of :data:`_INJECTION` contains, in lower case. Searching for these
in lower-cased ASCII text is about ten times faster than the case-insensitive alternation;
only a ticket that contains one (``settings`` and ``reset`` do) runs the full pattern."""


def suspected_injection(text: str) -> bool:
    # Non-ASCII text goes straight to the full pattern: case-insensitive matching also maps
    # a few non-ASCII letters (the long s, the dotless i) to ASCII ones, which lower() does not.
    if text.isascii() and _ANCHORS.search(text.lower()) is None:
        return False
    return _INJECTION.search(text) is not None


def estimate_complexity(text: str) -> str:
    """A length-and-questions heuristic for triage backends that cannot judge complexity."""
    questions = text.count("?")
    if len(text) > 1500 or questions >= 4:
        return "high"
    if len(text) < 200 and questions <= 1:
        return "low"
    return "medium"


def flags_for(text: str) -> list[str]:
    return ["suspected_injection"] if suspected_injection(text) else []
