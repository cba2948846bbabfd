"""``/v1/handoffs``: the tickets waiting for a person, and answering them, behind the service's API keys.

``GET /v1/handoffs`` lists them (``?status=pending|resolving|resolved|all``, ``limit``,
``offset``), ``GET /v1/handoffs/{thread_id}`` shows one, and ``POST /v1/handoffs/{thread_id}``
resumes it with a :class:`~triagegate.types.HumanAnswer` (``approve``, ``edit`` or ``answer``)
and returns the final Outcome. A second resume is ``409 handoff_resolved`` and changes
nothing; an unknown thread is ``404 handoff_not_found``. Everything goes through
:meth:`triagegate.pipeline.Pipeline.resume`, so the claim that makes one resume win is the
one every interface uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ValidationError

from triagegate.checkpoints import HandoffRecord
from triagegate.errors import HandoffNotFound, HandoffResolved, InputError
from triagegate.pipeline import Pipeline
from triagegate.serve.errors import ApiError, error_responses
from triagegate.serve.intake import json_body
from triagegate.types import TEXT_PATTERN, HumanAnswer, Outcome

JSON = "application/json"
PATH = "/v1/handoffs"


class HandoffList(BaseModel):
    handoffs: list[HandoffRecord]


def handoffs_router(pipeline: Pipeline, *, observe: Callable[[Outcome], None]) -> APIRouter:
    """The ``/v1/handoffs`` routes for ``pipeline``; ``observe`` counts each resumed Outcome in the metrics."""
    router = APIRouter()

    @router.get(
        PATH,
        summary="List handoffs",
        response_model=HandoffList,
        responses=error_responses("unauthorized", "invalid_ticket", "rate_limited"),
    )
    async def list_handoffs(
        status: Literal["pending", "resolving", "resolved", "all"] = "pending",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> Response:
        """The handoffs kept for this graph, oldest first (``pending`` by default)."""
        records = await pipeline.handoffs(None if status == "all" else status, limit=limit, offset=offset)
        return Response(HandoffList(handoffs=records).model_dump_json(), media_type=JSON)

    @router.get(
        PATH + "/{thread_id}",
        summary="Show a handoff",
        response_model=HandoffRecord,
        responses=error_responses("unauthorized", "handoff_not_found", "rate_limited"),
    )
    async def get_handoff(thread_id: str) -> Response:
        """One handoff: its status, the ticket, and its Outcome (with the draft while pending)."""
        try:
            record = await pipeline.handoff(thread_id)
        except HandoffNotFound as exc:
            raise ApiError("handoff_not_found", str(exc)) from None
        return Response(record.model_dump_json(), media_type=JSON)

    @router.post(
        PATH + "/{thread_id}",
        summary="Resume a handoff",
        response_model=Outcome,
        responses=error_responses(
            "malformed_request",
            "unauthorized",
            "handoff_not_found",
            "handoff_resolved",
            "invalid_answer",
            "rate_limited",
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/HumanAnswer"}}},
            }
        },
    )
    async def resume_handoff(thread_id: str, request: Request) -> Response:
        """Answer the handoff (``approve`` the draft, ``edit`` it or ``answer``) and return the final Outcome."""
        body: Any = json_body(await request.body())
        try:
            answer = HumanAnswer.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise ApiError(
                "invalid_answer", f"{where}: {first['msg'].removeprefix('Value error, ')}", param=where
            ) from None
        try:
            outcome = await pipeline.resume(thread_id, answer)
        except HandoffNotFound as exc:
            raise ApiError("handoff_not_found", str(exc)) from None
        except HandoffResolved as exc:
            raise ApiError("handoff_resolved", str(exc)) from None
        except InputError as exc:
            raise ApiError("invalid_answer", str(exc)) from None
        observe(_resumed_part(outcome))
        return Response(outcome.model_dump_json(), media_type=JSON)

    return router


def describe_openapi(schemas: dict[str, Any]) -> None:
    """Say in the document what :class:`HumanAnswer` checks: ``approve`` takes no text, the others need it."""
    fields = schemas["HumanAnswer"]["properties"]
    common = {"by": fields["by"], "category": fields["category"]}
    text = {"type": "string", "minLength": 1, "maxLength": 20_000, "pattern": TEXT_PATTERN}
    schemas["HumanAnswer"] = {
        "title": "HumanAnswer",
        "description": "Approve the draft as it is, or edit it or answer anew with the text.",
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["action"],
                "properties": {"action": {"type": "string", "enum": ["approve"]}, **common},
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["action", "text"],
                "properties": {
                    "action": {"type": "string", "enum": ["edit", "answer"]},
                    "text": text,
                    **common,
                },
            },
        ],
    }


def _resumed_part(outcome: Outcome) -> Outcome:
    """The Outcome as the metrics should count it: the ticket once more, and only the human step's node
    (the tiers before the pause were counted when it paused)."""
    return outcome.model_copy(
        update={
            "nodes": [n for n in outcome.nodes if n.model_alias is None and n.node == outcome.route],
            "decisions": [],
            "escalation_reasons": [],
            "confidence_fallback": None,
        }
    )
