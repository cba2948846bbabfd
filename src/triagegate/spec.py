"""The graph file: its schema, and loading it with errors that point at file, line and key.

A graph file (``graphs/*.yaml``) is what users edit: which models play which part, the
taxonomy, the prompts each node uses and the gate policy. Everything is validated here,
before any model is built, so a typo fails at load time with the exact place to fix.

Model bindings can be overridden from the environment so one file serves dev and prod:

* ``TRIAGEGATE_<ALIAS>=backend:model@base_url`` (e.g. ``openai:gpt-4o-mini@http://127.0.0.1:8000/v1``)
  or a JSON object merged over the binding;
* ``TRIAGEGATE_<ALIAS>_BASE_URL``, ``TRIAGEGATE_<ALIAS>_MODEL``, ``TRIAGEGATE_<ALIAS>_API_KEY_ENV``;
* ``TRIAGEGATE_<ALIAS>_CAPABILITIES=logprobs,vision`` (the full set; an empty value turns both off).

``<ALIAS>`` is the alias upper-cased with ``-`` turned into ``_`` (``mini`` -> ``TRIAGEGATE_MINI``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

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


class ModelBinding(_Strict):
    """One model alias: which backend serves it, where, at what price, and what to try next."""

    backend: str
    model: str = ""
    base_url: str | None = None
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
    model: str
    prompt: str
    max_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


class Nodes(_Strict):
    triage: NodeSpec
    answer: NodeSpec
    """Drafts the answer when the triage model cannot write (a classifier); otherwise the
    triage draft stands and this node makes no model call."""
    escalate: NodeSpec


class AlwaysEscalate(_Strict):
    needs_vision_without_vision_model: bool = True
    suspected_injection: bool = True
    complexity: list[Complexity] = Field(default_factory=lambda: ["high"])  # type: ignore[arg-type]
    categories: list[str] = Field(default_factory=list)
    priorities: list[str] = Field(default_factory=lambda: ["urgent"])


class NeverEscalate(_Strict):
    categories: list[str] = Field(default_factory=list)


class GatePolicy(_Strict):
    """When the mini tier's answer stands. See :func:`triagegate.gate.decide` for precedence."""

    threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    category_thresholds: dict[str, float] = Field(default_factory=dict)
    always_escalate: AlwaysEscalate = Field(default_factory=AlwaysEscalate)
    never_escalate: NeverEscalate = Field(default_factory=NeverEscalate)
    on_missing_logprobs: Literal["escalate", "verbalized"] = "escalate"
    """What a triage reply without usable log-probabilities means when its model is bound for
    them: ``escalate`` (a hard rule, reason ``logprobs_missing``), or ``verbalized`` (gate the
    model's stated confidence). Both log a warning and set ``Outcome.confidence_fallback``."""

    @field_validator("category_thresholds")
    @classmethod
    def _probabilities(cls, value: dict[str, float]) -> dict[str, float]:
        for name, t in value.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold for {name!r} must be between 0 and 1, got {t}")
        return value

    def threshold_for(self, category: str) -> float:
        return self.category_thresholds.get(category, self.threshold)


class Limits(_Strict):
    max_text_chars: int = Field(default=20_000, ge=1)
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    max_images: int = Field(default=4, ge=0)
    image_types: list[str] = Field(
        default_factory=lambda: ["image/png", "image/jpeg", "image/gif", "image/webp"]
    )


class GraphSpec(_Strict):
    version: Literal[1] = 1
    name: str = "triagegate"
    description: str = ""
    prompts: str = "../prompts"
    """Directory of prompt templates, relative to the graph file."""
    models: dict[str, ModelBinding]
    taxonomy: Taxonomy
    nodes: Nodes
    gate: GatePolicy = Field(default_factory=GatePolicy)
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _references_resolve(self) -> GraphSpec:
        aliases = set(self.models)
        for node_name in ("triage", "answer", "escalate"):
            node: NodeSpec = getattr(self.nodes, node_name)
            if node.model not in aliases:
                raise _RefError(
                    ("nodes", node_name, "model"),
                    f"nodes.{node_name}.model refers to {node.model!r}, which is not defined under 'models' "
                    f"(defined: {', '.join(sorted(aliases))})",
                )
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
        known = set(self.taxonomy.category_names)
        gate = self.gate
        for path, names in (
            (("gate", "category_thresholds"), list(gate.category_thresholds)),
            (("gate", "always_escalate", "categories"), gate.always_escalate.categories),
            (("gate", "never_escalate", "categories"), gate.never_escalate.categories),
        ):
            unknown = [n for n in names if n not in known]
            if unknown:
                where = path if path[-1] == "category_thresholds" else (*path, names.index(unknown[0]))
                raise _RefError(where, f"{'.'.join(path)} names unknown categories: {', '.join(unknown)}")
        bad_prio = [p for p in gate.always_escalate.priorities if p not in self.taxonomy.priorities]
        if bad_prio:
            raise ValueError(
                f"gate.always_escalate.priorities names unknown priorities: {', '.join(bad_prio)}"
            )
        return self


class LoadedSpec(BaseModel):
    """A validated graph file together with where it came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: GraphSpec
    path: Path | None
    prompts_dir: Path

    @property
    def name(self) -> str:
        return self.spec.name

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
            binding = {**binding, **override}
            applied.append(environment.binding_variable(alias))
        for suffix, key in (("BASE_URL", "base_url"), ("MODEL", "model"), ("API_KEY_ENV", "api_key_env")):
            value = environ.get(environment.binding_variable(alias, suffix))
            if value:
                binding[key] = value
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
            "a graph file must be a YAML mapping with 'models', 'taxonomy' and 'nodes'", file=source
        )
    applied = apply_env_overrides(raw, os.environ if environ is None else environ)
    try:
        spec = GraphSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, _RefError):
            loc = cause.loc
        node, line, where = _locate(tree, loc)
        key = where or None
        message = first["msg"].removeprefix("Value error, ")
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
    return LoadedSpec(spec=spec, path=None, prompts_dir=(root / spec.prompts).resolve())


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
