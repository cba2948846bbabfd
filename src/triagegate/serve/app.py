"""The FastAPI app: ``create_app(pipeline, settings)`` builds one service around one loaded pipeline.

Routes: ``POST /v1/tickets`` (one ticket, JSON or multipart, returns its Outcome),
``POST /v1/tickets:batch`` (up to ``max_batch`` tickets, outcomes in order, bad ones as
``failed`` outcomes), ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` and
``GET /openapi.json``. A model failure is not an HTTP error: the ticket still has an
Outcome (``status: failed``), so the response is 200 and the client reads ``status``.
Request bodies are parsed here rather than by FastAPI's parameter binding so that one
route can take JSON or multipart and every validation error has our JSON error shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

import triagegate
from triagegate.errors import InputError
from triagegate.log import get_logger
from triagegate.pipeline import Pipeline, failed_outcome, ticket_id_of
from triagegate.serve import openai_api, readiness
from triagegate.serve.auth import KeyRing
from triagegate.serve.errors import ApiError, error_json, error_responses
from triagegate.serve.intake import (
    BatchRequest,
    is_json,
    json_body,
    media_type,
    read_ticket,
    ticket_from_value,
)
from triagegate.serve.limits import RateLimiter, check_ticket_for_http
from triagegate.serve.metrics import ServiceMetrics
from triagegate.serve.middleware import Gate
from triagegate.serve.outcomes import StoreLink
from triagegate.serve.settings import ServeSettings
from triagegate.types import TEXT_PATTERN, HumanAnswer, Outcome, Ticket

log = get_logger("triagegate.serve")
ROUTES = frozenset({"/v1/tickets", "/v1/tickets:batch", "/healthz", "/readyz", "/metrics", "/openapi.json"})
ROUTES |= {"/v1/chat/completions", "/v1/models", "/v1/handoffs"}
JSON = "application/json"


class BatchResponse(BaseModel):
    outcomes: list[Outcome]


class Health(BaseModel):
    status: str


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1, "pattern": TEXT_PATTERN},
        "subject": {"type": "string"},
        "id": {"type": "string", "minLength": 1, "maxLength": 200},
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
    },
}


def _error_response(exc: ApiError) -> Response:
    return Response(
        error_json(exc.code, exc.message, exc.param),
        status_code=exc.status,
        headers=exc.headers,
        media_type=JSON,
    )


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(exc)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status_code)
        if code is None:
            code = "malformed_request" if 400 <= exc.status_code < 500 else "internal_error"
        return _error_response(ApiError(code, str(exc.detail), headers=exc.headers))

    async def validation_error(_request: Request, exc: Exception) -> Response:
        return _error_response(ApiError("invalid_ticket", str(exc)))

    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.error("request_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return _error_response(
            ApiError("internal_error", "internal error; the request id in X-Request-ID finds it in the logs")
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _describe_http_limits(schemas: dict[str, Any], settings: ServeSettings, max_images: int) -> None:
    """Make the document say what this server accepts, so generated clients and fuzzers agree with it.

    Over HTTP an attachment is a URL (server paths are refused), a ticket carries at most
    the graph's ``max_images``, and a batch at most ``max_batch`` items. A batch item that
    is an object but not a valid ticket is answered with a ``failed`` outcome rather than
    failing the batch, so the items are documented as any object, a Ticket being the one
    that runs.
    """
    attachment = schemas["Attachment"]
    attachment["properties"]["url"] = {
        "type": "string",
        "pattern": "^(https?://|data:)",
        "description": "An http(s) URL or a data: URL of the image.",
    }
    attachment["properties"]["path"] = {
        "type": "null",
        "description": "Server file paths are not accepted over HTTP.",
    }
    attachment["required"] = ["url"]
    schemas["Ticket"]["properties"]["attachments"]["maxItems"] = max_images
    schemas["TicketUpload"]["properties"]["images"]["maxItems"] = max_images
    tickets = schemas["BatchRequest"]["properties"]["tickets"]
    tickets["maxItems"] = settings.max_batch
    tickets["items"] = {
        "anyOf": [
            {"$ref": "#/components/schemas/Ticket"},
            {"type": "object", "description": "Any other object is answered with a failed outcome."},
        ]
    }


def _openapi(app: FastAPI, settings: ServeSettings, max_images: int) -> dict[str, Any]:
    """FastAPI's document plus the request schemas our hand-parsed bodies accept, and bearer auth."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _, extra = models_json_schema(
        [
            (Ticket, "validation"),
            (BatchRequest, "validation"),
            (HumanAnswer, "validation"),
            *openai_api.SCHEMA_MODELS,
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(extra.get("$defs", {}))
    schemas["TicketUpload"] = UPLOAD_SCHEMA
    schemas["TicketForm"] = {
        **UPLOAD_SCHEMA,
        "properties": {k: v for k, v in UPLOAD_SCHEMA["properties"].items() if k != "images"},
    }
    _describe_http_limits(schemas, settings, max_images)
    from triagegate.serve.handoffs import describe_openapi

    describe_openapi(schemas)
    name = app.state.pipeline.name
    openai_api.describe_openapi(
        schemas, models=[f"{openai_api.MODEL_PREFIX}{name}", name], max_images=max_images
    )
    if settings.api_keys or settings.metrics_token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, item in doc["paths"].items():
            if (path.startswith("/v1/") and settings.api_keys) or path == "/metrics":
                for operation in item.values():
                    operation["security"] = [{"bearer": []}]
    app.openapi_schema = doc
    return doc


class ServiceApp(FastAPI):
    """FastAPI whose outermost layers are ours (CORS, then :class:`Gate`), outside Starlette's
    error middleware, so even the 500 for a crash carries the request id and CORS headers."""

    wrap: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return self.wrap(stack) if self.wrap is not None else stack


def create_app(pipeline: Pipeline, settings: ServeSettings | None = None) -> FastAPI:
    """An ASGI app serving ``pipeline``. With ``settings.close_pipeline`` the app closes it on shutdown."""
    settings = settings or ServeSettings()
    limits = pipeline.spec.limits
    max_image_bytes = settings.max_image_bytes or limits.max_image_bytes
    metrics = ServiceMetrics(pipeline.spec.taxonomy.category_names)

    outcomes = StoreLink(pipeline, settings, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await outcomes.open()
        try:
            yield
        finally:
            await pipeline.drain_shadows()
            await outcomes.close()
            if settings.close_pipeline:
                await pipeline.aclose()

    app = ServiceApp(
        title="triagegate",
        version=triagegate.__version__,
        description=(
            f"Support-ticket triage for graph '{pipeline.name}' ({pipeline.graph_hash}). "
            'Errors are {"error": {"code", "message", "type", "param"}} with a stable code '
            "(OpenAI's error shape). /v1/chat/completions and /v1/models are OpenAI-compatible."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.pipeline = pipeline
    app.state.metrics = metrics
    _install_error_handlers(app)

    async def run_one(ticket: Ticket) -> Outcome:
        try:
            outcome = await pipeline.run(ticket)
        except InputError as exc:
            raise ApiError("invalid_ticket", str(exc)) from None
        metrics.observe_outcome(outcome)
        await outcomes.write(outcome)
        return outcome

    @app.post(
        "/v1/tickets",
        summary="Run one ticket",
        response_model=Outcome,
        responses=error_responses(
            "malformed_request",
            "unauthorized",
            "body_too_large",
            "image_too_large",
            "unsupported_media_type",
            "invalid_ticket",
            "rate_limited",
        ),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": _ref("Ticket")},
                    "multipart/form-data": {"schema": _ref("TicketUpload")},
                    "application/x-www-form-urlencoded": {"schema": _ref("TicketForm")},
                },
            }
        },
    )
    async def post_ticket(request: Request) -> Response:
        """Run one ticket through the graph and return its Outcome.

        JSON bodies are a Ticket (images as data: or http(s) URLs; server paths are refused).
        Multipart bodies have fields text, subject, id and image files under ``images``.
        """
        ticket = await read_ticket(
            request, max_image_bytes=max_image_bytes, max_images=limits.max_images, allowed=limits.image_types
        )
        outcome = await run_one(ticket)
        return Response(outcome.model_dump_json(), media_type=JSON)

    @app.post(
        "/v1/tickets:batch",
        summary="Run several tickets",
        response_model=BatchResponse,
        responses=error_responses(
            "malformed_request",
            "unauthorized",
            "body_too_large",
            "batch_too_large",
            "unsupported_media_type",
            "invalid_ticket",
            "rate_limited",
        ),
        openapi_extra={
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("BatchRequest")}}}
        },
    )
    async def post_batch(request: Request) -> Response:
        """Run up to the configured maximum of tickets; outcomes come back in request order.

        A ticket that cannot be run (invalid, image too large) gets a ``failed`` Outcome
        naming the problem instead of failing the whole batch; an item that is not a JSON
        object, or more items than the limit, fails the batch with 422.
        """
        if not is_json(media_type(request)):
            raise ApiError("unsupported_media_type", "send the batch as application/json")
        body = json_body(await request.body())
        items = body.get("tickets") if isinstance(body, dict) else None
        if not isinstance(items, list) or (isinstance(body, dict) and set(body) - {"tickets"}):
            raise ApiError("invalid_ticket", 'a batch is a JSON object {"tickets": [...]}')
        if len(items) > settings.max_batch:
            raise ApiError(
                "batch_too_large", f"{len(items)} tickets, over the limit of {settings.max_batch} per batch"
            )
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise ApiError("invalid_ticket", f"tickets[{index}]: a ticket is a JSON object")
        slots = asyncio.Semaphore(settings.batch_concurrency)

        async def one(index: int, item: dict[str, Any]) -> Outcome:
            ticket_id = ticket_id_of(item)
            async with slots:
                try:
                    ticket = ticket_from_value(item, index)
                    check_ticket_for_http(ticket, max_image_bytes)
                    return await run_one(ticket)
                except ApiError as exc:
                    outcome = failed_outcome(ticket_id, exc.message, pipeline)
                    metrics.observe_outcome(outcome)
                    return outcome

        outcomes = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        payload = b'{"outcomes":[' + b",".join(o.model_dump_json().encode() for o in outcomes) + b"]}"
        return Response(payload, media_type=JSON)

    @app.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        """The process is up and serving HTTP."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=readiness.ReadyReport,
        summary="Readiness",
        responses={503: {"model": readiness.ReadyReport, "description": "A model endpoint is not reachable"}},
    )
    async def readyz() -> Response:
        """Ready when the graph is loaded and every remote model endpoint answers ``GET /models``."""
        report = await readiness.check(pipeline, settings.ready_timeout)
        return Response(
            report.model_dump_json(), status_code=200 if report.status == "ready" else 503, media_type=JSON
        )

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics"},
            **error_responses("unauthorized"),
        },
    )
    async def get_metrics() -> Response:
        """Requests, routes, escalation reasons, node latencies, tokens, cost and provider errors.

        Needs the metrics token when the service has one, else an API key when it has keys.
        With an outcome store, also the figures of ``triagegate report`` over the report window.
        """
        await outcomes.refresh_figures()
        return Response(metrics.render(), media_type=metrics.content_type)

    app.include_router(
        openai_api.openai_router(
            pipeline, run=run_one, max_images=limits.max_images, max_image_bytes=max_image_bytes
        )
    )
    from triagegate.serve.handoffs import handoffs_router

    app.include_router(handoffs_router(pipeline, observe=metrics.observe_outcome))
    app.openapi = lambda: _openapi(app, settings, limits.max_images)  # type: ignore[method-assign]
    keys = KeyRing(settings.api_keys)
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    cors = settings.cors_origins

    def wrap(inner: ASGIApp) -> ASGIApp:
        outer: ASGIApp = Gate(
            inner,
            keys=keys,
            limiter=limiter,
            max_body_bytes=settings.max_body_bytes,
            metrics=metrics,
            routes=ROUTES,
            metrics_token=settings.metrics_token,
        )
        if cors:
            outer = CORSMiddleware(
                outer,
                allow_origins=list(cors),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After", *openai_api.OUTCOME_HEADERS],
            )
        return outer

    app.wrap = wrap
    return app
