"""Run a graph's first tier over labelled tickets: the one runner behind ``eval`` and ``calibrate``.

Only the first tier's alias is built (not the drafting or later tiers' models), so
evaluating a classifier needs neither network nor a local LLM. Each ticket goes through the
same code as in production: :func:`triagegate.nodes.triage_ticket`, the tier node's triage,
then :func:`triagegate.gate.decide` with the tier's gate, so a chat model's log-probs,
repair retry and failure handling are measured as they behave. A bare
:class:`~triagegate.models.classifier.ClassifierBackend` is scored in one vectorised call
instead; :func:`classifier_triage` builds the same :class:`Triage` the node would (a test
checks the two agree).

:func:`triage_tickets` never raises for a model failure (the ticket comes back as a failed
triage, as in production) except for a replay miss: a recording that lacks a request cannot
measure anything, so :class:`~triagegate.errors.ReplayMiss` propagates, caught by type.

This module also holds what both commands do before and after triage: loading the graph
(replayed if asked), checking labels against the taxonomy, building or fitting the triage
backend, and :func:`evaluate`, the whole of ``triagegate eval`` without its printing.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from triagegate.errors import ConfigError, InputError, ReplayMiss
from triagegate.gate import decide
from triagegate.models import BuildContext, build_backends
from triagegate.models.base import ChatRequest, ChatResult, Classification, ClassifyRequest, ModelBackend
from triagegate.models.classifier import ClassifierBackend
from triagegate.prompts import Template, load_graph_templates
from triagegate.screening import estimate_complexity, flags_for
from triagegate.spec import GraphSpec, LoadedSpec
from triagegate.tuning.datasets import DatasetError, LabeledText
from triagegate.types import Ticket, Triage

if TYPE_CHECKING:
    from triagegate.cost import CostEstimate
    from triagegate.state import RunContext
    from triagegate.tuning.evaluation import EvalReport, Scored


def tickets_for(rows: Sequence[LabeledText]) -> list[Ticket]:
    """One ticket per labelled row, with the row's line as its id."""
    return [Ticket(id=f"row-{r.line}", text=r.text) for r in rows]


def triage_backend(
    loaded: LoadedSpec,
    *,
    environ: Mapping[str, str],
    cache_dir: Path,
    extras: dict[str, object] | None = None,
) -> tuple[str, ModelBackend]:
    """Build only the graph's first-tier backend (with its fallbacks), as the pipeline would."""
    alias = loaded.spec.first_tier.model
    context = BuildContext(loaded=loaded, environ=environ, cache_dir=cache_dir, extras=dict(extras or {}))
    return alias, build_backends(context, [alias])[alias]


def triage_template(loaded: LoadedSpec) -> Template:
    """The first tier's (triage-role) template."""
    name = loaded.spec.first_tier.name
    return load_graph_templates(loaded, [name])[name]


def flagship_view(loaded: LoadedSpec) -> LoadedSpec:
    """The graph with its first tier bound to the last tier's alias (same prompt and budget).

    Running the first tier of this view triages with the flagship, whose categories can
    then stand in for labels.
    """
    spec = loaded.spec
    first = spec.first_tier.model_copy(update={"model": spec.last_tier.model, "draft": None})
    view = spec.model_copy(update={"tiers": [first, *spec.tiers[1:]]})
    return loaded.model_copy(update={"spec": view})


def tier_view(loaded: LoadedSpec, index: int) -> LoadedSpec:
    """The graph as tier ``index`` sees it when run as the first tier, to triage every ticket with it.

    A tier before the last keeps its own prompt, budget and gate (the graph from that tier
    on); the last tier is :func:`flagship_view` (it has no triage prompt of its own).
    """
    spec = loaded.spec
    if not 0 <= index < len(spec.tiers):
        raise ValueError(f"the graph has {len(spec.tiers)} tiers, not a tier {index}")
    if index == len(spec.tiers) - 1:
        return flagship_view(loaded)
    return loaded.model_copy(update={"spec": spec.model_copy(update={"tiers": spec.tiers[index:]})})


def whole_replies(loaded: LoadedSpec) -> LoadedSpec:
    """``loaded`` with the first tier's early gate off (``early: false``).

    Tuning needs each reply's confidence, not an early escalation, and a recording of
    whole replies can be replayed under any threshold.
    """
    spec = loaded.spec
    first = spec.first_tier
    if first.gate is None or not first.gate.early:
        return loaded
    tier = first.model_copy(update={"gate": first.gate.model_copy(update={"early": False})})
    return loaded.model_copy(update={"spec": spec.model_copy(update={"tiers": [tier, *spec.tiers[1:]]})})


def classifier_triage(spec: GraphSpec, ticket: Ticket, probabilities: Mapping[str, float]) -> Triage:
    """The :class:`Triage` that ``triage_ticket`` makes from a classifier's probabilities."""
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


class _MissWatch:
    """``backend`` as the triage node sees it, keeping the first :class:`ReplayMiss` it raised.

    The node turns every model error into a failed triage, which is right in production;
    the runner needs the miss itself, so it watches the backend rather than reading the
    failed triage's text.
    """

    def __init__(self, backend: ModelBackend) -> None:
        self._backend = backend
        self.name = backend.name
        self.model = backend.model
        self.capabilities = backend.capabilities
        self.miss: ReplayMiss | None = None

    async def chat(self, request: ChatRequest) -> ChatResult:
        try:
            return await self._backend.chat(request)
        except ReplayMiss as exc:
            self.miss = self.miss or exc
            raise

    async def classify(self, request: ClassifyRequest) -> Classification:
        try:
            return await self._backend.classify(request)
        except ReplayMiss as exc:
            self.miss = self.miss or exc
            raise

    async def aclose(self) -> None:
        await self._backend.aclose()


def _context(spec: GraphSpec, backend: ModelBackend, template: Template) -> RunContext:
    """A run context holding only the first tier's backend and template."""
    from triagegate.state import RunContext

    first = spec.first_tier
    return RunContext(
        spec=spec,
        graph_name=spec.name,
        graph_hash="tuning",
        templates={first.name: template},
        backends={first.model: backend},
    )


async def _triage_one(context: RunContext, ticket: Ticket) -> Triage:
    from triagegate.nodes import triage_ticket

    triage, _ = await triage_ticket(context, context.spec.first_tier, ticket)
    return triage


async def _node_triage(
    spec: GraphSpec, backend: ModelBackend, alias: str, template: Template, ticket: Ticket
) -> Triage:
    """One ticket through the first tier's triage, as :func:`triage_tickets` runs a chat model."""
    if alias != spec.first_tier.model:
        raise ValueError(f"the backend must serve the first tier's alias {spec.first_tier.model!r}")
    return await _triage_one(_context(spec, backend, template), ticket)


async def triage_tickets(
    loaded: LoadedSpec,
    tickets: Sequence[Ticket],
    backend: ModelBackend,
    *,
    concurrency: int = 8,
    replay_misses: Literal["raise", "fail"] = "raise",
) -> list[Triage]:
    """Triage every ticket with ``backend`` as the graph's first tier does, in input order.

    ``backend`` serves the first tier's alias of ``loaded`` (``flagship_view(loaded)`` for
    the flagship). Replies are read whole (:func:`whole_replies`). Model failures come back
    as failed triages. A replay miss raises
    :class:`ReplayMiss` once the tickets in flight finish (no further ticket starts), unless
    ``replay_misses`` is ``"fail"``: then it is a failed triage like any other error (for a
    run whose recording may cover only some tickets).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    loaded = whole_replies(loaded)
    spec = loaded.spec
    if isinstance(backend, ClassifierBackend):
        from triagegate.replies import classify_request

        texts = [classify_request(spec, t).text for t in tickets]
        return [
            classifier_triage(spec, t, probs)
            for t, probs in zip(tickets, await backend.classify_many(texts), strict=True)
        ]
    watch = _MissWatch(backend)
    context = _context(spec, watch, triage_template(loaded))
    out: list[Triage | None] = [None] * len(tickets)
    queue = iter(range(len(tickets)))

    async def worker() -> None:
        for i in queue:
            if watch.miss is not None and replay_misses == "raise":
                return
            out[i] = await _triage_one(context, tickets[i])

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(tickets))))))
    if watch.miss is not None and replay_misses == "raise":
        raise watch.miss
    return [t for t in out if t is not None]


async def score_tiers(
    loaded: LoadedSpec,
    tickets: Sequence[Ticket],
    backends: Sequence[ModelBackend],
    *,
    concurrency: int = 8,
) -> list[list[Triage]]:
    """Every tier's triage of every ticket (``backends[i]`` serves tier ``i``, see :func:`tier_view`).

    Each tier runs once per ticket whether or not the cascade would reach it, so the
    cascade can then be replayed offline under any thresholds
    (:mod:`triagegate.tuning.cascade`). A replay miss raises as in :func:`triage_tickets`.
    """
    if len(backends) != len(loaded.spec.tiers):
        raise ValueError(f"{len(loaded.spec.tiers)} tiers but {len(backends)} backends")
    return [
        await triage_tickets(tier_view(loaded, i), tickets, backend, concurrency=concurrency)
        for i, backend in enumerate(backends)
    ]


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


async def score_rows(
    loaded: LoadedSpec,
    rows: Sequence[LabeledText],
    backend: ModelBackend,
    alias: str | None = None,
    *,
    concurrency: int = 8,
) -> ScoredRun:
    """Triage every row (:func:`triage_tickets`) and apply the first tier's gate to each.

    ``alias`` names the alias ``backend`` serves; it must be the first tier's (the default).
    """
    first = loaded.spec.first_tier
    if alias is not None and alias != first.model:
        raise ValueError(f"the backend must serve the first tier's alias {first.model!r}")
    policy = loaded.spec.gate_of(first.name)
    started = time.perf_counter()
    triages = await triage_tickets(loaded, tickets_for(rows), backend, concurrency=concurrency)
    run = ScoredRun(seconds=time.perf_counter() - started)
    for row, triage in zip(rows, triages, strict=True):
        decision = decide(triage, policy, mini_has_vision=backend.capabilities.vision)
        run.scored.append((row.label, triage.category, triage.confidence))
        run.gate_kept.append(not decision.escalate)
        run.gate_reasons.update(decision.reasons)
        if triage.error:
            run.errors.append(f"line {row.line}: {triage.error}")
    run.mean_text_chars = sum(len(r.text) for r in rows) / len(rows) if rows else 0.0
    return run


def route_costs(loaded: LoadedSpec, backend: ModelBackend, mean_text_chars: float) -> CostEstimate:
    """Estimated USD per kept and per escalated ticket (:mod:`triagegate.cost`), for this triage backend."""
    from triagegate.cost import Estimator

    estimator = Estimator(loaded.spec, load_graph_templates(loaded), triage=backend.capabilities)
    return estimator.routes(mean_text_chars)


def load_graph(graph: str | Path, replay: Path | None, environ: Mapping[str, str]) -> LoadedSpec:
    """The graph file, with every alias rebound to a recording when ``replay`` (or the env) names one."""
    from triagegate.models.replay import replayed
    from triagegate.spec import load_spec

    return replayed(load_spec(graph, environ=environ), replay, environ)


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """What eval, calibrate and their ``--cascade`` forms share: the graph, DATA, how to split and run it."""

    graph: Path
    data: Path
    text_col: str | None = None
    label_col: str | None = None
    split_fraction: float | None = None
    seed: int = 13
    fit: bool = False
    """Fit the graph's classifier on the training part of the split first (``--train``)."""
    concurrency: int = 8
    record: Path | None = None
    replay: Path | None = None


def open_graph(options: DataOptions, environ: Mapping[str, str] | None) -> tuple[dict[str, str], LoadedSpec]:
    """The environment and the graph (replayed if asked); refuses ``--train`` without ``--split``."""
    if options.fit and not options.split_fraction:
        raise InputError("--train needs --split, or it would measure the classifier on its own training rows")
    env = dict(os.environ if environ is None else environ)
    return env, load_graph(options.graph, options.replay, env)


def split_rows(
    rows: Sequence[LabeledText], options: DataOptions, sample: int | None, notes: list[str]
) -> tuple[list[LabeledText], list[LabeledText]]:
    """``(training, evaluated)`` rows: the seeded split when asked, then a seeded sample of the evaluated part."""
    from triagegate.tuning.datasets import split

    fraction, seed = options.split_fraction, options.seed
    train_rows, rows = split(list(rows), fraction, seed) if fraction else ([], list(rows))
    if sample is not None and sample < len(rows):
        chosen = sorted(random.Random(seed).sample(range(len(rows)), sample))
        rows = [rows[i] for i in chosen]
        notes.append(f"a seeded sample (seed {seed}) of {sample} evaluated rows")
    return train_rows, rows


def options_backend(
    loaded: LoadedSpec, options: DataOptions, train_rows: Sequence[LabeledText], environ: Mapping[str, str]
) -> tuple[str, ModelBackend, str | None]:
    """:func:`mini_backend` as the options ask (fitted on ``train_rows`` with ``--train``)."""
    return mini_backend(
        loaded,
        graph=options.graph,
        data=options.data,
        train_rows=train_rows if options.fit else None,
        record=options.record,
        environ=environ,
    )


def check_labels(rows: Sequence[LabeledText], spec: GraphSpec, data: str | Path) -> None:
    """Raise :class:`DatasetError` when a label is not one of the graph's categories."""
    categories = spec.taxonomy.category_names
    unknown = sorted({r.label for r in rows} - set(categories))
    if unknown:
        raise DatasetError(
            f"labels not in the graph's taxonomy: {', '.join(unknown)} (the taxonomy has: {', '.join(categories)})",
            file=data,
        )


def mini_backend(
    loaded: LoadedSpec,
    *,
    graph: str | Path,
    data: str | Path,
    train_rows: Sequence[LabeledText] | None,
    record: Path | None,
    environ: Mapping[str, str],
) -> tuple[str, ModelBackend, str | None]:
    """The first tier's backend to measure: fitted on ``train_rows`` (``--train``) or built from the graph.

    Wrapped to record its calls when ``record`` (or the env) names a file. Returns the
    alias, the backend and a note for the report (how the classifier was fitted), if any.
    """
    from triagegate.models.recording import recorded
    from triagegate.pipeline import default_cache_dir

    note = None
    backend: ModelBackend
    if train_rows is not None:
        alias, backend, note = fit_triage_classifier(loaded.spec, graph, data, train_rows)
    else:
        alias, backend = triage_backend(loaded, environ=environ, cache_dir=default_cache_dir(environ))
    return alias, recorded(alias, backend, record, loaded.spec.models, environ), note


def fit_triage_classifier(
    spec: GraphSpec, graph: str | Path, data: str | Path, train_rows: Sequence[LabeledText]
) -> tuple[str, ModelBackend, str]:
    """Fit the graph's first-tier classifier on ``train_rows`` (``--train`` of eval and calibrate).

    Returns the alias, a ready backend and a note for the report. Raises :class:`ConfigError`
    when the first tier's model is not a classifier or the training part lacks categories.
    """
    from triagegate.tuning import training

    alias = spec.first_tier.model
    binding = spec.models[alias]
    if binding.backend != "classifier":
        raise ConfigError(
            f"--train fits a classifier, but the first tier's model {alias!r} uses backend {binding.backend!r}",
            file=str(graph),
            key=f"models.{alias}.backend",
        )
    model = training.fit_for_graph(
        spec, [r.text for r in train_rows], [r.label for r in train_rows], source=Path(data).name
    )
    problem = training.label_mismatch(model.labels, spec.taxonomy.category_names)
    if problem:
        raise ConfigError(f"{data}: after the split the training part lacks some categories ({problem})")
    note = f"classifier fitted on {len(train_rows)} training rows in {model.metadata.train_seconds:.2f} s"
    return alias, ClassifierBackend(alias, binding, model=model), note


def split_summary(
    fraction: float | None, seed: int, train_rows: int, test_rows: int
) -> dict[str, float] | None:
    """How a labeled file was split, for the JSON reports of eval and calibrate."""
    if not fraction:
        return None
    return {"fraction": fraction, "seed": seed, "train_rows": train_rows, "test_rows": test_rows}


@dataclass(frozen=True, kw_only=True)
class EvalOptions(DataOptions):
    """What ``triagegate eval`` was asked; see its ``--help`` for each option."""

    limit: int | None = None


def evaluate(options: EvalOptions, *, environ: Mapping[str, str] | None = None) -> EvalReport:
    """Triage the evaluated rows, apply the gate and build the report: ``triagegate eval`` without printing.

    Raises :class:`InputError`, :class:`DatasetError` or :class:`ConfigError` for bad
    options, data or graph, and :class:`ReplayMiss` when a replayed recording lacks a request.
    """
    from triagegate.tuning.datasets import load_labeled
    from triagegate.tuning.evaluation import build_report

    env, loaded = open_graph(options, environ)
    spec = loaded.spec
    rows = load_labeled(options.data, text_col=options.text_col, label_col=options.label_col)
    check_labels(rows, spec, options.data)
    fraction, seed = options.split_fraction, options.seed
    train_rows, test_rows = split_rows(rows, options, None, [])
    if options.limit is not None:
        test_rows = test_rows[: options.limit]
    alias, backend, note = options_backend(loaded, options, train_rows, env)
    notes = [note] if note else []

    async def go() -> ScoredRun:
        try:
            return await score_rows(loaded, test_rows, backend, concurrency=options.concurrency)
        finally:
            await backend.aclose()

    run = asyncio.run(go())
    if run.errors:
        notes.append(f"{len(run.errors)} triage call(s) failed, e.g. {run.errors[0]}")
    return build_report(
        run.scored,
        graph=str(options.graph),
        data=str(options.data),
        triage_model=f"{alias}: {spec.models[alias].backend} {backend.model}",
        threshold=spec.gate_of(spec.first_tier.name).threshold,
        cost=route_costs(loaded, backend, run.mean_text_chars),
        gate_kept=run.gate_kept,
        gate_reasons=dict(run.gate_reasons.most_common()),
        split=split_summary(fraction, seed, len(train_rows), len(test_rows)),
        trained_on_split=options.fit,
        triage_errors=len(run.errors),
        seconds=round(run.seconds, 4),
        triage_ms_per_ticket=round(run.ms_per_ticket, 4),
        notes=notes,
    )
