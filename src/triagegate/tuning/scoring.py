"""Run a graph's triage tier over labeled text and collect what the metrics need.

Only the triage alias is built (not the drafting or flagship models), so evaluating a
classifier needs neither network nor a local LLM. Each ticket goes through the same code as
in production: :func:`triagegate.nodes.triage_node` and :func:`triagegate.gate.decide`, so a
chat model's log-probs, repair retry and failure handling are measured as they behave.
A :class:`~triagegate.models.classifier.ClassifierBackend` is scored in one vectorised call
instead; :func:`classifier_triage` builds the same :class:`Triage` the node would (a test
checks the two agree).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from triagegate.tuning.datasets import LabeledText
from triagegate.tuning.evaluation import Scored
from triagegate.gate import decide
from triagegate.models import BuildContext, build_backends
from triagegate.models.base import ModelBackend
from triagegate.models.classifier import ClassifierBackend
from triagegate.prompts import Template, load_graph_templates
from triagegate.screening import estimate_complexity, flags_for
from triagegate.spec import GraphSpec, LoadedSpec
from triagegate.types import Ticket, Triage


@dataclass
class ScoredRun:
    """Per-ticket results of a triage run, in input order."""

    scored: list[Scored] = field(default_factory=list)
    gate_kept: list[bool] = field(default_factory=list)
    gate_reasons: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    mean_text_chars: float = 0.0

    @property
    def ms_per_ticket(self) -> float:
        return self.seconds * 1000 / len(self.scored) if self.scored else 0.0


def triage_backend(
    loaded: LoadedSpec,
    *,
    environ: Mapping[str, str],
    cache_dir: Path,
    extras: dict[str, object] | None = None,
) -> tuple[str, ModelBackend]:
    """Build only the graph's triage backend (with its fallbacks), as the pipeline would."""
    alias = loaded.spec.nodes.triage.model
    context = BuildContext(loaded=loaded, environ=environ, cache_dir=cache_dir, extras=dict(extras or {}))
    return alias, build_backends(context, [alias])[alias]


def triage_template(loaded: LoadedSpec) -> Template:
    return load_graph_templates(loaded, ["triage"])["triage"]


def classifier_triage(spec: GraphSpec, ticket: Ticket, probabilities: Mapping[str, float]) -> Triage:
    """The :class:`Triage` that ``triage_node`` makes from a classifier's probabilities."""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])
    category, confidence = ranked[0]
    return Triage(
        category=category,
        priority=spec.taxonomy.priority_for(category),
        complexity=estimate_complexity(ticket.text),
        needs_vision=ticket.has_images,
        confidence=confidence,
        confidence_method="classifier",
        alternatives=dict(ranked[1:4]),
        flags=flags_for(f"{ticket.subject or ''}\n{ticket.text}"),
    )


async def _node_triage(
    spec: GraphSpec, backend: ModelBackend, alias: str, template: Template, ticket: Ticket
) -> Triage:
    from langgraph.runtime import Runtime

    from triagegate.nodes import triage_node
    from triagegate.state import RunContext, TicketState

    context = RunContext(
        spec=spec,
        graph_name=spec.name,
        graph_hash="eval",
        templates={"triage": template},
        backends={alias: backend},
    )
    state: TicketState = {"run_id": "eval", "ticket": ticket, "images": []}
    update = await triage_node(state, Runtime(context=context))
    triage: Triage = update["triage"]
    return triage


async def score_rows(
    loaded: LoadedSpec,
    rows: Sequence[LabeledText],
    backend: ModelBackend,
    alias: str,
    *,
    concurrency: int = 8,
) -> ScoredRun:
    """Triage every row with ``backend`` and apply the graph's gate; never raises for model failures."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    spec = loaded.spec
    tickets = [Ticket(id=f"row-{r.line}", text=r.text) for r in rows]
    started = time.perf_counter()
    triages: list[Triage | None] = [None] * len(rows)
    if isinstance(backend, ClassifierBackend):
        from triagegate.replies import classify_request

        texts = [classify_request(spec, t).text for t in tickets]
        for i, probs in enumerate(await backend.classify_many(texts)):
            triages[i] = classifier_triage(spec, tickets[i], probs)
    else:
        template = triage_template(loaded)
        queue = iter(range(len(rows)))

        async def worker() -> None:
            for i in queue:
                triages[i] = await _node_triage(spec, backend, alias, template, tickets[i])

        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(rows))))))
    run = ScoredRun(seconds=time.perf_counter() - started)
    for row, triage in zip(rows, triages, strict=True):
        assert triage is not None
        decision = decide(triage, spec.gate, mini_has_vision=backend.capabilities.vision)
        run.scored.append((row.label, triage.category, triage.confidence))
        run.gate_kept.append(not decision.escalate)
        run.gate_reasons.update(decision.reasons)
        if triage.error:
            run.errors.append(f"line {row.line}: {triage.error}")
    run.mean_text_chars = sum(len(r.text) for r in rows) / len(rows) if rows else 0.0
    return run


def prompt_overhead_chars(loaded: LoadedSpec) -> dict[str, int]:
    """Characters each node's prompt adds around a ticket (rendered with a one-character ticket)."""
    from triagegate import replies
    from triagegate.models.base import Capabilities

    spec = loaded.spec
    templates = load_graph_templates(loaded)
    ticket = Ticket(text="x")
    first = spec.taxonomy.category_names[0]
    triage = Triage(
        category=first,
        priority=spec.taxonomy.default_priority,
        confidence=0.5,
        confidence_method="classifier",
    )
    requests = {
        "triage": replies.triage_request(
            templates["triage"], spec, ticket, [], Capabilities(), spec.nodes.triage
        ),
        "answer": replies.answer_request(templates["answer"], spec, ticket, triage, []),
        "escalate": replies.escalate_request(
            templates["escalate"], spec, ticket, triage, [], spec.nodes.escalate
        ),
    }
    return {n: sum(len(m.text) for m in r.messages) - 1 for n, r in requests.items()}


def fit_triage_classifier(
    spec: GraphSpec, graph: str | Path, data: str | Path, train_rows: Sequence[LabeledText]
) -> tuple[str, ModelBackend, str]:
    """Fit the graph's classifier triage model on ``train_rows`` (``--train`` of eval and calibrate).

    Returns the alias, a ready backend and a note for the report. Raises :class:`ConfigError`
    when the triage model is not a classifier or the training part lacks categories.
    """
    from triagegate.tuning import training
    from triagegate.errors import ConfigError

    alias = spec.nodes.triage.model
    binding = spec.models[alias]
    if binding.backend != "classifier":
        raise ConfigError(
            f"--train fits a classifier, but the triage model {alias!r} uses backend {binding.backend!r}",
            file=str(graph),
            key=f"models.{alias}.backend",
        )
    model = training.fit([r.text for r in train_rows], [r.label for r in train_rows], source=Path(data).name)
    problem = training.label_mismatch(model.labels, spec.taxonomy.category_names)
    if problem:
        raise ConfigError(f"{data}: after the split the training part lacks some categories ({problem})")
    note = f"classifier fitted on {len(train_rows)} training rows in {model.metadata.train_seconds:.2f} s"
    return alias, ClassifierBackend(alias, binding, model=model), note
