"""The graph file: its schema, and loading it with errors that point at file, line and key.

A graph file (``graphs/*.yaml``) is what users edit: the models, the taxonomy, and the
cascade of ``tiers`` (cheapest first), each with its model, prompt, budget and gate. The
legacy ``nodes:``/``gate:`` form is read as two tiers, ``mini`` and ``flagship``.
Everything is validated here, before any model is built, so a typo or a tier no ticket can
reach fails at load time with the exact place to fix.

Model bindings can be overridden from the environment so one file serves dev and prod:

* ``TRIAGEGATE_<ALIAS>=backend:model@base_url`` (e.g. ``openai:gpt-4o-mini@http://127.0.0.1:8000/v1``)
  or a JSON object merged over the binding;
* ``TRIAGEGATE_<ALIAS>_BASE_URL``, ``TRIAGEGATE_<ALIAS>_MODEL``, ``TRIAGEGATE_<ALIAS>_API_KEY_ENV``;
* ``TRIAGEGATE_<ALIAS>_CAPABILITIES=logprobs,vision`` (the full set; an empty value turns both off).

A ``base_url`` from the environment replaces a binding's ``endpoints`` (one server instead of
several), and ``endpoints`` from a JSON override replace its ``base_url``.

``<ALIAS>`` is the alias upper-cased with ``-`` turned into ``_`` (``mini`` -> ``TRIAGEGATE_MINI``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from triagegate import environment
from triagegate.errors import ConfigError

Complexity = Literal["low", "medium", "high"]


class _RefError(ValueError):
    """A cross-reference error that knows where in the file it is."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(_Strict):
    """USD per million tokens."""

    input: float = Field(default=0.0, ge=0.0)
    output: float = Field(default=0.0, ge=0.0)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


class ModelCapabilities(_Strict):
    vision: bool = False
    logprobs: bool = False


class Endpoint(_Strict):
    """One deployment of an alias's model, among several that share its traffic (``endpoints:``).

    ``weight`` is its share of the traffic relative to the others; ``api_key_env`` defaults to
    the binding's; ``max_rps`` and ``max_tokens_per_min`` limit this endpoint alone and replace
    the binding's ``requests_per_minute`` and ``tokens_per_minute`` for it.
    """

    base_url: str
    weight: float = Field(default=1.0, gt=0)
    api_key_env: str | None = None
    max_rps: float | None = Field(default=None, gt=0)
    max_tokens_per_min: float | None = Field(default=None, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_base_url(value)


def http_base_url(value: str) -> str:
    """``value`` if it is an http(s) URL with a host and no credentials; raises ``ValueError`` saying why not.

    Credentials in a URL would end up in the graph file and in anything that quotes the URL,
    so they are refused like inline keys in ``headers``.
    """
    parts = urlsplit(value.strip())
    try:
        parts.port  # noqa: B018 (reading it validates it)
    except ValueError:
        raise ValueError(f"base_url {value!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"base_url {value!r} is not an http(s) URL; write it with its API version, "
            "e.g. https://api.openai.com/v1"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "base_url must not contain credentials; name the environment variable that holds "
            "the key with 'api_key_env' instead"
        )
    return value.strip()


class ModelBinding(_Strict):
    """One model alias: which backend serves it, where, at what price, and what to try next.

    An ``openai`` binding names one server with ``base_url``, or several deployments of the
    same model with ``endpoints`` (traffic spread by weight; an endpoint that fails
    ``cooldown_after`` times in a row is left alone for ``cooldown_s`` seconds, then tried
    again with one request). Limits (``max_concurrency``, ``requests_per_minute``,
    ``tokens_per_minute``) apply to each endpoint.
    """

    backend: str
    model: str = ""
    base_url: str | None = None
    endpoints: list[Endpoint] = Field(default_factory=list)
    cooldown_s: float = Field(default=30.0, gt=0)
    cooldown_after: int = Field(default=3, ge=1)
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    price: Price = Field(default_factory=Price)
    capabilities: ModelCapabilities = Field(default_factory=ModelCapabilities)
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20)
    fallbacks: list[str] = Field(default_factory=list)
    max_concurrency: int | None = Field(default=None, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _no_inline_secrets(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if name.lower() in {"authorization", "api-key", "x-api-key"}:
                raise ValueError(
                    f"header {name!r} would put a secret in the graph file; "
                    "name the environment variable that holds the key with 'api_key_env' instead"
                )
        return headers

    @field_validator("endpoints")
    @classmethod
    def _distinct_endpoints(cls, endpoints: list[Endpoint]) -> list[Endpoint]:
        seen: dict[str, int] = {}
        for i, endpoint in enumerate(endpoints):
            url = endpoint.base_url.rstrip("/")
            if url in seen:
                raise ValueError(
                    f"endpoints[{i}] repeats the base_url of endpoints[{seen[url]}] ({url}); "
                    "list each deployment once and give it a larger weight instead"
                )
            seen[url] = i
        return endpoints

    @model_validator(mode="after")
    def _one_way_to_the_server(self) -> ModelBinding:
        if self.endpoints and self.base_url is not None:
            raise ValueError(
                "set either base_url (one server) or endpoints (several), not both; "
                "move base_url into endpoints as {base_url: ..., weight: 1}"
            )
        if self.endpoints and self.backend != "openai":
            raise ValueError(f"endpoints is for the openai backend; backend {self.backend!r} has none")
        return self

    def endpoint_list(self) -> list[Endpoint]:
        """The binding's endpoints: its ``endpoints``, or its one ``base_url`` (``[]`` when it has neither)."""
        if self.endpoints:
            return list(self.endpoints)
        return [Endpoint.model_construct(base_url=self.base_url, weight=1.0)] if self.base_url else []


class Example(_Strict):
    text: str = Field(min_length=1)
    priority: str | None = None


class Category(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    priority: str | None = None
    """Default priority for tickets of this category (the taxonomy default when unset)."""
    examples: list[Example] = Field(default_factory=list)

    @field_validator("examples", mode="before")
    @classmethod
    def _plain_strings_are_examples(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"text": v} if isinstance(v, str) else v for v in value]
        return value


class Taxonomy(_Strict):
    categories: list[Category] = Field(min_length=2)
    priorities: list[str] = Field(default_factory=lambda: ["low", "normal", "high", "urgent"], min_length=1)
    default_priority: str = "normal"

    @model_validator(mode="after")
    def _consistent(self) -> Taxonomy:
        names = [c.name for c in self.categories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate category names: {', '.join(dupes)}")
        if self.default_priority not in self.priorities:
            raise ValueError(f"default_priority {self.default_priority!r} is not one of {self.priorities}")
        for c in self.categories:
            for p in [c.priority, *(e.priority for e in c.examples)]:
                if p is not None and p not in self.priorities:
                    raise ValueError(f"category {c.name!r} uses priority {p!r}, not one of {self.priorities}")
        return self

    @property
    def category_names(self) -> list[str]:
        return [c.name for c in self.categories]

    def category(self, name: str) -> Category | None:
        return next((c for c in self.categories if c.name == name), None)

    def priority_for(self, category: str) -> str:
        found = self.category(category)
        return (found.priority if found and found.priority else None) or self.default_priority


class NodeSpec(_Strict):
    """One model call: which alias, which prompt, and its budget."""

    model: str
    prompt: str
    max_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


class Nodes(_Strict):
    """The legacy ``nodes:`` block, read only to convert it into two tiers (:func:`_legacy_tiers`)."""

    triage: NodeSpec
    answer: NodeSpec
    escalate: NodeSpec


class DraftSpec(NodeSpec):
    """Who writes the answer for a tier whose model cannot chat (a classifier)."""

    prompt: str = "answer.md"


TIER_NAME = r"^[a-z][a-z0-9_-]*$"
RESERVED_TIERS = frozenset({"human"})
"""Tier names kept for what comes after the last tier (the handoff to a person)."""


class AlwaysEscalate(_Strict):
    needs_vision_without_vision_model: bool = True
    suspected_injection: bool = True
    complexity: list[Complexity] = Field(default_factory=lambda: ["high"])  # type: ignore[arg-type]
    categories: list[str] = Field(default_factory=list)
    priorities: list[str] = Field(default_factory=lambda: ["urgent"])
    ungrounded: bool = False
    """Escalate a ticket the graph's knowledge base has no supporting article for (a soft rule,
    reason ``ungrounded``); needs ``knowledge_base``."""
    repeat_contact: int | None = Field(default=None, ge=2)
    """Escalate a ticket that is at least the customer's N-th message in its thread (reason
    ``repeat_contact``): a customer who had to write again was not helped by this tier."""


class NeverEscalate(_Strict):
    categories: list[str] = Field(default_factory=list)


class ShadowPolicy(_Strict):
    """A seeded sample of the tickets a tier keeps, also run through the next tier off the
    customer's path, to measure the precision of kept answers in production
    (:mod:`triagegate.shadow`).

    ``rate`` is the share sampled; ``seed`` fixes which tickets (the same ticket id is always
    in or out of the sample); ``max_usd_per_day`` caps what shadow runs may spend per UTC day
    (per process); ``target`` is the precision the tier's kept answers must hold, which
    ``triagegate report`` checks the lower bound of its interval against (exit code 3).
    """

    rate: float = Field(ge=0.0, le=1.0)
    max_usd_per_day: float | None = Field(default=None, gt=0.0)
    seed: int = 0
    target: float | None = Field(default=None, gt=0.0, le=1.0)


class GatePolicy(_Strict):
    """When a tier's answer stands. See :func:`triagegate.gate.decide` for precedence."""

    threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    category_thresholds: dict[str, float] = Field(default_factory=dict)
    always_escalate: AlwaysEscalate = Field(default_factory=AlwaysEscalate)
    never_escalate: NeverEscalate = Field(default_factory=NeverEscalate)
    on_missing_logprobs: Literal["escalate", "verbalized"] = "escalate"
    """What a triage reply without usable log-probabilities means when its model is bound for
    them: ``escalate`` (a hard rule, reason ``logprobs_missing``), or ``verbalized`` (gate the
    model's stated confidence). Both log a warning and set ``Outcome.confidence_fallback``."""
    early: bool = True
    """Apply the gate while a log-probability reply streams, cancelling the rest of one that
    escalates. ``false`` reads every reply whole: slower to escalate, but a ``--record``
    recording then holds whole replies, which can be replayed under any threshold."""
    shadow: ShadowPolicy | None = None
    """Shadow sampling of the tickets this tier keeps (see :class:`ShadowPolicy`)."""

    @field_validator("category_thresholds")
    @classmethod
    def _probabilities(cls, value: dict[str, float]) -> dict[str, float]:
        for name, t in value.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold for {name!r} must be between 0 and 1, got {t}")
        return value

    def threshold_for(self, category: str) -> float:
        return self.category_thresholds.get(category, self.threshold)


class TierSpec(NodeSpec):
    """One tier of the cascade: a model call with its own gate, cheapest tier first.

    ``categories`` limits the tier to tickets whose category, as the last visited tier
    assigned it, is listed (a specialist); ``draft`` writes the answer when the tier's
    model is a classifier; ``gate`` decides whether the tier's answer stands, and is
    required on every tier but the last, which answers whatever reaches it.
    """

    name: str = Field(pattern=TIER_NAME)
    categories: list[str] | None = Field(default=None, min_length=1)
    draft: DraftSpec | None = None
    gate: GatePolicy | None = None


class HandoffPolicy(_Strict):
    """When a person answers instead of the model, after the cascade has produced its best draft.

    Checked where a run would end (a kept tier, a draft, the last tier); any matching rule
    sends the ticket to the ``human`` step (:func:`triagegate.gate.handoff_reasons`).
    ``below`` compares the ticket's confidence (:attr:`triagegate.types.Outcome.confidence`,
    the last triage's); ``categories`` and ``priorities`` the final ones; ``repeat_contact``
    the ticket's place in its thread; ``on_failure`` hands off a ticket no tier could answer.
    """

    below: float | None = Field(default=None, ge=0.0, le=1.0)
    categories: list[str] = Field(default_factory=list)
    priorities: list[str] = Field(default_factory=list)
    repeat_contact: int | None = Field(default=None, ge=2)
    on_failure: bool = False


class KnowledgeBaseSpec(_Strict):
    """The folder of Markdown articles the answering tiers are grounded in (:mod:`triagegate.knowledge`).

    Written as a path (``knowledge_base: ../kb``) or as a mapping with the retrieval settings.
    """

    path: str = Field(min_length=1)
    """Relative to the graph file, like ``prompts``."""
    top_k: int = Field(default=3, ge=1, le=20)
    """At most this many articles go into a prompt."""
    min_score: float = Field(default=0.1, ge=0.0, le=1.0)
    """The cosine similarity (0 to 1) an article needs to support a ticket."""
    max_chars: int = Field(default=2000, ge=100)
    """An article longer than this is cut (at a word) in the prompt, to keep prompts inside small contexts."""

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class Limits(_Strict):
    max_text_chars: int = Field(default=20_000, ge=1)
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    max_images: int = Field(default=4, ge=0)
    image_types: list[str] = Field(
        default_factory=lambda: ["image/png", "image/jpeg", "image/gif", "image/webp"]
    )


LEGACY_TIERS = ("mini", "flagship")
"""The names the legacy ``nodes:``/``gate:`` form's two tiers get, so its routes stay ``mini``/``flagship``."""

LEGACY_NOTE = "uses nodes:/gate: (read as 2 tiers mini -> flagship); to write it as tiers see README 'Tiers'"


def is_legacy(raw: Mapping[str, Any]) -> bool:
    """Whether a graph file's mapping uses the legacy ``nodes:``/``gate:`` form rather than ``tiers:``."""
    return "tiers" not in raw and ("nodes" in raw or "gate" in raw)


def _legacy_tiers(raw: Mapping[str, Any]) -> list[Any]:
    """The two tiers a legacy file means: ``mini`` (triage, its drafter and the gate) and ``flagship``."""
    nodes = raw.get("nodes")
    if not isinstance(nodes, Mapping):
        return [nodes]
    triage, answer, escalate = (nodes.get(k) for k in ("triage", "answer", "escalate"))
    first: Any = triage
    if isinstance(triage, Mapping):
        first = {"name": LEGACY_TIERS[0], **triage, "gate": raw.get("gate", {})}
        if answer is not None:
            first["draft"] = answer
    last: Any = {"name": LEGACY_TIERS[1], **escalate} if isinstance(escalate, Mapping) else escalate
    return [first, last]


_LEGACY_PLACES = (
    (("tiers", 0, "gate"), ("gate",)),
    (("tiers", 0, "draft"), ("nodes", "answer")),
    (("tiers", 0), ("nodes", "triage")),
    (("tiers", 1), ("nodes", "escalate")),
    (("tiers",), ("nodes",)),
)
"""Where each part of the converted tiers sits in a legacy file (longest prefix first)."""


def legacy_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """A location in the converted tiers, spelled where a legacy file has it (``tiers[1].model`` -> ``nodes.escalate.model``)."""
    for new, old in _LEGACY_PLACES:
        if loc[: len(new)] == new:
            return (*old, *loc[len(new) :])
    return loc


def dotted(loc: tuple[int | str, ...]) -> str:
    """``('tiers', 1, 'model')`` as ``tiers[1].model``."""
    return _format_loc(loc)


def _respell(message: str, loc: tuple[int | str, ...]) -> str:
    """``message`` with the tier paths in it spelled as a legacy file spells them."""
    for new, old in _LEGACY_PLACES:
        if loc[: len(new)] == new:
            return message.replace(dotted(new), dotted(old))
    return message


class GraphSpec(_Strict):
    version: Literal[1] = 1
    name: str = "triagegate"
    description: str = ""
    prompts: str = "../prompts"
    """Directory of prompt templates, relative to the graph file."""
    models: dict[str, ModelBinding]
    taxonomy: Taxonomy
    tiers: list[TierSpec] = Field(min_length=2)
    """The cascade, cheapest first; see the README's "Tiers" for the routing rule."""
    limits: Limits = Field(default_factory=Limits)
    knowledge_base: KnowledgeBaseSpec | None = None
    handoff: HandoffPolicy | None = None
    """When a person answers (the ``human`` step after the cascade); ``None``: never."""

    @model_validator(mode="before")
    @classmethod
    def _read_legacy_form(cls, data: Any) -> Any:
        """Convert ``nodes:``/``gate:`` into two tiers; refuse a file that mixes both forms."""
        if not isinstance(data, Mapping):
            return data
        if "tiers" in data:
            mixed = next((k for k in ("nodes", "gate") if k in data), None)
            if mixed is not None:
                raise _RefError(
                    (mixed, "[key]"),
                    f"'{mixed}' belongs to the legacy form and this file also has 'tiers': move the gate "
                    "into the first tier (tiers[0].gate) and delete 'nodes' and the top-level 'gate'",
                )
            return data
        if not is_legacy(data):
            return data
        converted = {k: v for k, v in data.items() if k not in ("nodes", "gate")}
        converted["tiers"] = _legacy_tiers(data)
        return converted

    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    @property
    def first_tier(self) -> TierSpec:
        return self.tiers[0]

    @property
    def last_tier(self) -> TierSpec:
        return self.tiers[-1]

    def tier(self, name: str) -> TierSpec:
        """The tier called ``name``; raises :class:`KeyError` naming the tiers there are."""
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(f"no tier {name!r} (tiers: {', '.join(self.tier_names)})")

    def index(self, name: str) -> int:
        return self.tier_names.index(name)

    def role(self, name: str) -> Literal["triage", "escalate"]:
        """The prompt role of tier ``name``: ``escalate`` for the last tier, ``triage`` for the others."""
        return "escalate" if name == self.last_tier.name else "triage"

    def gate_of(self, name: str) -> GatePolicy:
        """The gate of a tier that has one (every tier but the last)."""
        gate = self.tier(name).gate
        if gate is None:
            raise KeyError(f"tier {name!r} is the last tier: it answers what reaches it and has no gate")
        return gate

    def chats(self, alias: str) -> bool:
        """Whether alias ``alias`` writes text, read from its binding (a ``classifier`` does not)."""
        return self.models[alias].backend != "classifier"

    def aliases(self) -> list[str]:
        """Every alias the cascade calls (tier models, then drafts), in order, without fallbacks."""
        out: list[str] = []
        for t in self.tiers:
            for alias in (t.model, t.draft.model if t.draft else None):
                if alias is not None and alias not in out:
                    out.append(alias)
        return out

    @model_validator(mode="after")
    def _references_resolve(self) -> GraphSpec:
        aliases = set(self.models)
        for alias, binding in self.models.items():
            reserved = environment.binding_variable(alias)
            if reserved in environment.RESERVED:
                raise _RefError(
                    ("models", alias),
                    f"model alias {alias!r} is reserved: its override variable {reserved} already means "
                    "something else to triagegate; rename the alias",
                )
            for i, fb in enumerate(binding.fallbacks):
                if fb not in aliases:
                    raise _RefError(
                        ("models", alias, "fallbacks", i),
                        f"models.{alias}.fallbacks names {fb!r}, which is not defined under 'models'",
                    )
                if fb == alias:
                    raise ValueError(f"models.{alias}.fallbacks lists the alias itself")
        self._tiers_resolve(aliases)
        self._handoff_resolves()
        _check_reachable(self)
        return self

    def _handoff_resolves(self) -> None:
        if self.handoff is None:
            return
        if self.handoff == HandoffPolicy():
            raise _RefError(
                ("handoff",),
                "handoff has no rule, so no ticket would ever reach a person: give it one of below, "
                "categories, priorities, repeat_contact or on_failure (or delete it)",
            )
        _known_categories(
            ("handoff", "categories"), self.handoff.categories, set(self.taxonomy.category_names)
        )
        self._known_priorities(("handoff", "priorities"), self.handoff.priorities)

    def _known_priorities(self, where: tuple[int | str, ...], names: list[str]) -> None:
        for j, p in enumerate(names):
            if p not in self.taxonomy.priorities:
                raise _RefError(
                    (*where, j),
                    f"{dotted(where)} names unknown priorities: {p} "
                    f"(the taxonomy has: {', '.join(self.taxonomy.priorities)})",
                )

    def _tiers_resolve(self, aliases: set[str]) -> None:
        defined = ", ".join(sorted(aliases))
        known = set(self.taxonomy.category_names)
        seen: dict[str, int] = {}
        last = len(self.tiers) - 1
        for i, t in enumerate(self.tiers):
            here: tuple[int | str, ...] = ("tiers", i)
            if t.name in RESERVED_TIERS:
                raise _RefError(
                    (*here, "name"), f"tier name {t.name!r} is reserved for the handoff after the last tier"
                )
            if t.name in seen:
                raise _RefError(
                    (*here, "name"),
                    f"tiers[{i}].name {t.name!r} is already the name of tiers[{seen[t.name]}]; tier names are unique",
                )
            seen[t.name] = i
            for where, spec in (((*here, "model"), t), ((*here, "draft", "model"), t.draft)):
                if spec is not None and spec.model not in aliases:
                    raise _RefError(
                        where,
                        f"{dotted(where)} refers to {spec.model!r}, which is not defined under 'models' "
                        f"(defined: {defined})",
                    )
            if t.categories is not None:
                _known_categories((*here, "categories"), t.categories, known)
            if i == last:
                self._last_tier_fits(t, here)
                continue
            if t.gate is None:
                raise _RefError(
                    here,
                    f"tiers[{i}] ({t.name}) has no gate: every tier but the last needs one to say when its "
                    "answer stands (e.g. gate: {threshold: 0.8})",
                )
            if not self.chats(t.model) and t.draft is None:
                raise _RefError(
                    (*here, "model"),
                    f"tiers[{i}] ({t.name}) uses the classifier {t.model!r}, which cannot write an answer: "
                    "add draft: {model: <a chat model alias>} to the tier",
                )
            gate = t.gate
            at = (*here, "gate")
            _known_categories((*at, "category_thresholds"), list(gate.category_thresholds), known)
            _known_categories((*at, "always_escalate", "categories"), gate.always_escalate.categories, known)
            _known_categories((*at, "never_escalate", "categories"), gate.never_escalate.categories, known)
            if gate.always_escalate.ungrounded and self.knowledge_base is None:
                raise _RefError(
                    (*at, "always_escalate", "ungrounded"),
                    "ungrounded escalates a ticket no knowledge-base article supports, but this graph has "
                    "no knowledge_base: add one (knowledge_base: ../kb) or delete this rule",
                )
            self._known_priorities((*at, "always_escalate", "priorities"), gate.always_escalate.priorities)

    def _last_tier_fits(self, t: TierSpec, here: tuple[int | str, ...]) -> None:
        i = here[1]
        problem = None
        if t.gate is not None:
            problem = (
                "gate",
                f"tiers[{i}] ({t.name}) is the last tier: it answers everything that reaches it, so it has "
                "no gate; delete its 'gate' (or add a tier after it)",
            )
        elif t.categories is not None:
            problem = (
                "categories",
                f"tiers[{i}] ({t.name}) is the last tier: it answers everything that reaches it, so it "
                "cannot be limited to some categories; delete its 'categories'",
            )
        elif t.draft is not None:
            problem = (
                "draft",
                f"tiers[{i}] ({t.name}) is the last tier and writes its own answer; delete its 'draft'",
            )
        elif not self.chats(t.model):
            problem = (
                "model",
                f"tiers[{i}] ({t.name}) is the last tier and must write answers, but {t.model!r} is a "
                "classifier; make the last tier a chat model",
            )
        if problem is not None:
            raise _RefError((*here, problem[0]), problem[1])


class _LegacyParts(BaseModel):
    """The legacy ``nodes:`` and ``gate:`` blocks, checked as they are written before conversion,
    so their errors name the keys the file has (``nodes.answer.max_tokens``)."""

    model_config = ConfigDict(extra="ignore")

    nodes: Nodes
    gate: GatePolicy = Field(default_factory=GatePolicy)


def _known_categories(where: tuple[int | str, ...], names: list[str], known: set[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        loc = where if where[-1] == "category_thresholds" else (*where, names.index(unknown[0]))
        raise _RefError(loc, f"{dotted(where)} names unknown categories: {', '.join(unknown)}")


def _may_escalate(spec: GraphSpec, tier: TierSpec) -> tuple[bool, frozenset[str]]:
    """Whether tier ``tier``'s pre-gate can pass tickets on, and which categories its gate can escalate.

    Conservative: it answers "may" whenever a rule could fire, so a reachable tier is never
    reported unreachable. A failed triage always escalates, but a tier reached only that
    way is a fallback endpoint, which belongs in the model's ``fallbacks``.
    """
    gate = tier.gate
    if gate is None:
        return False, frozenset()
    binding = spec.models[tier.model]
    rules = gate.always_escalate
    vision = rules.needs_vision_without_vision_model and not binding.capabilities.vision
    passes = vision or rules.suspected_injection
    logprobs = binding.capabilities.logprobs or binding.backend == "llamacpp"
    hard = passes or (gate.on_missing_logprobs == "escalate" and logprobs and spec.chats(tier.model))
    names = spec.taxonomy.category_names
    if hard:
        return passes, frozenset(names)
    soft = bool(rules.complexity or rules.priorities or rules.repeat_contact or rules.ungrounded)
    return passes, frozenset(
        c
        for c in names
        if c not in gate.never_escalate.categories
        and (soft or c in rules.categories or gate.threshold_for(c) > 0)
    )


def _check_reachable(spec: GraphSpec) -> None:
    """Refuse a tier no ticket can reach, following the routing rule forwards.

    Before each tier: can a ticket arrive that no tier has triaged yet (only at entry), and
    which categories can tickets triaged so far arrive with. A ticket enters the first tier
    whose pre-gate passes and, after a tier escalates, goes to the next one whose pre-gate
    passes; a category filter skips a ticket whose category it does not list (and at entry,
    where no category is known yet, every ticket).
    """
    untriaged, arriving = True, frozenset[str]()
    blocker: int | None = None
    last = len(spec.tiers) - 1
    for j, t in enumerate(spec.tiers):
        serves = frozenset(spec.taxonomy.category_names) if t.categories is None else frozenset(t.categories)
        runs_untriaged = untriaged and (t.categories is None or j == last)
        runs = runs_untriaged or bool(arriving & serves) or (j == last and bool(arriving))
        if not runs:
            if blocker is not None:
                b = spec.tiers[blocker]
                why = (
                    f"tiers[{blocker}] ({b.name}) serves every category and never escalates "
                    "(threshold 0, no escalate rules, no hard rules); raise its threshold above 0 "
                    "or add an escalate rule there, or delete this tier"
                )
            elif t.categories is not None and untriaged and not arriving:
                why = (
                    "it serves only some categories and no tier before it assigns one (at entry a "
                    "category-filtered tier is skipped); put a tier that serves every category first"
                )
            else:
                why = (
                    f"no earlier tier can escalate a ticket of {', '.join(sorted(serves))} to it "
                    "(their gates keep those categories whatever the confidence)"
                )
            raise _RefError(("tiers", j), f"tiers[{j}] ({t.name}) can never be reached: {why}")
        passes, escalates = _may_escalate(spec, t)
        skipped = (arriving - serves) if t.categories is not None else frozenset[str]()
        if passes:
            skipped = arriving
        untriaged = untriaged and (t.categories is not None or passes)
        arriving = skipped | escalates
        if t.categories is None and not passes and not escalates:
            blocker = j
        elif untriaged or arriving:
            blocker = None


class LoadedSpec(BaseModel):
    """A validated graph file together with where it came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: GraphSpec
    path: Path | None
    prompts_dir: Path
    legacy: bool = False
    """The file uses the legacy ``nodes:``/``gate:`` form (read as tiers ``mini`` -> ``flagship``)."""
    knowledge_dir: Path | None = None
    """The knowledge base's folder, resolved (``None`` without ``knowledge_base``)."""

    @property
    def name(self) -> str:
        return self.spec.name

    def key(self, loc: tuple[int | str, ...]) -> str:
        """A location in the tiers, spelled as this file spells it (``nodes.triage.prompt`` in a legacy file)."""
        return dotted(legacy_loc(loc) if self.legacy else loc)

    def content_hash(self, extra: Mapping[str, str] = {}) -> str:
        """A stable hash of the validated graph (after environment overrides) and ``extra`` texts."""
        payload = json.dumps(
            {"spec": self.spec.model_dump(mode="json"), "extra": dict(sorted(extra.items()))},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def parse_binding_override(value: str) -> dict[str, Any]:
    """Parse ``backend:model@base_url`` (model and URL optional) or a JSON object."""
    value = value.strip()
    if value.startswith("{"):
        loaded = json.loads(value)
        if not isinstance(loaded, dict):
            raise ValueError("a JSON override must be an object")
        return loaded
    backend, _, rest = value.partition(":")
    if not backend:
        raise ValueError(
            "expected 'backend:model@base_url', e.g. 'openai:gpt-4o-mini@http://127.0.0.1:8000/v1'"
        )
    out: dict[str, Any] = {"backend": backend}
    model, at, url = rest.partition("@")
    if model:
        out["model"] = model
    if at:
        out["base_url"] = url
    return out


def _without_other_servers(binding: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``binding`` without the way to its servers that ``override`` replaces: a ``base_url`` from the
    environment points the alias at that one server instead of its ``endpoints``, and ``endpoints``
    replace a ``base_url``."""
    if "base_url" in override:
        return {k: v for k, v in binding.items() if k != "endpoints"}
    if "endpoints" in override:
        return {k: v for k, v in binding.items() if k != "base_url"}
    return binding


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Merge ``TRIAGEGATE_<ALIAS>*`` variables into ``raw['models']`` in place; return what was applied."""
    models = raw.get("models")
    if not isinstance(models, dict):
        return []
    applied: list[str] = []
    for alias in list(models):
        if not isinstance(alias, str):
            continue
        binding = models[alias] if isinstance(models[alias], dict) else {}
        whole = environ.get(environment.binding_variable(alias))
        if whole:
            try:
                override = parse_binding_override(whole)
            except (ValueError, json.JSONDecodeError) as exc:
                raise ConfigError(
                    f"cannot parse {environment.binding_variable(alias)}: {exc}", key=f"models.{alias}"
                ) from None
            if override.get("backend") not in (None, binding.get("backend")):
                # A different backend means different options; keep only what is backend-neutral.
                neutral = {"price", "capabilities", "timeout", "max_retries", "fallbacks"}
                binding = {k: v for k, v in binding.items() if k in neutral}
            binding = {**_without_other_servers(binding, override), **override}
            applied.append(environment.binding_variable(alias))
        for suffix, key in (("BASE_URL", "base_url"), ("MODEL", "model"), ("API_KEY_ENV", "api_key_env")):
            value = environ.get(environment.binding_variable(alias, suffix))
            if value:
                binding = {**_without_other_servers(binding, {key: value}), key: value}
                applied.append(environment.binding_variable(alias, suffix))
        caps = environ.get(environment.binding_variable(alias, "CAPABILITIES"))
        if caps is not None:
            wanted = {c.strip() for c in caps.split(",") if c.strip()}
            binding["capabilities"] = {name: name in wanted for name in ("vision", "logprobs")}
            unknown = wanted - {"vision", "logprobs"}
            if unknown:
                raise ConfigError(
                    f"{environment.binding_variable(alias, 'CAPABILITIES')} lists unknown capabilities: {', '.join(sorted(unknown))} "
                    "(known: vision, logprobs)",
                    key=f"models.{alias}.capabilities",
                )
            applied.append(environment.binding_variable(alias, "CAPABILITIES"))
        models[alias] = binding
    return applied


_PLAIN_SCALAR_TAGS = {
    "tag:yaml.org,2002:bool": "the boolean {value}",
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:null": "null (no value)",
}
"""What YAML 1.1 turns an unquoted word into, for the hint to quote it (``no`` -> false)."""

_TEXT_ERRORS = frozenset({"string_type", "literal_error"})
"""Validation errors where a quoted value would have been read as the intended text."""


_NOT_CONSTRUCTED = object()


def _scalar_value(node: yaml.ScalarNode) -> Any:
    """The value YAML gives a plain scalar (``no`` -> ``False``), or a sentinel if it has none."""
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.YAMLError:
        return _NOT_CONSTRUCTED


def _key_matches(key: yaml.Node, part: int | str) -> bool:
    """Whether mapping key node ``key`` is the key a pydantic location names as ``part``.

    Pydantic names a key that is not a string by its value as an int (``no:`` read as
    ``False`` appears as ``0``), so such parts match keys YAML did not read as text.
    """
    if not isinstance(key, yaml.ScalarNode):
        return False
    if isinstance(part, str):
        return bool(key.value == part)
    if key.tag == "tag:yaml.org,2002:str":
        return False
    value = _scalar_value(key)
    return value is not _NOT_CONSTRUCTED and value == part


def _locate(tree: yaml.Node | None, loc: tuple[int | str, ...]) -> tuple[yaml.Node | None, int | None, str]:
    """Follow a pydantic error location through the composed YAML tree.

    Returns the node it names (``None`` when the location leaves the file, e.g. a missing
    key), the 1-based line of the deepest node reached, and the location spelled as the
    file spells it: a key YAML read as ``False`` is shown as the ``no`` the user wrote.
    """
    node = tree
    line = tree.start_mark.line + 1 if tree is not None else None
    key = ""
    rest = list(loc)
    while rest:
        part = rest.pop(0)
        if part == "[key]":
            continue
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if _key_matches(k, part)), None)
            if pair is not None:
                name = pair[0].value
                key += f".{name}" if key else name
                child = pair[0] if rest[:1] == ["[key]"] else pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            key += f"[{part}]"
            child = node.value[part]
        if child is None:
            return None, line, key + _format_loc((part, *rest), start=bool(key))
        node = child
        line = node.start_mark.line + 1
    return node, line, key


def _format_loc(loc: tuple[int | str, ...], *, start: bool = False) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out or start else str(part))
    return out


def _quoting_hint(node: yaml.Node | None, error: Mapping[str, Any]) -> str | None:
    """Why an unquoted word such as ``no`` failed where text was expected, and the fix.

    For a choice (``literal_error``) the hint is given only when the quoted word is one of
    the choices, so it never suggests a fix that fails next; an example ticket may be plain
    text, so an unquoted ``yes`` in ``examples`` gets it too.
    """
    text_expected = error["type"] in _TEXT_ERRORS or (
        error["type"] == "model_type" and tuple(error["loc"])[-2:-1] == ("examples",)
    )
    if not text_expected or not isinstance(node, yaml.ScalarNode) or node.style is not None:
        return None
    if error["type"] == "literal_error" and f"'{node.value}'" not in str(error.get("msg", "")):
        return None
    became = _PLAIN_SCALAR_TAGS.get(node.tag)
    if became is None:
        return None
    if not node.value:
        return "the value is empty (YAML reads it as null); write the text you mean"
    value = str(_scalar_value(node)).lower()
    return (
        f"YAML 1.1 reads the unquoted {node.value} as {became.format(value=value)}; "
        f'write it in quotes ("{node.value}") to mean the text'
    )


def parse_spec(
    text: str,
    *,
    source: str = "<graph>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedSpec:
    """Validate graph-file text. Raises :class:`ConfigError` naming ``source``, line and key."""
    try:
        tree = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"not valid YAML: {problem}", file=source, line=mark.line + 1 if mark else None
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            "a graph file must be a YAML mapping with 'models', 'taxonomy' and 'tiers'", file=source
        )
    applied = apply_env_overrides(raw, os.environ if environ is None else environ)
    legacy = is_legacy(raw)
    try:
        if legacy:
            _LegacyParts.model_validate(raw)
        spec = GraphSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        cause = (first.get("ctx") or {}).get("error")
        message = first["msg"].removeprefix("Value error, ")
        if isinstance(cause, _RefError):
            loc = cause.loc
        if legacy:
            message = _respell(message, loc)
            loc = legacy_loc(loc)
        node, line, where = _locate(tree, loc)
        key = where or None
        hint = _quoting_hint(node, first)
        if first["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and indentation)"
        elif first["type"] == "missing":
            message = "required key is missing"
        elif hint and first["type"] in ("string_type", "model_type"):
            message = f"expected text, but {hint}"
        elif hint:
            message = f"{message}; {hint}"
        if key and key.startswith("models.") and applied:
            message += f" (environment overrides applied: {', '.join(applied)})"
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(message, file=source, line=line, key=key) from None
    root = base_dir if base_dir is not None else Path.cwd()
    knowledge_dir = None
    if spec.knowledge_base is not None:
        knowledge_dir = (root / spec.knowledge_base.path).resolve()
        if not knowledge_dir.is_dir():
            _, line, key = _locate(tree, ("knowledge_base",))
            raise ConfigError(
                f"knowledge base folder {knowledge_dir} not found (the path is relative to the graph file)",
                file=source,
                line=line,
                key=key or "knowledge_base",
            )
    return LoadedSpec(
        spec=spec,
        path=None,
        prompts_dir=(root / spec.prompts).resolve(),
        legacy=legacy,
        knowledge_dir=knowledge_dir,
    )


def load_spec(path: str | Path, *, environ: Mapping[str, str] | None = None) -> LoadedSpec:
    """Read and validate a graph file from disk."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("graph file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read graph file: {exc}", file=str(path)) from None
    loaded = parse_spec(text, source=str(path), base_dir=path.resolve().parent, environ=environ)
    return loaded.model_copy(update={"path": path.resolve()})
