"""The confidence gate: precedence of hard rules, never_escalate and soft rules, as properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from triagegate.gate import HARD_REASONS, PREGATE_REASONS, TicketFacts, decide, pregate
from triagegate.models.base import Capabilities
from triagegate.spec import AlwaysEscalate, GatePolicy, NeverEscalate, TierSpec
from triagegate.types import Triage

CATEGORIES = ["billing", "shipping", "security", "feedback"]
PRIORITIES = ["low", "normal", "high", "urgent"]
COMPLEXITIES = ["low", "medium", "high"]

probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def policies(draw: st.DrawFn) -> GatePolicy:
    return GatePolicy(
        threshold=draw(probabilities),
        category_thresholds=draw(st.dictionaries(st.sampled_from(CATEGORIES), probabilities, max_size=3)),
        always_escalate=AlwaysEscalate(
            needs_vision_without_vision_model=draw(st.booleans()),
            suspected_injection=draw(st.booleans()),
            complexity=draw(st.lists(st.sampled_from(COMPLEXITIES), unique=True, max_size=2)),
            categories=draw(st.lists(st.sampled_from(CATEGORIES), unique=True, max_size=2)),
            priorities=draw(st.lists(st.sampled_from(PRIORITIES), unique=True, max_size=2)),
        ),
        never_escalate=NeverEscalate(
            categories=draw(st.lists(st.sampled_from(CATEGORIES), unique=True, max_size=2))
        ),
        on_missing_logprobs=draw(st.sampled_from(["escalate", "verbalized"])),
    )


@st.composite
def triages(draw: st.DrawFn, *, failed: bool | None = None) -> Triage:
    is_failed = draw(st.booleans()) if failed is None else failed
    method = "none" if is_failed else draw(st.sampled_from(["logprobs", "classifier", "verbalized"]))
    return Triage(
        category=draw(st.sampled_from(CATEGORIES)),
        priority=draw(st.sampled_from(PRIORITIES)),
        complexity=draw(st.sampled_from(COMPLEXITIES)),
        needs_vision=draw(st.booleans()),
        confidence=draw(probabilities),
        confidence_method=method,
        confidence_fallback=draw(st.sampled_from([None, "no_logprobs"])) if method == "verbalized" else None,
        flags=draw(st.lists(st.sampled_from(["suspected_injection", "other_flag"]), unique=True)),
        error="triage failed: boom" if is_failed else None,
    )


def expected_hard(triage: Triage, policy: GatePolicy, mini_has_vision: bool) -> list[str]:
    rules = policy.always_escalate
    hard = []
    if triage.confidence_method == "none" or triage.error is not None:
        hard.append("triage_failed")
    elif triage.confidence_fallback is not None and policy.on_missing_logprobs == "escalate":
        hard.append("logprobs_missing")
    if triage.needs_vision and not mini_has_vision and rules.needs_vision_without_vision_model:
        hard.append("needs_vision")
    if "suspected_injection" in triage.flags and rules.suspected_injection:
        hard.append("suspected_injection")
    return hard


def expected_soft(triage: Triage, policy: GatePolicy) -> list[str]:
    rules = policy.always_escalate
    threshold = policy.category_thresholds.get(triage.category, policy.threshold)
    soft = []
    if triage.complexity in rules.complexity:
        soft.append(f"complexity:{triage.complexity}")
    if triage.category in rules.categories:
        soft.append(f"category:{triage.category}")
    if triage.priority in rules.priorities:
        soft.append(f"priority:{triage.priority}")
    if triage.confidence < threshold:
        soft.append("low_confidence")
    return soft


def quiet_policy(**overrides: object) -> GatePolicy:
    """A policy whose only rule is the confidence threshold."""
    fields: dict[str, object] = {
        "threshold": 0.7,
        "always_escalate": AlwaysEscalate(
            needs_vision_without_vision_model=True,
            suspected_injection=True,
            complexity=[],
            categories=[],
            priorities=[],
        ),
    }
    fields.update(overrides)
    return GatePolicy.model_validate(fields)


def confident(**overrides: object) -> Triage:
    fields: dict[str, object] = {
        "category": "billing",
        "priority": "normal",
        "complexity": "low",
        "confidence": 0.95,
        "confidence_method": "logprobs",
    }
    fields.update(overrides)
    return Triage.model_validate(fields)


@given(triages(), policies(), st.booleans())
def test_reasons_are_exactly_the_matching_rules(triage: Triage, policy: GatePolicy, vision: bool) -> None:
    decision = decide(triage, policy, mini_has_vision=vision)
    hard = expected_hard(triage, policy, vision)
    soft = expected_soft(triage, policy)
    if hard:
        assert decision.route == "flagship"
        assert list(decision.reasons) == hard + soft
    elif triage.category in policy.never_escalate.categories:
        assert decision.route == "mini"
        assert decision.reasons == ()
    elif soft:
        assert decision.route == "flagship"
        assert list(decision.reasons) == soft
    else:
        assert decision.route == "mini"
        assert decision.reasons == ()
    assert decision.escalate == (decision.route == "flagship")
    assert decision.threshold == policy.category_thresholds.get(triage.category, policy.threshold)


@given(triages(failed=True), policies(), st.booleans())
def test_failed_triage_escalates_even_in_a_never_escalate_category(
    triage: Triage, policy: GatePolicy, vision: bool
) -> None:
    policy = policy.model_copy(update={"never_escalate": NeverEscalate(categories=list(CATEGORIES))})
    decision = decide(triage, policy, mini_has_vision=vision)
    assert decision.route == "flagship"
    assert decision.reasons[0] == "triage_failed"


@given(st.sampled_from(HARD_REASONS), st.sampled_from(CATEGORIES), probabilities)
def test_each_hard_reason_overrides_never_escalate(reason: str, category: str, confidence: float) -> None:
    policy = quiet_policy(never_escalate=NeverEscalate(categories=[category]))
    triage = confident(
        category=category,
        confidence=confidence,
        confidence_method="none" if reason == "triage_failed" else "verbalized",
        confidence_fallback="no_logprobs" if reason == "logprobs_missing" else None,
        needs_vision=reason == "needs_vision",
        flags=["suspected_injection"] if reason == "suspected_injection" else [],
    )
    decision = decide(triage, policy, mini_has_vision=False)
    assert decision.route == "flagship"
    assert reason in decision.reasons


@given(triages(failed=False), policies())
def test_never_escalate_keeps_mini_without_hard_reasons(triage: Triage, policy: GatePolicy) -> None:
    triage = triage.model_copy(update={"needs_vision": False, "flags": [], "confidence_fallback": None})
    policy = policy.model_copy(update={"never_escalate": NeverEscalate(categories=[triage.category])})
    # Make every soft rule match: it must still not escalate.
    policy = policy.model_copy(
        update={
            "threshold": 1.0,
            "category_thresholds": {},
            "always_escalate": AlwaysEscalate(
                complexity=[triage.complexity], categories=[triage.category], priorities=[triage.priority]
            ),
        }
    )
    decision = decide(triage, policy)
    assert decision.route == "mini"
    assert decision.reasons == ()


@given(threshold=probabilities, confidence=probabilities)
def test_confidence_threshold_alone_decides_when_no_rule_matches(threshold: float, confidence: float) -> None:
    decision = decide(confident(confidence=confidence), quiet_policy(threshold=threshold))
    if confidence >= threshold:
        assert decision.route == "mini"
        assert decision.reasons == ()
    else:
        assert decision.route == "flagship"
        assert decision.reasons == ("low_confidence",)


def test_confidence_exactly_at_threshold_keeps_mini() -> None:
    assert decide(confident(confidence=0.7), quiet_policy(threshold=0.7)).route == "mini"
    assert decide(confident(confidence=0.6999), quiet_policy(threshold=0.7)).route == "flagship"


@given(
    global_t=probabilities,
    category_t=probabilities,
    confidence=probabilities,
    category=st.sampled_from(CATEGORIES),
)
def test_category_threshold_overrides_the_global_one(
    global_t: float, category_t: float, confidence: float, category: str
) -> None:
    policy = quiet_policy(threshold=global_t, category_thresholds={category: category_t})
    decision = decide(confident(category=category, confidence=confidence), policy)
    assert decision.threshold == category_t
    assert decision.route == ("mini" if confidence >= category_t else "flagship")
    other = next(c for c in CATEGORIES if c != category)
    other_decision = decide(confident(category=other, confidence=confidence), policy)
    assert other_decision.threshold == global_t
    assert other_decision.route == ("mini" if confidence >= global_t else "flagship")


def test_category_threshold_can_be_stricter_or_looser_than_global() -> None:
    policy = quiet_policy(threshold=0.8, category_thresholds={"billing": 0.5, "shipping": 0.95})
    assert decide(confident(category="billing", confidence=0.6), policy).route == "mini"
    assert decide(confident(category="shipping", confidence=0.9), policy).reasons == ("low_confidence",)
    assert decide(confident(category="feedback", confidence=0.79), policy).route == "flagship"


def test_vision_rule_respects_mini_vision_and_policy_switch() -> None:
    needs = confident(needs_vision=True)
    assert decide(needs, quiet_policy(), mini_has_vision=False).reasons == ("needs_vision",)
    assert decide(needs, quiet_policy(), mini_has_vision=True).route == "mini"
    off = quiet_policy(
        always_escalate=AlwaysEscalate(needs_vision_without_vision_model=False, complexity=[], priorities=[])
    )
    assert decide(needs, off, mini_has_vision=False).route == "mini"


def test_injection_flag_escalates_even_at_full_confidence() -> None:
    triage = confident(confidence=1.0, flags=["suspected_injection"])
    decision = decide(triage, quiet_policy())
    assert decision.route == "flagship"
    assert decision.reasons == ("suspected_injection",)


def test_all_matching_reasons_are_reported_in_order() -> None:
    policy = quiet_policy(
        always_escalate=AlwaysEscalate(complexity=["high"], categories=["security"], priorities=["urgent"])
    )
    triage = confident(
        category="security",
        priority="urgent",
        complexity="high",
        confidence=0.1,
        needs_vision=True,
        flags=["suspected_injection"],
    )
    decision = decide(triage, policy)
    assert decision.reasons == (
        "needs_vision",
        "suspected_injection",
        "complexity:high",
        "category:security",
        "priority:urgent",
        "low_confidence",
    )


@given(triages(), policies(), st.booleans())
def test_decide_is_pure_and_deterministic(triage: Triage, policy: GatePolicy, vision: bool) -> None:
    triage_before = triage.model_dump()
    policy_before = policy.model_dump()
    first = decide(triage, policy, mini_has_vision=vision)
    second = decide(triage, policy, mini_has_vision=vision)
    assert first == second
    assert triage.model_dump() == triage_before
    assert policy.model_dump() == policy_before


def test_unusable_logprobs_escalate_by_default_whatever_the_stated_confidence() -> None:
    triage = confident(confidence=0.99, confidence_method="verbalized", confidence_fallback="no_logprobs")
    decision = decide(triage, quiet_policy())
    assert decision.route == "flagship"
    assert decision.reasons == ("logprobs_missing",)
    assert "logprobs_missing" in HARD_REASONS


def test_on_missing_logprobs_verbalized_gates_the_stated_confidence() -> None:
    policy = quiet_policy(on_missing_logprobs="verbalized")
    kept = confident(confidence=0.99, confidence_method="verbalized", confidence_fallback="no_logprobs")
    assert decide(kept, policy).route == "mini"
    low = kept.model_copy(update={"confidence": 0.2})
    assert decide(low, policy).reasons == ("low_confidence",)


# The pre-gate: what is known before a tier runs skips it without a call.

FLAGS = ["suspected_injection", "other_flag"]


@st.composite
def facts(draw: st.DrawFn) -> TicketFacts:
    return TicketFacts(
        has_images=draw(st.booleans()),
        flags=tuple(draw(st.lists(st.sampled_from(FLAGS), unique=True, max_size=2))),
        category=draw(st.none() | st.sampled_from(CATEGORIES)),
    )


@st.composite
def tiers(draw: st.DrawFn) -> TierSpec:
    return TierSpec(
        name="t",
        model="m",
        prompt="triage.md",
        categories=draw(
            st.none() | st.lists(st.sampled_from(CATEGORIES), unique=True, min_size=1, max_size=3)
        ),
        gate=draw(st.none() | policies()),
    )


@given(facts(), tiers(), st.booleans())
def test_pregate_reasons_are_exactly_the_rules_that_apply(
    facts: TicketFacts, tier: TierSpec, vision: bool
) -> None:
    expected = []
    rules = tier.gate.always_escalate if tier.gate else None
    if rules and facts.has_images and not vision and rules.needs_vision_without_vision_model:
        expected.append("needs_vision")
    if rules and "suspected_injection" in facts.flags and rules.suspected_injection:
        expected.append("suspected_injection")
    if tier.categories is not None and facts.category is None:
        expected.append("category_unknown")
    if tier.categories is not None and facts.category is not None and facts.category not in tier.categories:
        expected.append("category_not_served")
    reasons = pregate(facts, tier, Capabilities(vision=vision))
    assert list(reasons) == expected
    assert set(reasons) <= set(PREGATE_REASONS)
    assert pregate(facts, tier, Capabilities(vision=vision)) == reasons


@given(facts(), st.booleans())
def test_a_tier_without_gate_or_filter_is_never_skipped(facts: TicketFacts, vision: bool) -> None:
    """The last tier has neither (the graph file refuses them), so it answers what reaches it."""
    last = TierSpec(name="last", model="m", prompt="escalate.md")
    assert pregate(facts, last, Capabilities(vision=vision)) == ()


def test_an_image_skips_a_tier_that_cannot_see_it_unless_its_gate_allows_it() -> None:
    tier = TierSpec(name="t", model="m", prompt="triage.md", gate=GatePolicy())
    image = TicketFacts(has_images=True)
    assert pregate(image, tier, Capabilities(vision=False)) == ("needs_vision",)
    assert pregate(image, tier, Capabilities(vision=True)) == ()
    relaxed = tier.model_copy(
        update={"gate": GatePolicy(always_escalate=AlwaysEscalate(needs_vision_without_vision_model=False))}
    )
    assert pregate(image, relaxed, Capabilities(vision=False)) == ()


def test_a_specialist_skips_other_categories_and_unknown_ones() -> None:
    tier = TierSpec(name="billing", model="m", prompt="triage.md", categories=["billing"], gate=GatePolicy())
    assert pregate(TicketFacts(category="billing"), tier, Capabilities()) == ()
    assert pregate(TicketFacts(category="shipping"), tier, Capabilities()) == ("category_not_served",)
    assert pregate(TicketFacts(), tier, Capabilities()) == ("category_unknown",)
    both = TicketFacts(flags=("suspected_injection",), category="shipping")
    assert pregate(both, tier, Capabilities()) == ("suspected_injection", "category_not_served")
