"""Property tests for reading option-code probabilities out of token log-probabilities."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triagegate.confidence import (
    FALLBACK_REASONS,
    OPTION_CODES,
    LogprobsUnusable,
    early_field_distribution,
    field_value_distribution,
    option_codes,
    read_field_value_distribution,
    single_token_distribution,
)
from triagegate.models.base import MalformedLogprobs, RawAlternatives, RawTokenLogprobs, TokenLogprob

logprobs = st.floats(min_value=-10_000.0, max_value=0.0, allow_nan=False)
identifiers = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(lambda k: k != "category")


def expected(masses: dict[str, list[float]], codes: list[str]) -> dict[str, float]:
    """Normalise independently of the implementation (relative to the largest logprob)."""
    top = max(lp for lps in masses.values() for lp in lps)
    raw = {c: math.fsum(math.exp(lp - top) for lp in masses.get(c, [])) for c in codes}
    total = math.fsum(raw.values())
    return {c: raw[c] / total for c in codes}


def assert_distribution(dist: dict[str, float] | None, codes: list[str]) -> dict[str, float]:
    assert dist is not None
    assert list(dist) == codes
    assert all(0.0 <= p <= 1.0 for p in dist.values())
    assert math.fsum(dist.values()) == pytest.approx(1.0)
    return dist


@given(st.integers(min_value=0, max_value=len(OPTION_CODES)))
def test_option_codes_are_distinct_single_characters(count: int) -> None:
    codes = option_codes(count)
    assert len(codes) == len(set(codes)) == count
    assert all(len(c) == 1 and c.isalpha() for c in codes)


@given(st.integers(min_value=len(OPTION_CODES) + 1, max_value=500))
def test_too_many_options(count: int) -> None:
    with pytest.raises(ValueError, match="at most 52"):
        option_codes(count)


@st.composite
def scored_token(draw: st.DrawFn) -> tuple[list[str], TokenLogprob, dict[str, list[float]]]:
    codes = option_codes(draw(st.integers(min_value=1, max_value=len(OPTION_CODES))))
    present = draw(st.lists(st.sampled_from(codes), min_size=1, max_size=len(codes), unique=True))
    top: dict[str, float] = {}
    masses: dict[str, list[float]] = {}
    for code in present:
        for spelling in draw(st.lists(st.sampled_from(["", " ", "  "]), min_size=1, max_size=3, unique=True)):
            lp = draw(logprobs)
            top[spelling + code] = lp
            masses.setdefault(code, []).append(lp)
    noise = draw(st.lists(st.sampled_from(["Sure", " The", "I'm", "{", " ", "\n", "ok", "Ab"]), max_size=4))
    for word in noise:
        top.setdefault(word, draw(logprobs))
    chosen = draw(st.sampled_from(sorted(top)))
    return codes, TokenLogprob(chosen, top[chosen], top), masses


@given(scored_token())
def test_single_token_distribution_sums_to_one_over_codes(case: tuple[list[str], TokenLogprob, dict]) -> None:
    codes, token, masses = case
    dist = assert_distribution(single_token_distribution([token], codes), codes)
    assert dist == pytest.approx(expected(masses, codes), abs=1e-9)
    assert all(dist[c] == 0.0 for c in codes if c not in masses)


@given(st.lists(st.sampled_from(["Sure", " The", "ok", "{", "Apple", " account"]), min_size=1, unique=True))
def test_single_token_without_codes_is_none(words: list[str]) -> None:
    top = dict.fromkeys(words, -0.5)
    assert single_token_distribution([TokenLogprob(words[0], -0.5, top)], ["A", "B", "C"]) is None


def test_single_token_edge_cases() -> None:
    assert single_token_distribution([], ["A", "B"]) is None
    floor = TokenLogprob(" A", -9999.0, {"A": -9999.0, "B": -9999.0})
    assert single_token_distribution([floor], ["A", "B"]) == pytest.approx({"A": 2 / 3, "B": 1 / 3})
    words = TokenLogprob(
        "A", math.log(0.5), {"Apple": math.log(0.4), "B": math.log(0.1), "A.": math.log(0.1)}
    )
    assert single_token_distribution([words], ["A", "B"]) == pytest.approx({"A": 6 / 7, "B": 1 / 7})


@st.composite
def tokenised_json(draw: st.DrawFn) -> tuple[list[str], list[TokenLogprob], dict[str, list[float]]]:
    codes = option_codes(draw(st.integers(min_value=2, max_value=26)))
    chosen = draw(st.sampled_from(codes))
    others = draw(
        st.dictionaries(identifiers, st.text(max_size=30) | st.integers() | st.booleans(), max_size=4)
    )
    position = draw(st.integers(min_value=0, max_value=len(others)))
    items = list(others.items())
    items.insert(position, ("category", chosen))
    separators = draw(st.sampled_from([(", ", ": "), (",", ":")]))
    text = json.dumps(dict(items), separators=separators, ensure_ascii=draw(st.booleans()))
    needle = f'"category"{separators[1]}"'
    value_at = text.index(needle) + len(needle)
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=len(text) - 1), max_size=len(text))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]

    alternatives = draw(st.lists(st.sampled_from(codes), max_size=len(codes), unique=True))
    masses: dict[str, list[float]] = {}
    tokens: list[TokenLogprob] = []
    offset = 0
    for piece in pieces:
        if offset <= value_at < offset + len(piece):
            cut = value_at - offset
            top: dict[str, float] = {}
            for code in dict.fromkeys([chosen, *alternatives]):
                lp = draw(logprobs)
                top[piece[:cut] + code + piece[cut + 1 :]] = lp
                masses[code] = [lp]
            tokens.append(TokenLogprob(piece, top[piece], top))
        else:
            tokens.append(TokenLogprob(piece, draw(logprobs), {}))
        offset += len(piece)
    return codes, tokens, masses


@given(tokenised_json())
def test_field_value_is_found_across_any_token_split(
    case: tuple[list[str], list[TokenLogprob], dict],
) -> None:
    codes, tokens, masses = case
    dist = assert_distribution(field_value_distribution(tokens, "category", codes), codes)
    assert dist == pytest.approx(expected(masses, codes), abs=1e-9)
    assert field_value_distribution(as_openai_logprobs(tokens), "category", codes) == dist


def as_openai_logprobs(tokens: list[TokenLogprob]) -> RawTokenLogprobs:
    """The same tokens the way the openai backend holds them: as sent, built when read."""
    content = [
        {
            "token": t.token,
            "logprob": t.logprob,
            "top_logprobs": [{"token": k, "logprob": v} for k, v in t.top.items()],
        }
        for t in tokens
    ]
    raw = RawTokenLogprobs.from_openai(content)
    assert raw is not None
    rebuilt = [
        TokenLogprob(t.token, t.logprob, RawAlternatives(c["top_logprobs"]))
        for t, c in zip(tokens, content, strict=True)
    ]
    assert list(raw) == rebuilt
    return raw


@given(st.dictionaries(identifiers, st.text(max_size=30), max_size=5), st.data())
def test_field_value_absent_is_none(fields: dict[str, str], data: st.DataObject) -> None:
    text = json.dumps(fields)
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=max(1, len(text) - 1)))))
    pieces = [p for p in (text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)) if p]
    tokens = [TokenLogprob(p, -0.1, {p: -0.1, "A": -1.0}) for p in pieces]
    assert field_value_distribution(tokens, "category", ["A", "B"]) is None


def test_field_value_ignores_escaped_lookalikes_and_word_alternatives() -> None:
    text = json.dumps({"answer": 'say "category": "C" please', "category": "B"})
    tokens = [TokenLogprob(ch, -0.1, {}) for ch in text]
    at = text.rindex('"B"') + 1
    tokens[at] = TokenLogprob("B", math.log(0.6), {"B": math.log(0.6), "A": math.log(0.2), "Billing": -0.01})
    assert field_value_distribution(tokens, "category", ["A", "B", "C"]) == pytest.approx(
        {"A": 0.25, "B": 0.75, "C": 0.0}
    )


def test_raw_alternatives_convert_on_read_and_fail_closed() -> None:
    alternatives = RawAlternatives([{"token": "A", "logprob": -0.1}, {"token": "B", "logprob": "-2.5"}])
    assert dict(alternatives) == {"A": -0.1, "B": -2.5}
    assert len(alternatives) == 2 and alternatives["B"] == -2.5
    for bad in ([{"token": "A"}], [{"token": "A", "logprob": "high"}], ["A"], 7):
        with pytest.raises(MalformedLogprobs, match="malformed top_logprobs"):
            dict(RawAlternatives(bad))
    assert dict(RawAlternatives(None)) == {}


def test_malformed_alternatives_only_matter_where_the_value_starts() -> None:
    def tokens(value_top: object, other_top: object) -> list[TokenLogprob]:
        return [
            TokenLogprob('{"category": "', -0.01, RawAlternatives(other_top)),
            TokenLogprob("B", math.log(0.8), RawAlternatives(value_top)),
            TokenLogprob('"}', -0.01, RawAlternatives(other_top)),
        ]

    good = [{"token": "A", "logprob": math.log(0.2)}, {"token": "B", "logprob": math.log(0.8)}]
    dist = field_value_distribution(tokens(good, [{"token": 1}]), "category", ["A", "B"])
    assert dist == pytest.approx({"A": 0.2, "B": 0.8})
    assert field_value_distribution(tokens([{"logprob": -1.0}], good), "category", ["A", "B"]) is None
    first = TokenLogprob("A", -0.1, RawAlternatives("not a list"))
    assert single_token_distribution([first], ["A", "B"]) is None


def test_openai_logprobs_are_checked_up_front_and_built_on_read() -> None:
    content = [
        {"token": '{"category": "', "logprob": -0.01, "top_logprobs": []},
        {"token": "B", "logprob": "-0.2", "top_logprobs": [{"token": "A", "logprob": -1.7}]},
    ]
    tokens = RawTokenLogprobs.from_openai(content)
    assert tokens is not None and len(tokens) == 2
    assert tokens.texts() == ['{"category": "', "B"]
    assert (tokens[1].token, tokens[1].logprob, dict(tokens[1].top)) == ("B", -0.2, {"A": -1.7})
    assert [t.token for t in tokens[-1:]] == ["B"]
    for bad in ([{"token": "A"}], [{"logprob": -1.0}], [{"token": "A", "logprob": "high"}], ["A"], None, {}):
        assert RawTokenLogprobs.from_openai(bad) is None


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        (None, "no_logprobs"),
        ([], "no_logprobs"),
        ([TokenLogprob('{"priority": "', -0.1), TokenLogprob("A", -0.1)], "field_not_found"),
        ([TokenLogprob('{"category": "', -0.1)], "field_not_found"),
        (
            [TokenLogprob('{"category": "', -0.1), TokenLogprob("A", -0.1, RawAlternatives([7]))],
            "malformed_alternatives",
        ),
        (
            [TokenLogprob('{"category": "', -0.1), TokenLogprob("Acc", -0.1, {"Acc": -0.1, "Bill": -2.0})],
            "no_option_code",
        ),
    ],
)
def test_unusable_logprobs_say_why(tokens: list[TokenLogprob] | None, reason: str) -> None:
    with pytest.raises(LogprobsUnusable) as info:
        read_field_value_distribution(tokens, "category", ["A", "B"])
    assert info.value.reason == reason
    assert reason in FALLBACK_REASONS
    assert field_value_distribution(tokens or [], "category", ["A", "B"]) is None


def reading(read: Callable[[], dict[str, float] | None]) -> tuple[str, object]:
    """A reading's outcome, comparable whether it gave numbers, nothing or a reason."""
    try:
        dist = read()
    except LogprobsUnusable as exc:
        return ("unusable", exc.reason)
    return ("none", None) if dist is None else ("read", dist)


def value_token(tokens: list[TokenLogprob]) -> int:
    """Index of the token where the category value starts (test-side, by string search)."""
    text = "".join(t.token for t in tokens)
    at = text.index('"category"')
    at = text.index('"', text.index(":", at + len('"category"'))) + 1
    offset = 0
    for index, token in enumerate(tokens):
        offset += len(token.token)
        if offset > at:
            return index
    raise AssertionError("the value is past the last token")


@st.composite
def damaged(draw: st.DrawFn) -> tuple[list[str], list[TokenLogprob]]:
    """A tokenised reply whose value token may carry malformed or code-less alternatives."""
    codes, tokens, _ = draw(tokenised_json())
    at = value_token(tokens)
    kind = draw(st.sampled_from(["intact", "malformed", "words"]))
    token = tokens[at]
    if kind == "malformed":
        tokens[at] = TokenLogprob(token.token, token.logprob, RawAlternatives([7]))
    elif kind == "words":
        tokens[at] = TokenLogprob(token.token + "ccount", token.logprob, {token.token + "ccount": -0.1})
    return codes, tokens


@given(damaged(), st.booleans())
def test_early_reading_is_none_until_the_value_token_then_the_full_reading(
    case: tuple[list[str], list[TokenLogprob]], as_sent: bool
) -> None:
    codes, tokens = case
    sequence: Sequence[TokenLogprob] = tokens
    if as_sent:
        raw = RawTokenLogprobs.from_openai(
            [
                {
                    "token": t.token,
                    "logprob": t.logprob,
                    "top_logprobs": t.top.raw
                    if isinstance(t.top, RawAlternatives)
                    else [{"token": k, "logprob": v} for k, v in t.top.items()],
                }
                for t in tokens
            ]
        )
        assert raw is not None
        sequence = raw
    full = reading(lambda: read_field_value_distribution(sequence, "category", codes))
    assert reading(lambda: early_field_distribution(sequence, "category", codes, complete=True)) == full
    at = value_token(tokens)
    for count in range(len(tokens) + 1):
        prefix = sequence[:count]
        early = reading(lambda prefix=prefix: early_field_distribution(prefix, "category", codes))
        assert early == (("none", None) if count <= at else full)


@given(st.dictionaries(identifiers, st.text(max_size=30), max_size=5), st.data())
def test_early_reading_of_a_reply_without_the_field_is_none_until_complete(
    fields: dict[str, str], data: st.DataObject
) -> None:
    text = json.dumps(fields)
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=max(1, len(text) - 1)))))
    pieces = [p for p in (text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)) if p]
    tokens = [TokenLogprob(p, -0.1, {p: -0.1, "A": -1.0}) for p in pieces]
    for count in range(len(tokens) + 1):
        assert early_field_distribution(tokens[:count], "category", ["A", "B"]) is None
    with pytest.raises(LogprobsUnusable) as info:
        early_field_distribution(tokens, "category", ["A", "B"], complete=True)
    assert info.value.reason in ("field_not_found", "no_logprobs")
