"""Building each node's model request and turning the reply into a typed result.

The triage schema puts ``category`` first and asks for a one-character option code, so
the token that starts its value carries the model's distribution over the categories
(see :mod:`triagegate.confidence`). Replies are validated with pydantic; anything that
does not fit raises :class:`BadModelOutput` for the node to repair once or record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from triagegate.confidence import (
    OPTION_CODES,
    LogprobsUnusable,
    early_field_distribution,
    option_codes,
    read_field_value_distribution,
)
from triagegate.errors import BadModelOutput
from triagegate.models.base import (
    Capabilities,
    ChatRequest,
    ChatResult,
    ClassifyRequest,
    ImagePart,
    JsonSchema,
    Message,
    PartialReply,
    StreamVerdict,
)
from triagegate.prompts import Template, delimit_ticket
from triagegate.spec import GraphSpec, NodeSpec
from triagegate.types import ConfidenceMethod, Ticket, Triage

TOP_LOGPROBS = 20


class TriageReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    category: str
    priority: str
    complexity: Literal["low", "medium", "high"]
    needs_vision: bool = False
    answer: str
    confidence: float = Field(ge=0.0, le=1.0)

    @field_validator("confidence", mode="before")
    @classmethod
    def _percent_as_fraction(cls, value: Any) -> Any:
        """Small models often write a percentage (``95``) despite the schema's 0-1 range, and
        constrained decoding does not enforce numeric bounds. A whole number from 2 to 100 is
        read as a percentage; anything else outside 0-1 (``1.5``) is still rejected."""
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and 2 <= value <= 100
            and value % 1 == 0
        ):
            return value / 100.0
        return value


class EscalationReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    category: str
    priority: str
    answer: str = Field(min_length=1)


def category_codes(spec: GraphSpec) -> dict[str, str] | None:
    """``{code: category}`` when the taxonomy is small enough for one-token option codes."""
    names = spec.taxonomy.category_names
    if len(names) > len(OPTION_CODES):
        return None
    return dict(zip(option_codes(len(names)), names, strict=True))


def _categories_block(spec: GraphSpec, codes: dict[str, str] | None) -> str:
    code_of = {name: code for code, name in codes.items()} if codes else {}
    lines = []
    for cat in spec.taxonomy.categories:
        label = f"{code_of[cat.name]}) {cat.name}" if codes else f"- {cat.name}"
        lines.append(f"{label}: {cat.description}" if cat.description else label)
    return "\n".join(lines)


def _attachments_note(ticket: Ticket, images: list[ImagePart], caps_vision: bool) -> str:
    count = len(ticket.attachments)
    if not count:
        return "The ticket has no attachments."
    seen = "included below" if caps_vision and images else "not visible to you"
    return f"The ticket has {count} image attachment(s), {seen}."


def _user_message(text: str, images: list[ImagePart], vision: bool) -> Message:
    return Message("user", text, tuple(images) if vision else ())


def _schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def triage_confidence_method(caps: Capabilities, spec: GraphSpec) -> ConfidenceMethod:
    """Where a triage model bound with ``caps`` takes its confidence from, when its replies deliver.

    ``logprobs`` needs the capability and a taxonomy small enough for one-token option codes;
    a backend that cannot chat is a ``classifier``; anything else states its confidence.
    """
    if not caps.chat:
        return "classifier"
    return "logprobs" if caps.logprobs and category_codes(spec) else "verbalized"


def triage_request(
    template: Template,
    spec: GraphSpec,
    ticket: Ticket,
    images: list[ImagePart],
    caps: Capabilities,
    node: NodeSpec,
    *,
    articles: str = "",
) -> ChatRequest:
    """The triage request; ``articles`` is the ``{{articles}}`` block (:func:`triagegate.prompts.articles_block`)."""
    codes = category_codes(spec)
    system, user = template.render(
        {
            "ticket": delimit_ticket(ticket),
            "categories": _categories_block(spec, codes),
            "priorities": ", ".join(spec.taxonomy.priorities),
            "attachments": _attachments_note(ticket, images, caps.vision),
            "articles": articles,
        }
    )
    schema = _schema(
        {
            "category": {"type": "string", "enum": list(codes) if codes else spec.taxonomy.category_names},
            "priority": {"type": "string", "enum": spec.taxonomy.priorities},
            "complexity": {"type": "string", "enum": ["low", "medium", "high"]},
            "needs_vision": {"type": "boolean"},
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        }
    )
    return ChatRequest(
        messages=(Message("system", system), _user_message(user, images, caps.vision)),
        json_schema=JsonSchema("triage", schema),
        max_tokens=node.max_tokens,
        temperature=node.temperature,
        top_logprobs=TOP_LOGPROBS if triage_confidence_method(caps, spec) == "logprobs" else 0,
    )


def _load_json(result: ChatResult) -> Any:
    """Parse a JSON reply, tolerating raw newlines inside strings (grammar-constrained servers emit them)."""
    text = result.text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise BadModelOutput(
            f"reply is not valid JSON ({exc.msg} at char {exc.pos})", model=result.model
        ) from None


def _validate(model: type[BaseModel], data: Any, result: ChatResult) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "reply"
        raise BadModelOutput(
            f"reply does not match the schema: {where}: {first['msg']}", model=result.model
        ) from None


def parse_triage(result: ChatResult, spec: GraphSpec, request: ChatRequest) -> Triage:
    """The triage in ``result``, with its confidence read from log-probabilities when the
    request asked for them. When it did and the reply's are unusable, the confidence is the
    model's stated one and ``confidence_fallback`` says why (the gate decides what that means)."""
    reply: TriageReply = _validate(TriageReply, _load_json(result), result)
    codes = category_codes(spec)
    names = spec.taxonomy.category_names
    if codes:
        if reply.category not in codes:
            raise BadModelOutput(
                f"category {reply.category!r} is not one of the option codes", model=result.model
            )
        category = codes[reply.category]
    elif reply.category in names:
        category = reply.category
    else:
        raise BadModelOutput(f"category {reply.category!r} is not in the taxonomy", model=result.model)
    if reply.priority not in spec.taxonomy.priorities:
        raise BadModelOutput(f"priority {reply.priority!r} is not in the taxonomy", model=result.model)
    distribution: dict[str, float] | None = None
    fallback: str | None = None
    if codes and request.top_logprobs:
        try:
            distribution = read_field_value_distribution(result.logprobs, "category", list(codes))
        except LogprobsUnusable as exc:
            fallback = exc.reason
    if distribution is not None and codes is not None:
        by_name = {codes[c]: p for c, p in distribution.items()}
        others = sorted(
            ((n, p) for n, p in by_name.items() if n != category and p > 0), key=lambda kv: -kv[1]
        )
        return Triage(
            category=category,
            priority=reply.priority,
            complexity=reply.complexity,
            needs_vision=reply.needs_vision,
            answer=reply.answer.strip() or None,
            confidence=min(1.0, max(0.0, by_name[category])),
            confidence_method="logprobs",
            alternatives=dict(others[:3]),
        )
    return Triage(
        category=category,
        priority=reply.priority,
        complexity=reply.complexity,
        needs_vision=reply.needs_vision,
        answer=reply.answer.strip() or None,
        confidence=reply.confidence,
        confidence_method="verbalized",
        confidence_fallback=fallback,
    )


def classify_request(spec: GraphSpec, ticket: Ticket) -> ClassifyRequest:
    text = f"{ticket.subject}\n{ticket.text}" if ticket.subject else ticket.text
    descriptions = "\n".join(f"{c.name}: {c.description}" for c in spec.taxonomy.categories if c.description)
    return ClassifyRequest(text=text, labels=tuple(spec.taxonomy.category_names), instructions=descriptions)


def answer_request(
    template: Template,
    spec: GraphSpec,
    ticket: Ticket,
    triage: Triage,
    images: list[ImagePart],
    node: NodeSpec | None = None,
    *,
    articles: str = "",
) -> ChatRequest:
    """The drafting request; ``node`` (a tier's ``draft``) sets the budget (512 tokens, temperature 0
    without), ``articles`` the ``{{articles}}`` block."""
    category = spec.taxonomy.category(triage.category)
    system, user = template.render(
        {
            "ticket": delimit_ticket(ticket),
            "category": triage.category,
            "category_description": category.description if category else "",
            "priority": triage.priority,
            "attachments": _attachments_note(ticket, images, False),
            "articles": articles,
        }
    )
    return ChatRequest(
        messages=(Message("system", system), Message("user", user)),
        max_tokens=node.max_tokens if node else 512,
        temperature=node.temperature if node else 0.0,
    )


def mini_triage_summary(triage: Triage | None) -> str:
    """What the last tier is told of the previous tier's triage (``None``: no tier triaged the ticket)."""
    if triage is None:
        return "No earlier tier triaged this ticket; classify it yourself."
    if triage.error:
        return f"The first-tier triage failed ({triage.error}); classify the ticket yourself."
    lines = [
        f"category: {triage.category} (confidence {triage.confidence:.2f}, {triage.confidence_method})",
        f"priority: {triage.priority}",
        f"complexity: {triage.complexity}",
    ]
    if triage.answer:
        lines.append(f"draft answer: {triage.answer}")
    return "\n".join(lines)


def escalate_request(
    template: Template,
    spec: GraphSpec,
    ticket: Ticket,
    triage: Triage | None,
    images: list[ImagePart],
    node: NodeSpec,
    *,
    vision: bool = True,
    articles: str = "",
) -> ChatRequest:
    """The last tier's request; ``articles`` is the ``{{articles}}`` block."""
    system, user = template.render(
        {
            "ticket": delimit_ticket(ticket),
            "categories": _categories_block(spec, None),
            "priorities": ", ".join(spec.taxonomy.priorities),
            "attachments": _attachments_note(ticket, images, vision),
            "mini_triage": mini_triage_summary(triage),
            "articles": articles,
        }
    )
    schema = _schema(
        {
            "category": {"type": "string", "enum": spec.taxonomy.category_names},
            "priority": {"type": "string", "enum": spec.taxonomy.priorities},
            "answer": {"type": "string"},
        }
    )
    return ChatRequest(
        messages=(Message("system", system), _user_message(user, images, vision)),
        json_schema=JsonSchema("escalation", schema),
        max_tokens=node.max_tokens,
        temperature=node.temperature,
    )


def parse_escalation(result: ChatResult, spec: GraphSpec) -> EscalationReply:
    reply: EscalationReply = _validate(EscalationReply, _load_json(result), result)
    if reply.category not in spec.taxonomy.category_names:
        raise BadModelOutput(f"category {reply.category!r} is not in the taxonomy", model=result.model)
    if reply.priority not in spec.taxonomy.priorities:
        raise BadModelOutput(f"priority {reply.priority!r} is not in the taxonomy", model=result.model)
    if not reply.answer.strip():
        raise BadModelOutput("reply does not match the schema: answer is blank", model=result.model)
    return reply.model_copy(update={"answer": reply.answer.strip()})


@dataclass(frozen=True, slots=True)
class EarlyTriage:
    """What the first tokens of a streamed triage reply already settle: the category and the
    confidence :func:`parse_triage` will read from log-probabilities for it."""

    category: str
    confidence: float
    alternatives: dict[str, float]
    """The next most likely categories with their probabilities, as in :attr:`Triage.alternatives`."""
    tokens: int
    """How many tokens had arrived when the reading was made."""


class NoEarlyReading(ValueError):
    """The triage reply's confidence cannot be read before the reply is whole: the request
    asked for no log-probabilities, the taxonomy has no option codes, or the option-code
    token arrived without a usable distribution or with a value that is not an option code.
    ``reason`` is a key of :data:`~triagegate.confidence.FALLBACK_REASONS` or ``not_an_option_code``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def early_triage(partial: PartialReply, spec: GraphSpec, request: ChatRequest) -> EarlyTriage | None:
    """The category and log-probability confidence of a triage reply still arriving.

    ``None`` until the option-code token of the ``category`` field has arrived; then the
    numbers :func:`parse_triage` gives for the whole reply, which depend on that token and
    the ones before it only. Raises :class:`NoEarlyReading` when there will be none (the
    whole reply is then needed, and :func:`parse_triage` says why it fell back).
    """
    codes = category_codes(spec)
    if not codes or not request.top_logprobs:
        raise NoEarlyReading("no_logprobs")
    try:
        distribution = early_field_distribution(
            partial.logprobs, "category", list(codes), complete=partial.complete
        )
    except LogprobsUnusable as exc:
        raise NoEarlyReading(exc.reason) from None
    if distribution is None:
        return None
    tokens = partial.logprobs
    texts = "".join(t.token for t in tokens)
    found = re.search(r'"category"\s*:\s*"(.)', texts)
    code = found.group(1) if found else ""
    if code not in codes:
        raise NoEarlyReading("not_an_option_code")
    by_name = {codes[c]: p for c, p in distribution.items()}
    category = codes[code]
    others = sorted(((n, p) for n, p in by_name.items() if n != category and p > 0), key=lambda kv: -kv[1])
    return EarlyTriage(
        category=category,
        confidence=min(1.0, max(0.0, by_name[category])),
        alternatives=dict(others[:3]),
        tokens=len(tokens),
    )


class EarlyGate:
    """A ready-made ``decide`` for :func:`triagegate.models.base.chat_until` on a triage request.

    Reads :func:`early_triage` from each partial reply; once it has a reading it asks
    ``escalates(reading)`` whether the ticket escalates whatever the rest of the reply says
    (a confidence under the category's threshold, a category that always escalates): then
    ``"stop"``, else ``"finish"`` (the rest of the reply is needed). When there will be no
    early reading it answers ``"finish"`` at once. Afterwards ``reading`` holds the last
    reading (``None`` if none), ``stopped`` whether it stopped the reply, and ``reason`` why
    there was no reading. Each call judges its partial reply afresh, so a retried reply,
    which starts over, is judged on its own.
    """

    def __init__(
        self, spec: GraphSpec, request: ChatRequest, escalates: Callable[[EarlyTriage], bool]
    ) -> None:
        self.spec = spec
        self.request = request
        self.escalates = escalates
        self.reading: EarlyTriage | None = None
        self.stopped = False
        self.reason: str | None = None

    def __call__(self, partial: PartialReply) -> StreamVerdict | None:
        try:
            reading = early_triage(partial, self.spec, self.request)
        except NoEarlyReading as exc:
            self.reading, self.stopped, self.reason = None, False, exc.reason
            return "finish"
        if reading is None:
            return None
        self.reading, self.reason = reading, None
        self.stopped = self.escalates(reading) and not partial.complete
        return "stop" if self.stopped else "finish"
