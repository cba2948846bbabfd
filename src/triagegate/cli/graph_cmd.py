"""``triagegate graph show|check``: look at and validate graph files without running models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from triagegate.cli import graph_app
from triagegate.cli.common import GraphArg

if TYPE_CHECKING:
    from triagegate.models.base import Capabilities
    from triagegate.spec import GraphSpec, LoadedSpec, ModelBinding


def _check(graph: str) -> tuple[LoadedSpec, list[str]]:
    from triagegate.knowledge import load_for
    from triagegate.models import backend_class
    from triagegate.prompts import load_graph_templates
    from triagegate.spec import LEGACY_NOTE, load_spec

    loaded = load_spec(graph)
    load_graph_templates(loaded)
    kb = load_for(loaded)
    spec = loaded.spec
    lines = [f"legacy form: {graph} {LEGACY_NOTE}"] if loaded.legacy else []
    if kb is not None and spec.knowledge_base is not None:
        lines.append(f"knowledge base: {spec.knowledge_base.path} ({len(kb)} articles)")
    for alias, binding in spec.models.items():
        backend_class(binding.backend)
        urls = [e.base_url for e in binding.endpoint_list()]
        where = f" @ {', '.join(urls)}" if urls else ""
        lines.append(f"{alias}: {binding.backend} {binding.model}{where}")
    lines += _tier_lines(spec, legacy=loaded.legacy)
    lines += [f"confidence: {_confidence_line(loaded, i)}" for i in range(len(spec.tiers) - 1)]
    if spec.handoff is not None:
        lines.append(f"handoff: {_handoff_line(spec)}")
    return loaded, lines


def _handoff_line(spec: GraphSpec) -> str:
    """When a person answers, in words: the rules of the graph's ``handoff`` block."""
    rule = spec.handoff
    assert rule is not None
    parts = []
    if rule.below is not None:
        parts.append(f"confidence below {rule.below}")
    if rule.categories:
        parts.append(f"category {', '.join(rule.categories)}")
    if rule.priorities:
        parts.append(f"priority {', '.join(rule.priorities)}")
    if rule.repeat_contact is not None:
        parts.append(f"contact {rule.repeat_contact} or later in a thread")
    if rule.on_failure:
        parts.append("no tier could answer")
    return "a person answers on " + "; ".join(parts) + " (runs are kept by the checkpointer)"


def _tier_lines(spec: GraphSpec, *, legacy: bool) -> list[str]:
    """One line per tier: its model, its gate or that it answers what reaches it, and what it serves.

    A ``draft`` on a chat model is ignored, and said so, except in a legacy file, whose
    required ``nodes.answer`` is that draft.
    """
    lines = []
    for tier in spec.tiers:
        parts = [tier.model]
        if tier.gate is None:
            parts.append("answers what reaches it")
        else:
            parts.append(f"threshold {tier.gate.threshold}")
            if tier.gate.category_thresholds:
                parts.append(
                    "category thresholds "
                    + ", ".join(f"{k} {v}" for k, v in tier.gate.category_thresholds.items())
                )
        if tier.categories is not None:
            parts.append(f"serves {', '.join(tier.categories)}")
        if tier.draft is not None and not spec.chats(tier.model):
            parts.append(f"answers drafted by {tier.draft.model}")
        lines.append(f"tier {tier.name}: {'; '.join(parts)}")
        if tier.draft is not None and spec.chats(tier.model) and not legacy:
            lines.append(
                f"tier {tier.name}: draft ignored: {tier.model} is a chat model and writes its own answer"
            )
    return lines


def _declared_capabilities(binding: ModelBinding) -> Capabilities:
    """What a binding's backend will offer, read from the graph file without building it."""
    from triagegate.models.base import Capabilities

    if binding.backend == "classifier":
        return Capabilities(chat=False, classify=True)
    if binding.backend == "llamacpp":
        from triagegate.models.llamacpp import DEFAULT_LOGPROBS

        return Capabilities(logprobs=binding.options.get("logprobs", DEFAULT_LOGPROBS) is True)
    return Capabilities(logprobs=binding.capabilities.logprobs)


def _confidence_line(loaded: LoadedSpec, index: int) -> str:
    """Which confidence tier ``index``'s model binding promises, and what a missing one means.

    A fallback chain offers log-probabilities only when every endpoint in it does, as
    :class:`~triagegate.models.fallback.FallbackChain` does at run time.
    """
    from triagegate.confidence import OPTION_CODES
    from triagegate.replies import triage_confidence_method

    spec = loaded.spec
    tier = spec.tiers[index]
    alias = tier.model
    chain = [alias, *spec.models[alias].fallbacks]
    caps = [_declared_capabilities(spec.models[a]) for a in chain]
    if not all(c.chat for c in caps):
        return f"triage model {alias}: classifier (the trained model's class probability)"
    from triagegate.models.base import Capabilities

    method = triage_confidence_method(Capabilities(logprobs=all(c.logprobs for c in caps)), spec)
    if method == "logprobs" and tier.gate is not None:
        policy = tier.gate.on_missing_logprobs
        then = "escalates" if policy == "escalate" else "keeps the model's stated confidence"
        key = loaded.key(("tiers", index, "gate", "on_missing_logprobs"))
        return (
            f"triage model {alias}: logprobs; a reply without usable log-probabilities {then} "
            f"({key}: {policy})"
        )
    why = "the model's stated confidence"
    if caps[0].logprobs and not all(c.logprobs for c in caps):
        lacking = ", ".join(a for a, c in zip(chain, caps, strict=True) if not c.logprobs)
        why = f"logprobs declared, but fallback {lacking} has none"
    elif caps[0].logprobs:
        why = (
            f"logprobs declared, but {len(spec.taxonomy.categories)} categories exceed the "
            f"{len(OPTION_CODES)} one-token option codes"
        )
    return f"triage model {alias}: verbalized ({why})"


@graph_app.command("check")
def check(graph: GraphArg) -> None:
    """Validate GRAPH and its prompt templates; exit 2 with file, line and key on the first problem.

    Then list the models, the tiers (model, gate threshold or "answers what reaches it",
    categories served, drafter) and which confidence each tier's model gives.
    """
    loaded, lines = _check(str(graph))
    spec = loaded.spec
    typer.echo(
        f"ok: {graph} ({spec.name}): {len(spec.taxonomy.categories)} categories, "
        f"tiers {' -> '.join(spec.tier_names)}"
    )
    for line in lines:
        typer.echo(f"  {line}")


@graph_app.command("show")
def show(
    graph: GraphArg,
    fmt: Annotated[str, typer.Option("--format", help="mermaid (default) or json.")] = "mermaid",
) -> None:
    """Print GRAPH's flow as Mermaid text, drawn by LangGraph from the compiled graph (or the
    validated spec as JSON). Each tier is labelled with its model and its gate's threshold."""
    from triagegate.prompts import load_graph_templates
    from triagegate.spec import load_spec

    loaded = load_spec(graph)
    load_graph_templates(loaded)
    spec = loaded.spec
    if fmt == "json":
        typer.echo(spec.model_dump_json(indent=2))
        return
    if fmt != "mermaid":
        raise typer.BadParameter("use 'mermaid' or 'json'", param_hint="--format")
    from triagegate.graph import build_graph, mermaid

    declared = {alias: _declared_capabilities(binding) for alias, binding in spec.models.items()}
    typer.echo(mermaid(build_graph(spec, declared)))
