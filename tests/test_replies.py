"""Model requests and reply parsing: option codes, log-probability confidence, schema validation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triagegate.errors import BadModelOutput
from triagegate.models.base import (
    Capabilities,
    ChatRequest,
    ChatResult,
    ImagePart,
    RawAlternatives,
    TokenLogprob,
)
from triagegate.prompts import Template, load_template
from triagegate.replies import (
    TOP_LOGPROBS,
    answer_request,
    category_codes,
    escalate_request,
    mini_triage_summary,
    parse_escalation,
    parse_triage,
    triage_confidence_method,
    triage_request,
)
from triagegate.spec import GraphSpec, load_spec
from triagegate.types import Attachment, Ticket, Triage, Usage

SCRIPTED = Path(__file__).resolve().parent / "graphs" / "scripted.yaml"
LOADED = load_spec(SCRIPTED, environ={})
SPEC: GraphSpec = LOADED.spec
CODES = {"A": "billing", "B": "shipping", "C": "security", "D": "feedback"}


def template(node: str) -> Template:
    return load_template(LOADED.prompts_dir, f"{node}.md", node=node)


def ticket(text: str = "I was charged twice this month.", **fields: Any) -> Ticket:
    return Ticket(id="t-1", text=text, **fields)


NO_CAPS = Capabilities()


def make_request(caps: Capabilities = NO_CAPS, images: list[ImagePart] | None = None) -> ChatRequest:
    return triage_request(template("triage"), SPEC, ticket(), images or [], caps, SPEC.tier("mini"))


def result(text: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> ChatResult:
    return ChatResult(text=text, model="m", endpoint="e", usage=Usage(), latency_ms=1.0, logprobs=logprobs)


def triage_json(**overrides: Any) -> str:
    reply: dict[str, Any] = {
        "category": "A",
        "priority": "normal",
        "complexity": "low",
        "needs_vision": False,
        "answer": "We will refund the duplicate charge.",
        "confidence": 0.42,
    }
    reply.update(overrides)
    return json.dumps(reply)


def tokens_for(text: str, value_start: int, top: dict[str, float]) -> tuple[TokenLogprob, ...]:
    """Split ``text`` into three tokens so the middle one starts at ``value_start``; give it ``top``."""
    first = text[:value_start]
    middle = text[value_start]
    rest = text[value_start + 1 :]
    return (
        TokenLogprob(first, -0.01),
        TokenLogprob(middle, top.get(middle, -0.5), top),
        TokenLogprob(rest, -0.01),
    )


def logprob_tokens(text: str, top: dict[str, float]) -> tuple[TokenLogprob, ...]:
    start = text.index('"category": "') + len('"category": "')
    return tokens_for(text, start, top)


# Requests


def test_category_codes_are_letters_in_taxonomy_order() -> None:
    assert category_codes(SPEC) == CODES


def test_triage_request_schema_has_category_first_with_option_codes() -> None:
    request = make_request()
    assert request.json_schema is not None
    schema = request.json_schema.schema
    properties = schema["properties"]
    assert next(iter(properties)) == "category"
    assert properties["category"]["enum"] == ["A", "B", "C", "D"]
    assert properties["priority"]["enum"] == SPEC.taxonomy.priorities
    assert schema["required"] == list(properties)
    assert schema["additionalProperties"] is False


def test_triage_request_puts_codes_in_system_and_ticket_in_user() -> None:
    request = make_request()
    system, user = request.messages
    assert system.role == "system"
    assert user.role == "user"
    assert "A) billing: charges and invoices" in system.text
    assert "D) feedback" in system.text
    assert "charged twice" not in system.text
    assert user.text == "<ticket>\nI was charged twice this month.\n</ticket>"
    assert request.max_tokens == SPEC.tier("mini").max_tokens


@pytest.mark.parametrize(("logprobs", "expected"), [(True, TOP_LOGPROBS), (False, 0)])
def test_logprobs_requested_only_when_the_backend_has_them(logprobs: bool, expected: int) -> None:
    assert make_request(Capabilities(logprobs=logprobs)).top_logprobs == expected


def test_images_go_to_a_vision_model_only() -> None:
    images = [ImagePart("data:image/png;base64,AAAA")]
    with_vision = make_request(Capabilities(vision=True), images)
    without = make_request(Capabilities(vision=False), images)
    assert with_vision.messages[-1].images == tuple(images)
    assert without.messages[-1].images == ()


def test_attachment_note_says_whether_images_are_visible() -> None:
    t = ticket(attachments=[Attachment.image("shot.png")])
    images = [ImagePart("data:image/png;base64,AAAA")]
    seen = triage_request(template("triage"), SPEC, t, images, Capabilities(vision=True), SPEC.tier("mini"))
    unseen = triage_request(
        template("triage"), SPEC, t, images, Capabilities(vision=False), SPEC.tier("mini")
    )
    assert "1 image attachment(s), included below" in seen.messages[0].text
    assert "1 image attachment(s), not visible to you" in unseen.messages[0].text


# parse_triage: verbalized confidence


def test_parse_triage_maps_code_to_name_with_verbalized_confidence() -> None:
    triage = parse_triage(result(triage_json(category="B")), SPEC, make_request())
    assert triage.category == "shipping"
    assert triage.priority == "normal"
    assert triage.confidence == 0.42
    assert triage.confidence_method == "verbalized"
    assert triage.answer == "We will refund the duplicate charge."


@pytest.mark.parametrize(("written", "read"), [(95, 0.95), (80.0, 0.8), (100, 1.0), (1, 1.0), (0, 0.0)])
def test_whole_percentages_are_read_as_fractions(written: float, read: float) -> None:
    triage = parse_triage(result(triage_json(confidence=written)), SPEC, make_request())
    assert triage.confidence == pytest.approx(read)


def test_parse_triage_accepts_a_fenced_reply_and_blank_answer() -> None:
    fenced = "```json\n" + triage_json(answer="   ") + "\n```"
    triage = parse_triage(result(fenced), SPEC, make_request())
    assert triage.category == "billing"
    assert triage.answer is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json at all", "not valid JSON"),
        ('{"category": "A"', "not valid JSON"),
        ("[1, 2]", "schema"),
        (triage_json(category="Z"), "option codes"),
        (triage_json(category="billing"), "option codes"),
        (triage_json(priority="whenever"), "priority"),
        (triage_json(complexity="extreme"), "complexity"),
        (triage_json(confidence=1.5), "confidence"),
        (triage_json(confidence=101), "confidence"),
        (triage_json(confidence=-3), "confidence"),
        (json.dumps({"category": "A", "priority": "normal"}), "schema"),
    ],
)
def test_parse_triage_rejects_bad_replies(text: str, problem: str) -> None:
    with pytest.raises(BadModelOutput) as info:
        parse_triage(result(text), SPEC, make_request())
    assert problem in str(info.value)
    assert info.value.model == "m"


# parse_triage: log-probability confidence


def test_logprob_distribution_gives_the_confidence() -> None:
    text = triage_json(category="B", confidence=0.99)
    top = {"B": math.log(0.6), "A": math.log(0.3), "C": math.log(0.1)}
    triage = parse_triage(
        result(text, logprob_tokens(text, top)), SPEC, make_request(Capabilities(logprobs=True))
    )
    assert triage.category == "shipping"
    assert triage.confidence_method == "logprobs"
    assert triage.confidence == pytest.approx(0.6)
    assert triage.alternatives == pytest.approx({"billing": 0.3, "security": 0.1})


def test_logprob_mass_on_non_codes_is_renormalised_away() -> None:
    text = triage_json(category="A")
    top = {"A": math.log(0.5), "B": math.log(0.25), "{": math.log(0.2), " ": math.log(0.05)}
    triage = parse_triage(
        result(text, logprob_tokens(text, top)), SPEC, make_request(Capabilities(logprobs=True))
    )
    assert triage.confidence == pytest.approx(2 / 3)
    assert list(triage.alternatives) == ["shipping"]


def test_logprobs_when_the_code_shares_a_token_with_the_quote() -> None:
    text = triage_json(category="C")
    quote = text.index('"category": "') + len('"category": ')
    top = {'"C': math.log(0.8), '"D': math.log(0.2)}
    tokens = (
        TokenLogprob(text[:quote], -0.01),
        TokenLogprob(text[quote : quote + 2], math.log(0.8), top),
        TokenLogprob(text[quote + 2 :], -0.01),
    )
    triage = parse_triage(result(text, tokens), SPEC, make_request(Capabilities(logprobs=True)))
    assert triage.category == "security"
    assert triage.confidence == pytest.approx(0.8)
    assert triage.confidence_method == "logprobs"


@given(st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=4, max_size=4), st.sampled_from("ABCD"))
def test_logprob_confidence_is_the_normalised_probability(weights: list[float], chosen: str) -> None:
    text = triage_json(category=chosen)
    top = {code: math.log(w) for code, w in zip("ABCD", weights, strict=True)}
    triage = parse_triage(
        result(text, logprob_tokens(text, top)), SPEC, make_request(Capabilities(logprobs=True))
    )
    expected = weights["ABCD".index(chosen)] / sum(weights)
    assert triage.confidence == pytest.approx(expected)
    assert triage.category == CODES[chosen]
    assert sum(triage.alternatives.values()) <= 1.0 - triage.confidence + 1e-9


def test_logprobs_ignored_when_not_requested() -> None:
    text = triage_json(category="A", confidence=0.42)
    tokens = logprob_tokens(text, {"A": math.log(0.9), "B": math.log(0.1)})
    triage = parse_triage(result(text, tokens), SPEC, make_request(Capabilities(logprobs=False)))
    assert triage.confidence_method == "verbalized"
    assert triage.confidence == 0.42
    assert triage.confidence_fallback is None


@pytest.mark.parametrize("tokens", [None, ()])
def test_missing_logprobs_fall_back_to_verbalized(tokens: tuple[TokenLogprob, ...] | None) -> None:
    triage = parse_triage(result(triage_json(), tokens), SPEC, make_request(Capabilities(logprobs=True)))
    assert triage.confidence_method == "verbalized"
    assert triage.confidence == 0.42
    assert triage.confidence_fallback == "no_logprobs"


def test_logprobs_without_the_category_field_fall_back_to_verbalized() -> None:
    text = triage_json(category="A")
    truncated = (TokenLogprob('{"cat', -0.1, {}),)
    triage = parse_triage(result(text, truncated), SPEC, make_request(Capabilities(logprobs=True)))
    assert triage.confidence_method == "verbalized"
    assert triage.confidence == 0.42
    assert triage.confidence_fallback == "field_not_found"


def test_logprobs_with_no_option_code_at_the_value_fall_back_to_verbalized() -> None:
    text = triage_json(category="A")
    tokens = logprob_tokens(text.replace('"category": "A"', '"category": "x"'), {"x": -0.1, "{": -2.0})
    triage = parse_triage(result(text, tokens), SPEC, make_request(Capabilities(logprobs=True)))
    assert triage.confidence_method == "verbalized"
    assert triage.confidence_fallback == "no_option_code"


def test_malformed_alternatives_at_the_value_fall_back_with_their_reason() -> None:
    text = triage_json(category="A")
    tokens = logprob_tokens(text, {"A": -0.1})
    bad = (tokens[0], TokenLogprob("A", -0.1, RawAlternatives(["not", "objects"])), tokens[2])
    triage = parse_triage(result(text, bad), SPEC, make_request(Capabilities(logprobs=True)))
    assert (triage.confidence_method, triage.confidence_fallback) == ("verbalized", "malformed_alternatives")


def test_usable_logprobs_record_no_fallback() -> None:
    text = triage_json(category="A")
    tokens = logprob_tokens(text, {"A": math.log(0.9), "B": math.log(0.1)})
    triage = parse_triage(result(text, tokens), SPEC, make_request(Capabilities(logprobs=True)))
    assert (triage.confidence_method, triage.confidence_fallback) == ("logprobs", None)


@pytest.mark.parametrize(
    ("caps", "method"),
    [
        (Capabilities(logprobs=True), "logprobs"),
        (Capabilities(logprobs=False), "verbalized"),
        (Capabilities(chat=False, classify=True), "classifier"),
    ],
)
def test_triage_confidence_method_is_what_the_request_asks_for(caps: Capabilities, method: str) -> None:
    assert triage_confidence_method(caps, SPEC) == method
    if caps.chat:
        assert (make_request(caps).top_logprobs > 0) == (method == "logprobs")


def test_a_taxonomy_too_large_for_option_codes_states_its_confidence() -> None:
    many = SPEC.model_copy(
        update={
            "taxonomy": SPEC.taxonomy.model_copy(
                update={
                    "categories": [
                        SPEC.taxonomy.categories[0].model_copy(update={"name": f"c{i}"}) for i in range(53)
                    ]
                }
            )
        }
    )
    assert triage_confidence_method(Capabilities(logprobs=True), many) == "verbalized"


def test_sampled_code_counts_even_when_missing_from_top() -> None:
    text = triage_json(category="A")
    tokens = logprob_tokens(text, {"B": math.log(0.25), "{": math.log(0.5)})
    tokens = (tokens[0], TokenLogprob("A", math.log(0.25), tokens[1].top), tokens[2])
    triage = parse_triage(result(text, tokens), SPEC, make_request(Capabilities(logprobs=True)))
    assert triage.confidence_method == "logprobs"
    assert triage.confidence == pytest.approx(0.5)


# Escalation


def test_escalate_request_carries_mini_triage_and_ticket() -> None:
    triage = Triage(
        category="billing",
        priority="normal",
        confidence=0.31,
        confidence_method="logprobs",
        answer="draft reply",
    )
    request = escalate_request(
        template("escalate"), SPEC, ticket(), triage, [], SPEC.tier("flagship"), vision=True
    )
    system, user = request.messages
    assert "category: billing (confidence 0.31, logprobs)" in user.text
    assert "draft answer: draft reply" in user.text
    assert "draft reply" not in system.text
    assert "- billing: charges and invoices" in system.text
    assert "I was charged twice" in user.text
    assert request.json_schema is not None
    assert request.json_schema.schema["properties"]["category"]["enum"] == SPEC.taxonomy.category_names


def test_summary_of_a_failed_triage_says_so() -> None:
    failed = Triage(
        category="unknown",
        priority="normal",
        confidence=0.0,
        confidence_method="none",
        error="triage failed: X",
    )
    assert (
        mini_triage_summary(failed)
        == "The first-tier triage failed (triage failed: X); classify the ticket yourself."
    )


def test_answer_request_describes_the_category() -> None:
    triage = Triage(category="shipping", priority="low", confidence=0.9, confidence_method="classifier")
    draft = SPEC.first_tier.draft
    assert draft is not None
    request = answer_request(template("answer"), SPEC, ticket(), triage, [], draft)
    assert "**shipping**" in request.messages[0].text
    assert "(deliveries)" in request.messages[0].text
    assert request.json_schema is None
    assert request.max_tokens == draft.max_tokens


def escalation_json(**overrides: Any) -> str:
    reply = {"category": "security", "priority": "urgent", "answer": "We locked your account."}
    reply.update(overrides)
    return json.dumps(reply)


def test_parse_escalation_accepts_a_valid_reply() -> None:
    reply = parse_escalation(result(escalation_json()), SPEC)
    assert (reply.category, reply.priority, reply.answer) == ("security", "urgent", "We locked your account.")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (escalation_json(category="C"), "not in the taxonomy"),
        (escalation_json(category="fraud"), "not in the taxonomy"),
        (escalation_json(priority="p0"), "not in the taxonomy"),
        (escalation_json(answer=""), "answer"),
        (json.dumps({"category": "security", "priority": "urgent"}), "answer"),
        ("Sure! Here is my answer.", "not valid JSON"),
    ],
)
def test_parse_escalation_rejects_bad_replies(text: str, problem: str) -> None:
    with pytest.raises(BadModelOutput) as info:
        parse_escalation(result(text), SPEC)
    assert problem in str(info.value)


def test_parse_escalation_rejects_a_blank_answer() -> None:
    with pytest.raises(BadModelOutput):
        parse_escalation(result(escalation_json(answer=" \n ")), SPEC)


def test_raw_newlines_inside_json_strings_are_tolerated() -> None:
    from triagegate.models.base import ChatResult
    from triagegate.replies import _load_json
    from triagegate.types import Usage

    result = ChatResult(
        text='{"answer": "line one\nline two"}', model="m", endpoint="e", usage=Usage(), latency_ms=0
    )
    assert _load_json(result) == {"answer": "line one\nline two"}
