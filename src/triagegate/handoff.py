"""The human step: a person answers a ticket the cascade hands off, with the model's draft in hand.

The graph's ``handoff`` rule (:class:`triagegate.spec.HandoffPolicy`, decided by the pure
:func:`triagegate.gate.handoff_reasons`) is checked wherever a run would end; a ticket it
matches goes to the ``human`` node instead of ``END``. That node pauses the run with
LangGraph's ``interrupt()`` and the checkpointer keeps the state until someone resumes it
(``Command(resume=...)``, see :meth:`triagegate.pipeline.Pipeline.resume`).

LangGraph runs an interrupted node again from its start on resume, so the ``human`` node
calls no model: the draft it offers is the answer the tiers before it already wrote (in the
state's ``reply``), and what it returns is a pure function of that state and the person's
:class:`~triagegate.types.HumanAnswer`.
"""

from __future__ import annotations

import difflib
import time
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from triagegate.gate import handoff_reasons
from triagegate.spec import GraphSpec
from triagegate.state import Reply, RunContext, TicketState, last_triage
from triagegate.types import Handoff, HumanAnswer, NodeRun

HUMAN = "human"
"""The human step's node name, its ``Outcome.route`` and its entry in ``Outcome.path``."""


def reasons_of(spec: GraphSpec, state: TicketState) -> tuple[str, ...]:
    """Why the run in ``state``, about to end, goes to a person (empty: it does not). Pure."""
    reply = state.get("reply")
    triage = last_triage(state)
    return handoff_reasons(
        spec.handoff,
        confidence=triage.confidence if triage else None,
        category=(reply.category if reply else None) or (triage.category if triage else None),
        priority=(reply.priority if reply else None) or (triage.priority if triage else None),
        contact=state["ticket"].contact,
        failed=reply is None or reply.status == "failed" or reply.answer is None,
    )


def pending_handoff(spec: GraphSpec, state: TicketState) -> Handoff:
    """The handoff a paused run offers a person: its reasons and the best draft so far."""
    reply = state.get("reply")
    draft = reply.answer if reply is not None and reply.status == "ok" else None
    return Handoff(
        reasons=list(reasons_of(spec, state)),
        draft=draft,
        draft_route=reply.route if reply is not None and draft is not None else None,
    )


def resolve(pending: Handoff, answer: HumanAnswer) -> Handoff:
    """The handoff once a person answered: the final text and, for an edit, the diff from the draft.

    Raises :class:`ValueError` for ``approve`` when there is no draft to approve.
    """
    if answer.action == "approve":
        if pending.draft is None:
            raise ValueError(
                "there is no draft to approve (no tier produced an answer); send 'answer' with the text"
            )
        text = pending.draft
    else:
        assert answer.text is not None
        text = answer.text
    diff = None
    if pending.draft is not None and text != pending.draft:
        diff = "".join(
            difflib.unified_diff(
                pending.draft.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile="draft",
                tofile="answer",
            )
        )
    return pending.model_copy(
        update={
            "action": answer.action,
            "answer": text,
            "by": answer.by,
            "category": answer.category,
            "diff": diff,
        }
    )


async def human(state: TicketState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Pause for a person; on resume, their answer becomes the ticket's reply (``route: human``)."""
    started = time.perf_counter()
    pending = pending_handoff(runtime.context.spec, state)
    answer = HumanAnswer.model_validate(interrupt(pending.model_dump(mode="json")))
    done = resolve(pending, answer)
    reply = state.get("reply")
    triage = last_triage(state)
    category = answer.category or (reply.category if reply else None) or (triage.category if triage else None)
    priority = (reply.priority if reply else None) or (triage.priority if triage else None)
    run = NodeRun(node=HUMAN, latency_ms=(time.perf_counter() - started) * 1000)
    return {"reply": Reply(done.answer, category, priority, route=HUMAN), "handoff": done, "runs": [run]}
