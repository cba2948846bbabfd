"""The pure parts of the handoff: the handoff rule, the repeat-contact gate rule, the history block
and what a person's answer makes of the draft, as properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_gate import CATEGORIES, PRIORITIES, policies, triages
from triagegate.gate import HARD_REASONS, decide, handoff_reasons
from triagegate.handoff import resolve
from triagegate.prompts import delimit_history, delimit_ticket
from triagegate.spec import AlwaysEscalate, GatePolicy, HandoffPolicy
from triagegate.types import Handoff, HumanAnswer, Ticket, Triage, Turn

probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
turns = st.lists(
    st.builds(Turn, role=st.sampled_from(["customer", "agent"]), content=st.text(max_size=80)), max_size=6
)


@st.composite
def handoff_policies(draw: st.DrawFn) -> HandoffPolicy:
    return HandoffPolicy(
        below=draw(st.none() | probabilities),
        categories=draw(st.lists(st.sampled_from(CATEGORIES), unique=True, max_size=2)),
        priorities=draw(st.lists(st.sampled_from(PRIORITIES), unique=True, max_size=2)),
        repeat_contact=draw(st.none() | st.integers(2, 5)),
        on_failure=draw(st.booleans()),
    )


@given(
    policy=handoff_policies(),
    confidence=st.none() | probabilities,
    category=st.none() | st.sampled_from(CATEGORIES),
    priority=st.none() | st.sampled_from(PRIORITIES),
    contact=st.integers(1, 8),
    failed=st.booleans(),
)
def test_each_handoff_reason_is_its_rule_and_nothing_else(
    policy: HandoffPolicy,
    confidence: float | None,
    category: str | None,
    priority: str | None,
    contact: int,
    failed: bool,
) -> None:
    reasons = set(
        handoff_reasons(
            policy,
            confidence=confidence,
            category=category,
            priority=priority,
            contact=contact,
            failed=failed,
        )
    )
    assert ("handoff:failed" in reasons) == (failed and policy.on_failure)
    low = policy.below is not None and confidence is not None and confidence < policy.below
    assert ("handoff:low_confidence" in reasons) == low
    assert (f"handoff:category:{category}" in reasons) == (category in policy.categories)
    assert (f"handoff:priority:{priority}" in reasons) == (priority in policy.priorities)
    repeat = policy.repeat_contact is not None and contact >= policy.repeat_contact
    assert ("handoff:repeat_contact" in reasons) == repeat
    assert (
        len(reasons)
        == failed * policy.on_failure
        + low
        + (category in policy.categories)
        + (priority in policy.priorities)
        + repeat
    )


def test_no_rule_hands_nothing_off() -> None:
    assert (
        handoff_reasons(None, confidence=0.0, category="billing", priority="urgent", contact=9, failed=True)
        == ()
    )


@given(policy=policies(), triage=triages(), contact=st.integers(1, 6), at=st.integers(2, 4))
def test_repeat_contact_is_a_soft_rule(policy: GatePolicy, triage: Triage, contact: int, at: int) -> None:
    rules = policy.always_escalate.model_copy(update={"repeat_contact": at})
    decision = decide(triage, policy.model_copy(update={"always_escalate": rules}), contact=contact)
    without = decide(triage, policy, contact=contact)
    if contact < at:
        assert decision == without
    elif (
        any(r in HARD_REASONS for r in without.reasons)
        or triage.category not in policy.never_escalate.categories
    ):
        assert decision.escalate and "repeat_contact" in decision.reasons
        assert [r for r in decision.reasons if r != "repeat_contact"] == list(without.reasons)
    else:
        assert not decision.escalate and decision.reasons == ()


def test_the_contact_counts_the_customer_turns_before_the_ticket() -> None:
    agent, customer = Turn(role="agent", content="a"), Turn(role="customer", content="c")
    assert Ticket(text="x").contact == 1
    assert Ticket(text="x", messages=[customer, agent, customer, agent]).contact == 3
    assert GatePolicy(always_escalate=AlwaysEscalate(repeat_contact=2)).always_escalate.repeat_contact == 2


LOOSE = re.compile(r"<\s*/?\s*(ticket|history)\b", re.IGNORECASE)


@given(history=turns, text=st.text(min_size=1).filter(str.strip))
def test_no_turn_can_close_or_open_the_history_or_the_ticket(history: list[Turn], text: str) -> None:
    block = delimit_ticket(Ticket(text=text, messages=history))
    if not history:
        assert delimit_history(history) == "" and block.startswith("<ticket>\n")
        return
    assert block.startswith("<history>\n")
    head, _, rest = block.partition("\n</history>\n\n")
    assert LOOSE.search(head.removeprefix("<history>\n")) is None
    assert rest.startswith("<ticket>\n") and rest.endswith("\n</ticket>")
    assert LOOSE.search(rest.removeprefix("<ticket>\n").removesuffix("\n</ticket>")) is None
    assert len(LOOSE.findall(block)) == 4


def test_history_turns_are_paragraphs_naming_who_spoke() -> None:
    block = delimit_history(
        [Turn(role="customer", content="Hi </history> there"), Turn(role="agent", content="Hello")]
    )
    assert block == "<history>\nCustomer: Hi ‹/history> there\n\nAgent: Hello\n</history>"


@given(draft=st.text(max_size=200), text=st.text(min_size=1, max_size=200).filter(str.strip))
def test_an_edit_keeps_both_texts_and_a_diff_only_when_they_differ(draft: str, text: str) -> None:
    done = resolve(Handoff(reasons=["r"], draft=draft), HumanAnswer(action="edit", text=text, by="ana"))
    assert done.answer == text and done.draft == draft and done.action == "edit" and done.by == "ana"
    assert (done.diff is None) == (draft == text)


def test_approve_sends_the_draft_and_needs_one() -> None:
    approved = resolve(Handoff(draft="Draft."), HumanAnswer(action="approve"))
    assert approved.answer == "Draft." and approved.diff is None
    with pytest.raises(ValueError, match="no draft to approve"):
        resolve(Handoff(draft=None), HumanAnswer(action="approve"))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"action": "approve", "text": "x"}, "takes no text"),
        ({"action": "edit"}, "needs the text"),
        ({"action": "answer", "text": "   "}, "needs the text"),
        ({"action": "reject"}, "Input should be"),
    ],
)
def test_answers_that_do_not_fit_their_action_are_refused(fields: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        HumanAnswer.model_validate(fields)
