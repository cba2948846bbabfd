"""People's answers to handoffs as labelled data for ``train`` and ``calibrate``.

A resolved handoff is a ticket a person looked at: its category (the one they gave, or the
one they let stand by answering) is a label worth more than a model's. :func:`export_labels`
writes them as JSONL with ``text`` and ``category`` columns, the names
:mod:`triagegate.tuning.datasets` looks for, so the file is read as it is.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from triagegate.checkpoints import HandoffRecord
    from triagegate.pipeline import Pipeline

PAGE = 500


def label_row(record: HandoffRecord) -> dict[str, Any] | None:
    """One labelled row for a resolved handoff, or ``None`` when it has no category to learn from."""
    outcome = record.outcome
    handoff = outcome.handoff
    category = (handoff.category if handoff else None) or outcome.category
    if record.status != "resolved" or category is None or category == "unknown":
        return None
    ticket = record.ticket
    return {
        "id": ticket.id,
        "text": f"{ticket.subject}\n{ticket.text}" if ticket.subject else ticket.text,
        "category": category,
        "priority": outcome.priority,
        "answer": outcome.answer,
        "action": handoff.action if handoff else None,
        "by": handoff.by if handoff else None,
        "thread_id": record.thread_id,
    }


async def export_labels(pipeline: Pipeline, sink: TextIO) -> int:
    """Write every resolved handoff of ``pipeline``'s checkpoints to ``sink`` as JSONL; return the count."""
    written = offset = 0
    while True:
        page = await pipeline.handoffs("resolved", limit=PAGE, offset=offset)
        for record in page:
            row = label_row(record)
            if row is not None:
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
        if len(page) < PAGE:
            return written
        offset += PAGE
