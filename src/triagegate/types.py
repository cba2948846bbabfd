"""The data shapes that cross triagegate's boundaries: tickets in, outcomes out.

``Outcome`` is what every interface returns and writes (the Python API, the CLI, batch
files, the HTTP service and the queue workers), so it is deliberately flat and
JSON-friendly.
"""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class AttachmentKind(StrEnum):
    IMAGE = "image"


class Attachment(BaseModel):
    """An image attached to a ticket: exactly one of a local path, an http(s) URL or a data URL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AttachmentKind = AttachmentKind.IMAGE
    path: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Attachment:
        if (self.path is None) == (self.url is None):
            raise ValueError("an attachment needs exactly one of 'path' or 'url' (http(s) or data: URL)")
        if self.url is not None and not self.url.startswith(("http://", "https://", "data:")):
            raise ValueError("attachment 'url' must start with http://, https:// or data:")
        return self

    @classmethod
    def image(cls, source: str) -> Attachment:
        """Build an image attachment from a path, an http(s) URL or a data URL."""
        if source.startswith(("http://", "https://", "data:")):
            return cls(url=source)
        return cls(path=source)

    def describe(self) -> str:
        """A short, log-safe description (never the bytes of a data URL)."""
        if self.path is not None:
            return self.path
        assert self.url is not None
        return "data: URL" if self.url.startswith("data:") else self.url


def new_ticket_id() -> str:
    return uuid.uuid4().hex[:16]


class Turn(BaseModel):
    """One earlier message of the conversation a ticket continues (untrusted, like ``text``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["customer", "agent"]
    content: str


TEXT_PATTERN = r"[^\s\x1c-\x1f\x85\ufeff]"
r"""A character that is not white space by either regex dialect that reads the API document:
JSON Schema's (ECMA-262, whose ``\s`` has U+FEFF) or Python's (whose ``\s`` has U+001C-U+001F
and U+0085). The union is spelled out, so the document and the server refuse the same texts."""
_VISIBLE = re.compile(TEXT_PATTERN)


def is_blank(text: str) -> bool:
    """Whether ``text`` has no character outside :data:`TEXT_PATTERN`'s white space."""
    return _VISIBLE.search(text) is None


ThreadId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/-]+$")]
"""A conversation's name: a ticket's ``thread_id``, and the front door's ``metadata.thread_id``."""


class Ticket(BaseModel):
    """A customer-support ticket. ``text`` is untrusted customer input.

    ``messages`` is the conversation before ``text``, oldest first (the OpenAI-compatible
    endpoint fills it from earlier turns); every tier's prompt sees it, delimited as untrusted
    (:func:`triagegate.prompts.delimit_history`). ``thread_id`` names a conversation the
    pipeline's checkpointer holds: the ticket continues it, and its earlier turns are put
    before ``messages``.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_ticket_id, min_length=1, max_length=200)
    text: str = Field(min_length=1, json_schema_extra={"pattern": TEXT_PATTERN})
    """At least one character that is not white space (the document says so with ``pattern``)."""
    subject: str | None = None
    attachments: list[Attachment] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    messages: list[Turn] = Field(default_factory=list)
    thread_id: ThreadId | None = None

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if is_blank(value):
            raise ValueError("ticket text is blank")
        return value

    @property
    def has_images(self) -> bool:
        return any(a.kind is AttachmentKind.IMAGE for a in self.attachments)

    @property
    def contact(self) -> int:
        """Which contact of the customer's this ticket is: 1 plus the customer turns before it."""
        return 1 + sum(1 for turn in self.messages if turn.role == "customer")


Complexity = Literal["low", "medium", "high"]
ConfidenceMethod = Literal["logprobs", "classifier", "verbalized", "none"]


class Triage(BaseModel):
    """What the mini tier concluded about a ticket, and how sure it is.

    ``confidence`` is a probability in [0, 1]; ``confidence_method`` says where it came
    from: normalised token log-probabilities over the category options, a trained
    classifier's class probability, the model's own stated confidence, or ``none`` when
    the triage failed (confidence is then 0 so the gate escalates).
    """

    model_config = ConfigDict(extra="forbid")

    category: str
    priority: str
    complexity: Complexity = "medium"
    needs_vision: bool = False
    answer: str | None = None
    confidence: float = Field(ge=0.0, le=1.0)
    confidence_method: ConfidenceMethod
    confidence_fallback: str | None = None
    """Set when the model was asked for log-probabilities and its reply gave none usable, so
    ``confidence`` is its stated one: why (``no_logprobs``, ``field_not_found``,
    ``malformed_alternatives``, ``no_option_code``)."""
    alternatives: dict[str, float] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)
    error: str | None = None


class Usage(BaseModel):
    """Token counts and cost; adds up across calls and nodes."""

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            requests=self.requests + other.requests,
        )


class NodeRun(BaseModel):
    """One node's share of a ticket's run: which model it used and what that cost."""

    node: str
    model_alias: str | None = None
    model: str | None = None
    endpoint: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: str | None = None
    error_type: str | None = None
    """The failure's :mod:`triagegate.errors` class name (``ModelUnavailable``, ``RateLimited``, ...), so a
    caller can tell kinds of failure apart without reading ``error``'s text."""
    warnings: list[str] = Field(default_factory=list)
    """Replies the node used but did not take as given, as codes: ``usage_out_of_bounds:prompt_tokens``
    (a reported token count past what the request could cost, replaced by an estimate), ``usage_missing``,
    ``logprobs_unusable:<reason>`` (label scoring fell back to a stated confidence)."""


Status = Literal["ok", "failed", "skipped", "awaiting_human"]

ROUTING_SKIPS = frozenset({"category_not_served", "category_unknown"})
"""Pre-gate reasons that are routing, not escalation: a tier that serves other categories."""


class GateDecision(BaseModel):
    """What one edge of the cascade decided about a ticket.

    ``keep``: the tier's answer stands; ``escalate``: the tier's gate (or a failed draft,
    recorded under ``<tier>:draft`` with reason ``answer_failed``) sent the ticket on;
    ``skip``: the pre-gate sent it past the tier without calling it (``reasons`` say why:
    ``needs_vision``, ``suspected_injection``, ``category_not_served``, ``category_unknown``).
    ``confidence`` and ``threshold`` are the ones the gate compared (``None`` for a skip).
    """

    model_config = ConfigDict(frozen=True)

    tier: str
    route: Literal["keep", "escalate", "skip"]
    confidence: float | None = None
    threshold: float | None = None
    reasons: list[str] = Field(default_factory=list)


HumanAction = Literal["approve", "edit", "answer"]


class HumanAnswer(BaseModel):
    """What a person sends to resume a handoff: approve the draft as it is, edit it, or answer anew.

    ``text`` is required for ``edit`` and ``answer`` and refused for ``approve``; ``by`` names
    who answered (free text, for the record).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: HumanAction
    text: str | None = Field(default=None, max_length=20_000)
    by: str | None = Field(default=None, max_length=200)
    category: str | None = Field(default=None, max_length=200)
    """The category the person files the ticket under, when it is not the one the tiers gave
    (it must be in the graph's taxonomy); human answers become labelled data with it."""

    @model_validator(mode="after")
    def _text_fits_action(self) -> HumanAnswer:
        if self.action == "approve" and self.text is not None:
            raise ValueError("'approve' sends the draft as it is and takes no text; use 'edit' to change it")
        if self.action != "approve" and (self.text is None or is_blank(self.text)):
            raise ValueError(f"'{self.action}' needs the text of the answer")
        return self


class Handoff(BaseModel):
    """A ticket handed to a person: why, the best draft, and (once resumed) what the person did.

    ``diff`` is the unified diff from ``draft`` to ``answer`` when the person changed it.
    """

    model_config = ConfigDict(frozen=True)

    reasons: list[str] = Field(default_factory=list)
    draft: str | None = None
    draft_route: str | None = None
    """The tier whose answer is the draft."""
    action: HumanAction | None = None
    answer: str | None = None
    by: str | None = None
    category: str | None = None
    """The category the person gave, if they changed it."""
    diff: str | None = None


class ShadowCheck(BaseModel):
    """Whether a kept ticket was sampled for a shadow run by the next tier (``gate.shadow``).

    ``scheduled``: the shadow run was started off the customer's path; its verdict is written
    to the outcome store's ``labels`` table (source ``shadow``) when it finishes. ``capped``:
    the ticket was sampled but the day's shadow budget (``max_usd_per_day``) was spent.
    """

    model_config = ConfigDict(frozen=True)

    tier: str
    """The tier that kept the ticket."""
    judge: str
    """The tier that runs the shadow (the next one)."""
    status: Literal["scheduled", "capped"]


class Outcome(BaseModel):
    """The result of running one ticket through a graph."""

    ticket_id: str
    run_id: str
    graph: str | None = None
    graph_hash: str | None = None
    status: Status = "ok"
    route: str = "none"
    """The tier that answered (``mini`` or ``flagship`` for a file in the legacy ``nodes:`` form),
    or ``none`` when nothing did."""
    category: str | None = None
    priority: str | None = None
    complexity: Complexity | None = None
    answer: str | None = None
    sources: list[str] = Field(default_factory=list)
    """The ids of the knowledge-base articles the answering tier was given for this ticket,
    best first; empty without a knowledge base or when no article supports the ticket."""
    confidence: float | None = None
    confidence_method: ConfidenceMethod | None = None
    confidence_fallback: str | None = None
    """Why log-probabilities the triage model was bound for could not be used (see :class:`Triage`)."""
    escalation_reasons: list[str] = Field(default_factory=list)
    """Every reason of every ``escalate`` and ``skip`` decision, once each, in order."""
    path: list[str] = Field(default_factory=list)
    """The tiers that ran, in order; a drafting step shows as ``<tier>:draft``."""
    decisions: list[GateDecision] = Field(default_factory=list)
    """One per gate the ticket passed and one per tier the pre-gate skipped, in order."""
    nodes: list[NodeRun] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    errors: list[str] = Field(default_factory=list)
    thread_id: str | None = None
    """The conversation the run is kept under, when the pipeline keeps it (a graph with a
    ``handoff`` rule, or a ticket that named a thread); resume a handoff and continue a thread by it."""
    handoff: Handoff | None = None
    """Set when the ticket went to a person: ``status`` is ``awaiting_human`` until resumed,
    then ``ok`` with ``route`` ``human``."""
    shadow: ShadowCheck | None = None
    """Set when the tier that kept the ticket sampled it for a shadow run (see :class:`ShadowCheck`)."""

    @property
    def skipped(self) -> list[GateDecision]:
        """The tiers the pre-gate skipped (the ``skip`` decisions), in order."""
        return [d for d in self.decisions if d.route == "skip"]

    @property
    def escalated(self) -> bool:
        """The ticket went past a tier that could have answered it: a gate escalated it, or the
        pre-gate skipped a tier for a reason other than that tier's category filter."""
        return any(
            d.route == "escalate" or (d.route == "skip" and not ROUTING_SKIPS.issuperset(d.reasons))
            for d in self.decisions
        )
