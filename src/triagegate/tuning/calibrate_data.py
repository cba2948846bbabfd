"""What ``triagegate calibrate`` measures before fitting: triage per ticket, the gate's verdicts, reference labels.

Triage runs through the production code, :func:`triagegate.nodes.triage_node` (or one
vectorised call for a bare classifier, giving the same :class:`Triage` as the node), so
chat-model confidences, repair retries and failures are calibrated as they behave.

The gate has rules besides confidence; :func:`forced_routes` applies the graph's own
:func:`~triagegate.gate.decide` with the confidence thresholds taken out, so calibration
knows which tickets escalate (or stay) whatever their confidence.

The flagship can stand in for labels: :func:`flagship_view` is the graph with the triage
node bound to the escalation alias, so the flagship triages a sample with the same prompt
(live, recorded with ``--record``, or replayed with ``--replay``) and its categories serve as
the reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from triagegate.tuning.calibration import FORCED_ESCALATE, FORCED_KEEP, THRESHOLD_DECIDES
from triagegate.tuning.datasets import TEXT_COLUMNS, DatasetError, LabeledText, iter_labeled
from triagegate.gate import decide
from triagegate.models.base import ModelBackend
from triagegate.models.classifier import ClassifierBackend
from triagegate.tuning.scoring import classifier_triage, triage_template
from triagegate.spec import GatePolicy, LoadedSpec
from triagegate.types import Ticket, Triage

REPLAY_MISS = "ReplayMiss: "


def tickets_for(rows: Sequence[LabeledText]) -> list[Ticket]:
    return [Ticket(id=f"row-{r.line}", text=r.text) for r in rows]


async def triage_all(
    loaded: LoadedSpec, tickets: Sequence[Ticket], backend: ModelBackend, *, concurrency: int = 8
) -> list[Triage]:
    """Triage every ticket with ``backend`` as the graph's triage node does; failures come back as failed triages."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    spec = loaded.spec
    if isinstance(backend, ClassifierBackend):
        from triagegate.replies import classify_request

        texts = [classify_request(spec, t).text for t in tickets]
        return [
            classifier_triage(spec, t, probs)
            for t, probs in zip(tickets, await backend.classify_many(texts), strict=True)
        ]
    from langgraph.runtime import Runtime

    from triagegate.nodes import triage_node
    from triagegate.state import RunContext, TicketState

    runtime = Runtime(
        context=RunContext(
            spec=spec,
            graph_name=spec.name,
            graph_hash="calibrate",
            templates={"triage": triage_template(loaded)},
            backends={spec.nodes.triage.model: backend},
        )
    )
    out: list[Triage | None] = [None] * len(tickets)
    queue = iter(range(len(tickets)))

    async def worker() -> None:
        for i in queue:
            state: TicketState = {"run_id": "calibrate", "ticket": tickets[i], "images": []}
            update = await triage_node(state, runtime)
            out[i] = update["triage"]

    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(tickets))))))
    return [t for t in out if t is not None]


def replay_miss(triages: Sequence[Triage]) -> str | None:
    """The first replay-miss message among failed triages, if any (the recording lacks a request)."""
    for triage in triages:
        if triage.error and REPLAY_MISS in triage.error:
            return triage.error.split(REPLAY_MISS, 1)[1]
    return None


def forced_routes(triages: Sequence[Triage], policy: GatePolicy, *, mini_has_vision: bool) -> list[int]:
    """Per ticket: escalated or kept by the gate whatever the confidence, or left to the threshold."""
    open_policy = policy.model_copy(update={"threshold": 0.0, "category_thresholds": {}})
    out = []
    for triage in triages:
        if decide(triage, open_policy, mini_has_vision=mini_has_vision).escalate:
            out.append(FORCED_ESCALATE)
        elif triage.category in policy.never_escalate.categories:
            out.append(FORCED_KEEP)
        else:
            out.append(THRESHOLD_DECIDES)
    return out


def flagship_view(loaded: LoadedSpec) -> LoadedSpec:
    """The graph with its triage node bound to the escalation alias (same prompt and budget)."""
    nodes = loaded.spec.nodes
    triage = nodes.triage.model_copy(update={"model": nodes.escalate.model})
    spec = loaded.spec.model_copy(update={"nodes": nodes.model_copy(update={"triage": triage})})
    return loaded.model_copy(update={"spec": spec})


def read_unlabeled(path: str | Path, text_col: str | None) -> list[LabeledText]:
    """Ticket texts of a file without a label column (labels left empty for a reference to fill)."""
    candidates = [text_col] if text_col else list(TEXT_COLUMNS)
    problem: DatasetError | None = None
    for column in candidates:
        try:
            rows = list(iter_labeled(path, text_col=column, label_col=column))
        except DatasetError as exc:
            if f"column {column!r}" not in exc.reason:
                raise
            problem = exc
            continue
        if not rows:
            raise DatasetError("the file has a header but no rows", file=path)
        return [LabeledText(r.text, "", r.line) for r in rows]
    assert problem is not None
    tried = ", ".join(repr(c) for c in candidates)
    raise DatasetError(f"no text column (looked for {tried}); name it with --text-col", file=path, line=1)
