"""The OpenAI-compatible front door: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Any OpenAI client reaches the pipeline by changing its base URL to ``<service>/v1`` and its
model to ``triagegate/<graph name>`` (the bare graph name works too). The last user
message is the ticket (its text parts joined, its ``image_url`` parts attachments) and the
user and assistant turns before it become :attr:`Ticket.messages`; system and developer
messages are ignored because the graph's prompts own the system message, and tool messages
are ignored. Honoured fields: ``model``, ``messages``, ``stream``,
``stream_options.include_usage``, ``n`` (only 1), ``user`` and ``metadata`` (into the
ticket's metadata, but for ``metadata.thread_id``, which names the ticket's thread). Every
other field a client sends (``temperature``, ``max_tokens``, ``tools``, ...) is accepted and
ignored: each tier's model settings come from the graph.

The answer is the Outcome's final answer; ``usage`` sums every tier, and the rest of the
Outcome is in ``x-triagegate-*`` headers and a ``triagegate`` field of the body, which
OpenAI clients ignore. A failed outcome is an error (502, or 503 when a model was
unavailable, rate-limited or timed out), never a 200 without an answer; a ticket handed to a
person is ``423 awaiting_human``, naming the thread its handoff is kept under (OpenAI's SDKs
retry 409 and 5xx, and a retried request would be a second ticket). Streaming runs the
ticket first and then sends the answer as ``chat.completion.chunk`` events: tokens are not
streamed from the tiers yet. A run still going after ``keepalive_seconds`` starts the stream
with SSE comments, so proxies keep the connection open; a failure after that point is an
``error`` event, which the official SDK raises as ``APIError``.

Auth, rate limits, body caps, request ids and HTTP metrics are the middleware's, as for
``/v1/tickets``; tickets are run by the app's own ``run`` (the same metrics and refusals),
and built by :func:`triagegate.serve.intake.checked_ticket` (the same checks as a JSON ticket).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from triagegate.pipeline import Pipeline
from triagegate.serve.errors import ApiError, error_json, error_responses
from triagegate.serve.intake import checked_ticket, is_json, media_type
from triagegate.types import TEXT_PATTERN, GateDecision, Outcome, ThreadId, Ticket, is_blank

JSON = "application/json"
SSE = "text/event-stream"
MODEL_PREFIX = "triagegate/"
KEEPALIVE_SECONDS = 10.0
UNAVAILABLE = frozenset({"ModelUnavailable", "RateLimited", "ModelTimeout"})
"""Failures (``NodeRun.error_type``) that mean a model could not be had: 503 with ``Retry-After``."""
_PIECES = re.compile(r"\s*\S+\s*|\s+")
_TAGS = frozenset({"system", "developer", "user", "assistant", "tool", "text", "image_url"})
THREAD_KEY = "thread_id"
"""The ``metadata`` key that names the ticket's thread rather than going into its metadata."""
_THREAD_ID: TypeAdapter[str] = TypeAdapter(ThreadId)


class _Open(BaseModel):
    """OpenAI request objects gain fields often; ours accept unknown ones and ignore them."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str = Field(pattern=r"^(https?://|data:)", description="An http(s) URL or a data: URL of the image.")
    detail: Literal["auto", "low", "high"] | None = Field(default=None, description="Ignored.")


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


UserPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
NonBlank = Annotated[str, Field(pattern=TEXT_PATTERN)]
NON_BLANK_TEXT_PART: dict[str, Any] = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string", "pattern": TEXT_PATTERN}},
}


def _text_of(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content if isinstance(p, TextPart))


class SystemMessage(_Open):
    """Ignored: the graph's prompts own the system message."""

    role: Literal["system", "developer"]
    content: str | list[TextPart]


class UserMessage(_Open):
    """A customer turn; the last one is the ticket. It must carry some text."""

    role: Literal["user"]
    content: (
        NonBlank
        | Annotated[list[UserPart], Field(min_length=1, json_schema_extra={"contains": NON_BLANK_TEXT_PART})]
    )
    name: str | None = None

    @model_validator(mode="after")
    def _has_text(self) -> UserMessage:
        if is_blank(_text_of(self.content)):
            raise ValueError(
                "a user message needs some text (a ticket is text, images are attachments to it)"
            )
        return self

    @property
    def images(self) -> list[str]:
        if isinstance(self.content, str):
            return []
        return [p.image_url.url for p in self.content if isinstance(p, ImagePart)]


class AssistantMessage(_Open):
    """An agent turn of the history (``content`` null, as with tool calls, is skipped)."""

    role: Literal["assistant"]
    content: str | list[TextPart] | None = None


class ToolMessage(_Open):
    """Ignored: the pipeline calls no tools."""

    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Open):
    """OpenAI's chat-completions request; see the module docstring for the fields honoured."""

    model: str = Field(
        description="triagegate/<graph name> (or the bare graph name), as GET /v1/models lists."
    )
    messages: list[Message] = Field(
        min_length=1,
        description="The conversation; the last user message is the ticket.",
        json_schema_extra={
            "contains": {"type": "object", "required": ["role"], "properties": {"role": {"const": "user"}}}
        },
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = Field(
        default=None, description="Only one choice is produced."
    )
    user: str | None = None
    metadata: dict[str, str] | None = Field(
        default=None,
        description="Into the ticket's metadata; thread_id names the conversation's thread instead "
        "(letters, digits and ._:@/-, at most 200), so its turns and handoffs are kept together.",
    )

    @model_validator(mode="after")
    def _has_a_user_message(self) -> ChatCompletionRequest:
        if not any(isinstance(m, UserMessage) for m in self.messages):
            raise ValueError("the conversation has no user message; the last user message is the ticket")
        return self


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChoiceMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TriagegateExtras(BaseModel):
    """The Outcome's routing and cost, for clients that look (OpenAI clients ignore the field)."""

    ticket_id: str
    run_id: str
    graph_hash: str | None
    route: str = Field(description="The tier that answered (Outcome.route).")
    path: list[str] = Field(description="The tiers that ran, in order.")
    decisions: list[GateDecision]
    escalated: bool
    escalation_reasons: list[str]
    category: str | None
    priority: str | None
    confidence: float | None
    confidence_method: str | None
    sources: list[str] = Field(
        description="Knowledge-base articles the answer was grounded in (Outcome.sources)."
    )
    cost_usd: float
    latency_ms: float
    thread_id: str | None = Field(
        default=None, description="The thread the run is kept under, when it is kept (Outcome.thread_id)."
    )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    triagegate: TriagegateExtras


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "triagegate"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chat.completion.chunk object as JSON, an error object as JSON, or [DONE].",
        },
        "event": {"type": "string"},
    },
    "description": "One server-sent event; comment lines (keep-alives) are not events.",
}
"""What the OpenAPI document says each event of a streamed completion is."""

SCHEMA_MODELS: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
    (ChatCompletionRequest, "validation")
]
"""Request models the app adds to its OpenAPI components (bodies are parsed by hand)."""


def describe_openapi(schemas: dict[str, Any], *, models: list[str], max_images: int) -> None:
    """Make the document say what the route accepts: the served model names, and at most
    ``max_images`` images in a user message (``maxContains``), as :func:`ticket_from_chat` checks."""
    schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] = models
    content = schemas["UserMessage"]["properties"]["content"]
    for branch in content.get("anyOf", []):
        if branch.get("type") == "array":
            branch["allOf"] = [
                {
                    "contains": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"const": "image_url"}},
                    },
                    "minContains": 0,
                    "maxContains": max_images,
                }
            ]


def _param(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as OpenAI names a parameter: ``messages[2].content``."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS and isinstance(previous, int):
            pass  # the discriminator tag pydantic puts after a list index
        elif part != "str" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        previous = part
    return out


def parse_request(body: bytes) -> ChatCompletionRequest:
    """The request, or a 400 naming the field at fault (``param``) and what is wrong. Of pydantic's
    errors (one per branch of a union) the deepest is reported: it is the one the client meant.

    Parsed strictly, as OpenAI's API does: ``"n": true`` or ``"stream": "yes"`` is a 400, not
    read as 1 or as true."""
    try:
        return ChatCompletionRequest.model_validate_json(body, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        if errors[0]["type"] == "json_invalid":
            raise ApiError("malformed_request", "request body is not valid JSON") from None
        first = max(errors, key=lambda e: len(e["loc"]))
        param = _param(tuple(first["loc"])) or None
        where = f"{param}: " if param else ""
        raise ApiError("invalid_request", f"{where}{first['msg']}", param=param) from None


def ticket_from_chat(chat: ChatCompletionRequest, *, max_images: int, max_image_bytes: int) -> Ticket:
    """The ticket a conversation asks about: the last user message, with the turns before it."""
    last = max(i for i, m in enumerate(chat.messages) if isinstance(m, UserMessage))
    user = chat.messages[last]
    assert isinstance(user, UserMessage)
    for index, message in enumerate(chat.messages):
        if isinstance(message, UserMessage) and len(message.images) > max_images:
            raise ApiError(
                "invalid_ticket",
                f"messages[{index}].content: {len(message.images)} images, over the limit of {max_images}",
                param=f"messages[{index}].content",
            )
    history: list[dict[str, str]] = []
    for message in chat.messages[:last]:
        if isinstance(message, UserMessage):
            history.append({"role": "customer", "content": _text_of(message.content)})
        elif isinstance(message, AssistantMessage) and message.content is not None:
            history.append({"role": "agent", "content": _text_of(message.content)})
    metadata: dict[str, Any] = dict(chat.metadata or {})
    thread_id = metadata.pop(THREAD_KEY, None)
    if thread_id is not None:
        try:
            _THREAD_ID.validate_python(thread_id)
        except ValidationError as exc:
            param = f"metadata.{THREAD_KEY}"
            raise ApiError("invalid_request", f"{param}: {exc.errors()[0]['msg']}", param=param) from None
    if chat.user is not None:
        metadata["user"] = chat.user
    fields = {
        "text": _text_of(user.content),
        "attachments": [{"url": url} for url in user.images],
        "messages": history,
        "metadata": metadata,
        "thread_id": thread_id,
    }
    return checked_ticket(fields, max_image_bytes, where=f"messages[{last}].")


def outcome_error(outcome: Outcome) -> ApiError:
    """The error for an Outcome without an answer: 423 when a person is to answer it, 503 when a
    model could not be had, else 502."""
    if outcome.status == "awaiting_human":
        thread = outcome.thread_id or outcome.ticket_id
        why = ", ".join(outcome.handoff.reasons) if outcome.handoff and outcome.handoff.reasons else "policy"
        return ApiError(
            "awaiting_human",
            f"ticket {outcome.ticket_id} was handed to a person ({why}); their answer will be the "
            f"handoff's on thread {thread!r} (GET /v1/handoffs/{thread}); once it is resumed, send the "
            f"next turn with metadata.thread_id {thread!r}",
            headers=outcome_headers(outcome),
        )
    reasons = "; ".join(outcome.errors) or "no tier produced an answer"
    if any(run.error_type in UNAVAILABLE for run in outcome.nodes):
        return ApiError(
            "model_unavailable",
            f"the models behind this graph are unavailable, retry later: {reasons}",
            headers={"Retry-After": "1"},
        )
    return ApiError("model_failed", f"the graph produced no answer: {reasons}")


OUTCOME_HEADERS = (
    "x-triagegate-route",
    "x-triagegate-tier",
    "x-triagegate-escalated",
    "x-triagegate-escalation-reasons",
    "x-triagegate-cost-usd",
    "x-triagegate-ticket-id",
    "x-triagegate-graph-hash",
    "x-triagegate-confidence",
    "x-triagegate-category",
    "x-triagegate-thread-id",
)
"""Every header :func:`outcome_headers` may set (CORS exposes them to browser clients)."""


def _header(value: str) -> str:
    return value.encode("latin-1", "backslashreplace").decode("latin-1").replace("\r", " ").replace("\n", " ")


def outcome_headers(outcome: Outcome) -> dict[str, str]:
    """The ``x-triagegate-*`` headers: route (the path taken), tier (the one that answered) and the rest."""
    headers = {
        "x-triagegate-route": ",".join(outcome.path),
        "x-triagegate-tier": outcome.route,
        "x-triagegate-escalated": "true" if outcome.escalated else "false",
        "x-triagegate-escalation-reasons": ",".join(outcome.escalation_reasons),
        "x-triagegate-cost-usd": f"{outcome.cost_usd:.8f}",
        "x-triagegate-ticket-id": outcome.ticket_id,
        "x-triagegate-graph-hash": outcome.graph_hash or "",
    }
    if outcome.confidence is not None:
        headers["x-triagegate-confidence"] = f"{outcome.confidence:.4f}"
    if outcome.category is not None:
        headers["x-triagegate-category"] = outcome.category
    if outcome.thread_id is not None:
        headers["x-triagegate-thread-id"] = outcome.thread_id
    return {k: _header(v) for k, v in headers.items()}


def extras(outcome: Outcome) -> TriagegateExtras:
    return TriagegateExtras(
        ticket_id=outcome.ticket_id,
        run_id=outcome.run_id,
        graph_hash=outcome.graph_hash,
        route=outcome.route,
        path=outcome.path,
        decisions=outcome.decisions,
        escalated=outcome.escalated,
        escalation_reasons=outcome.escalation_reasons,
        category=outcome.category,
        priority=outcome.priority,
        confidence=outcome.confidence,
        confidence_method=outcome.confidence_method,
        sources=outcome.sources,
        cost_usd=outcome.cost_usd,
        latency_ms=outcome.latency_ms,
        thread_id=outcome.thread_id,
    )


def usage_of(outcome: Outcome) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=outcome.input_tokens,
        completion_tokens=outcome.output_tokens,
        total_tokens=outcome.input_tokens + outcome.output_tokens,
    )


def completion(outcome: Outcome, model: str, created: int) -> ChatCompletion:
    assert outcome.answer is not None
    return ChatCompletion(
        id=f"chatcmpl-{outcome.run_id}",
        created=created,
        model=model,
        choices=[Choice(message=ChoiceMessage(content=outcome.answer))],
        usage=usage_of(outcome),
        system_fingerprint=outcome.graph_hash,
        triagegate=extras(outcome),
    )


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunks(outcome: Outcome, model: str, created: int, include_usage: bool) -> list[bytes]:
    """The answer as OpenAI's ``chat.completion.chunk`` events, ending with ``data: [DONE]``."""
    assert outcome.answer is not None
    base = {
        "id": f"chatcmpl-{outcome.run_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": outcome.graph_hash,
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**base, "choices": [choice], **more})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in _PIECES.findall(outcome.answer)]
    events.append(chunk({}, "stop", triagegate=extras(outcome).model_dump(mode="json")))
    if include_usage:
        events.append(_event({**base, "choices": [], "usage": usage_of(outcome).model_dump()}))
    events.append(b"data: [DONE]\n\n")
    return events


def _error_event(exc: ApiError) -> bytes:
    return b"data: " + error_json(exc.code, exc.message, exc.param) + b"\n\n"


def openai_router(
    pipeline: Pipeline,
    *,
    run: Callable[[Ticket], Awaitable[Outcome]],
    max_images: int,
    max_image_bytes: int,
    keepalive_seconds: float | None = None,
) -> APIRouter:
    """The routes, serving ``pipeline`` under ``triagegate/<name>``; ``run`` is the app's ticket runner
    (it raises :class:`ApiError` for a ticket the pipeline refuses and records the Outcome's metrics).
    ``keepalive_seconds`` defaults to :data:`KEEPALIVE_SECONDS` as it is when the router is built."""
    keepalive = KEEPALIVE_SECONDS if keepalive_seconds is None else keepalive_seconds
    router = APIRouter()
    served = f"{MODEL_PREFIX}{pipeline.name}"
    names = (served, pipeline.name)
    started = int(time.time())

    def card() -> ModelCard:
        return ModelCard(id=served, created=started)

    @router.post(
        "/v1/chat/completions",
        summary="OpenAI-compatible chat completion (runs the last user message as a ticket)",
        response_model=ChatCompletion,
        responses={
            200: {
                "description": "The final answer; with stream: true, chat.completion.chunk events.",
                "content": {SSE: {"schema": SSE_EVENT}},
            },
            **error_responses(
                "invalid_request",
                "unauthorized",
                "model_not_found",
                "body_too_large",
                "image_too_large",
                "unsupported_media_type",
                "invalid_ticket",
                "rate_limited",
                "model_failed",
                "model_unavailable",
                "awaiting_human",
            ),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
            }
        },
    )
    async def chat_completions(request: Request) -> Response:
        """Run the conversation's last user message through the graph; answer as OpenAI would."""
        if not is_json(media_type(request)):
            raise ApiError("unsupported_media_type", "send the request as application/json")
        chat = parse_request(await request.body())
        if chat.model not in names:
            raise ApiError(
                "model_not_found",
                f"the model {chat.model!r} does not exist here; this service serves {served!r} (GET /v1/models)",
                param="model",
            )
        ticket = ticket_from_chat(chat, max_images=max_images, max_image_bytes=max_image_bytes)
        created = int(time.time())
        if not chat.stream:
            outcome = await run(ticket)
            if outcome.answer is None or outcome.status != "ok":
                raise outcome_error(outcome)
            body = completion(outcome, chat.model, created).model_dump_json()
            return Response(body, media_type=JSON, headers=outcome_headers(outcome))
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        task = asyncio.ensure_future(run(ticket))
        done, _ = await asyncio.wait({task}, timeout=keepalive)
        stream_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if done:
            outcome = task.result()
            if outcome.answer is None or outcome.status != "ok":
                raise outcome_error(outcome)
            events = chunks(outcome, chat.model, created, include_usage)
            return StreamingResponse(
                _replay(events), media_type=SSE, headers={**stream_headers, **outcome_headers(outcome)}
            )
        return StreamingResponse(
            _late(task, chat.model, created, include_usage, keepalive),
            media_type=SSE,
            headers=stream_headers,
        )

    @router.get(
        "/v1/models",
        summary="OpenAI-compatible model list (the served graph)",
        response_model=ModelList,
        responses=error_responses("unauthorized", "rate_limited"),
    )
    async def list_models() -> ModelList:
        """The graph this service runs, as the model name to send: ``triagegate/<graph name>``."""
        return ModelList(data=[card()])

    @router.get(
        "/v1/models/{model:path}",
        summary="OpenAI-compatible model lookup",
        response_model=ModelCard,
        responses=error_responses("unauthorized", "model_not_found", "rate_limited"),
    )
    async def get_model(model: str) -> ModelCard:
        """The served graph by its model name (``triagegate/<graph name>`` or the bare name)."""
        if model not in names:
            raise ApiError("model_not_found", f"the model {model!r} does not exist here", param="model")
        return card()

    return router


async def _replay(events: list[bytes]) -> AsyncIterator[bytes]:
    for event in events:
        yield event


async def _late(
    task: asyncio.Future[Outcome], model: str, created: int, include_usage: bool, every: float
) -> AsyncIterator[bytes]:
    """Keep-alive comments until the run ends, then its chunks (or one error event)."""
    try:
        while True:
            yield b": keep-alive\n\n"
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                break
        try:
            outcome = task.result()
        except ApiError as exc:
            yield _error_event(exc)
            return
        if outcome.answer is None or outcome.status != "ok":
            yield _error_event(outcome_error(outcome))
            return
        for event in chunks(outcome, model, created, include_usage):
            yield event
    finally:
        if not task.done():
            task.cancel()
