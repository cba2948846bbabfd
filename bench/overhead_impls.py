"""The three cascades that ``bench_overhead.py`` runs side by side, plus their shared inputs.

Every implementation is an async callable ``run(i) -> route`` over the same ticket list
and against the same loopback server, and returns ``"mini"`` or ``"flagship"`` so the
bench can check that all three took the same route for every ticket:

* :class:`Floor`: asyncio + httpx and nothing else. It replays the exact request bodies
  triagegate sent for each ticket (captured by :func:`capture_bodies`), decodes the reply,
  reads the option-code confidence from the log-probabilities and escalates below the
  threshold. It is what the same HTTP traffic costs with no framework at all. Since issue 13
  triagegate streams the mini tier's reply (the early gate), so the floor does too: it reads
  the server-sent events, stops reading once the option-code token shows a confidence under
  the threshold, and reads to the end otherwise.
* :class:`Peer`: the same graph shape in LangGraph over ``langchain-openai``'s ``ChatOpenAI``
  with structured output, i.e. what a user would write instead of triagegate. Its bodies
  differ in detail (pydantic-generated schemas, ``max_completion_tokens``) but not in size.
* :class:`Triagegate`: ``Pipeline.run`` on the loopback graph file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import httpx

from triagegate.types import Ticket

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "tests" / "graphs" / "loopback_openai.yaml"
HARD_MARKER = "[needs-review]"
"""Must match ``bench/loopback_server.py``: tickets carrying it get low confidence and escalate."""

_TOPICS = [
    ("Charged twice", "I was charged twice for my subscription this month and only expected one payment."),
    ("Where is my parcel", "My parcel was due on Monday and the tracking page has not changed since."),
    ("Invoice address", "Could you reissue last month's invoice with our new company address on it?"),
    ("Refund status", "I returned the headphones two weeks ago and have not seen the refund yet."),
    ("Thanks", "Just wanted to say the new app update is great, checkout is much faster now."),
    ("Damaged box", "The box arrived crushed and one of the mugs inside is broken. What can I do?"),
]


def make_tickets(count: int) -> list[Ticket]:
    """``count`` deterministic tickets; odd indices carry :data:`HARD_MARKER` (half escalate)."""
    tickets = []
    for i in range(count):
        subject, text = _TOPICS[i % len(_TOPICS)]
        body = f"{text} Reference {i:05d}. Thanks in advance for looking into this."
        if i % 2:
            body += f" {HARD_MARKER}"
        tickets.append(Ticket(id=f"bench-{i:05d}", subject=subject, text=body))
    return tickets


def expected_route(i: int) -> str:
    return "flagship" if i % 2 else "mini"


def environ_for(base_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "TRIAGEGATE_MINI_BASE_URL": base_url,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": base_url,
    }


def code_confidence(tokens: Sequence[dict[str, Any]], code: str, codes: Sequence[str]) -> float:
    """Share of ``code`` among the option codes at the token that starts the ``category`` value."""
    seen = ""
    for entry in tokens:
        if seen.endswith(('"category": "', '"category":"')):
            mass = {alt["token"]: math.exp(alt["logprob"]) for alt in entry["top_logprobs"]}
            total = sum(p for c, p in mass.items() if c in codes)
            return mass.get(code, 0.0) / total if total else 0.0
        seen += entry["token"]
    return 0.0


def early_confidence(tokens: Sequence[dict[str, Any]], codes: Sequence[str]) -> float | None:
    """The chosen option code's share, once its token (the one after ``"category": "``) has arrived."""
    seen = ""
    for entry in tokens:
        if seen.endswith(('"category": "', '"category":"')):
            code = entry["token"][:1]
            mass = {alt["token"]: math.exp(alt["logprob"]) for alt in entry["top_logprobs"]}
            total = sum(p for c, p in mass.items() if c in codes)
            return mass.get(code, 0.0) / total if total else 0.0
        seen += entry["token"]
    return None


def whole_replies() -> None:
    """Make triagegate fetch every reply whole, as before issue 13 (a diagnostic for this process).

    The early gate streams a tier's reply when its model gives log-probabilities; this swaps
    the streaming call in the tier node for the one backends without streaming get
    (:func:`triagegate.models.base.chat_until`'s fallback: ``chat``, then one verdict on the
    whole reply), so the same cascade can be counted with and without streaming.
    """
    from triagegate import nodes
    from triagegate.models.base import PartialReply

    async def whole(backend: Any, request: Any, decide: Any) -> Any:
        result = await backend.chat(request)
        decide(PartialReply(result.text, result.logprobs or (), complete=True))
        return result

    nodes.chat_until = whole  # type: ignore[assignment]


class _Recorder(httpx.AsyncBaseTransport):
    """Forwards to a real transport and keeps ``(url, body bytes)`` of every request."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str, bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.content))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def capture_bodies(base_url: str, tickets: Sequence[Ticket]) -> list[list[tuple[str, dict[str, Any]]]]:
    """Run triagegate once per ticket, one at a time, and return each ticket's requests in order.

    Raises ``AssertionError`` when a body would not re-encode to the very bytes triagegate
    sent, or a ticket made an unexpected number of calls.
    """
    import triagegate

    recorder = _Recorder()
    pipeline = triagegate.load(GRAPH, environ=environ_for(base_url), extras={"httpx_transport": recorder})
    out: list[list[tuple[str, dict[str, Any]]]] = []
    async with pipeline:
        for i, ticket in enumerate(tickets):
            start = len(recorder.seen)
            outcome = await pipeline.run(ticket)
            assert outcome.route == expected_route(i), (i, outcome.route, outcome.errors)
            calls = []
            for url, raw in recorder.seen[start:]:
                body = json.loads(raw)
                again = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                assert again.encode() == raw, "captured body does not re-encode byte for byte"
                calls.append((url, body))
            assert len(calls) == (2 if expected_route(i) == "flagship" else 1), (i, len(calls))
            out.append(calls)
    return out


class Floor:
    """Hand-written cascade: replay triagegate's bodies with httpx, decide, maybe escalate."""

    def __init__(self, bodies: list[list[tuple[str, dict[str, Any]]]], codes: Sequence[str]) -> None:
        self.bodies = bodies
        self.codes = list(codes)
        self.client = httpx.AsyncClient(
            timeout=10.0, limits=httpx.Limits(max_connections=100, max_keepalive_connections=100)
        )

    async def _streamed(self, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The streamed mini reply, or ``None`` once its option code shows it escalates."""
        parts: list[str] = []
        tokens: list[dict[str, Any]] = []
        decided = False
        async with self.client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                choices = json.loads(data).get("choices") or ()
                if not choices:
                    continue
                parts.append(choices[0].get("delta", {}).get("content") or "")
                if not decided:
                    tokens += (choices[0].get("logprobs") or {}).get("content") or ()
                    confidence = early_confidence(tokens, self.codes)
                    if confidence is not None:
                        if confidence < 0.7:
                            return None
                        decided = True
        reply: dict[str, Any] = json.loads("".join(parts))
        return reply

    async def run(self, i: int) -> str:
        calls = self.bodies[i]
        url, body = calls[0]
        if body.get("stream"):
            streamed = await self._streamed(url, body)
            if streamed is not None and streamed["answer"]:
                return "mini"
        else:
            response = await self.client.post(url, json=body)
            response.raise_for_status()
            choice = response.json()["choices"][0]
            reply = json.loads(choice["message"]["content"])
            confidence = code_confidence(choice["logprobs"]["content"], reply["category"], self.codes)
            if confidence >= 0.7 and reply["answer"]:
                return "mini"
        url, body = calls[1]
        response = await self.client.post(url, json=body)
        response.raise_for_status()
        reply = json.loads(response.json()["choices"][0]["message"]["content"])
        assert reply["answer"]
        return "flagship"

    async def aclose(self) -> None:
        await self.client.aclose()


_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _split_template(path: Path) -> tuple[str, str]:
    system, _, user = path.read_text(encoding="utf-8").partition("\n<!-- user -->\n")
    return system, user


def _fill(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text).strip()


class _PeerState(TypedDict, total=False):
    ticket: Ticket
    triage: Any
    confidence: float
    escalate: bool
    answer: str
    route: str
    result: dict[str, Any]


class Peer:
    """The same graph in LangGraph over ``ChatOpenAI(...).with_structured_output(...)``."""

    def __init__(self, base_url: str, tickets: Sequence[Ticket]) -> None:
        from langchain_openai import ChatOpenAI
        from langgraph.graph import END, START, StateGraph
        from pydantic import BaseModel, create_model

        import triagegate

        spec = triagegate.load_spec(GRAPH, environ=environ_for(base_url)).spec
        names = spec.taxonomy.category_names
        codes = [chr(ord("A") + n) for n in range(len(names))]
        code_to_name = dict(zip(codes, names, strict=True))
        priorities = tuple(spec.taxonomy.priorities)
        gate = spec.tiers[0].gate
        assert gate is not None
        threshold = gate.threshold
        rules = gate.always_escalate
        prompts = GRAPH.parent / "../../prompts"
        categories = "\n".join(
            f"{c}) {cat.name}: {cat.description}"
            for c, cat in zip(codes, spec.taxonomy.categories, strict=True)
        )
        plain_categories = "\n".join(f"- {cat.name}: {cat.description}" for cat in spec.taxonomy.categories)
        no_attachments = "The ticket has no attachments."
        triage_system, triage_user = _split_template(prompts / "triage.md")
        triage_values = {
            "categories": categories,
            "priorities": ", ".join(priorities),
            "attachments": no_attachments,
        }
        triage_system = _fill(triage_system, triage_values)
        escalate_system, escalate_user = _split_template(prompts / "escalate.md")

        triage_reply: type[BaseModel] = create_model(
            "TriageReply",
            category=(Literal[tuple(codes)], ...),
            priority=(Literal[priorities], ...),
            complexity=(Literal["low", "medium", "high"], ...),
            needs_vision=(bool, ...),
            answer=(str, ...),
            confidence=(float, ...),
        )
        escalation_reply: type[BaseModel] = create_model(
            "EscalationReply",
            category=(Literal[tuple(names)], ...),
            priority=(Literal[priorities], ...),
            answer=(str, ...),
        )
        common = {
            "base_url": base_url,
            "api_key": "bench",
            "temperature": 0.0,
            "timeout": 10.0,
            "max_retries": 1,
        }
        mini = ChatOpenAI(
            model="mini-model",
            max_tokens=spec.tiers[0].max_tokens,
            logprobs=True,
            top_logprobs=20,
            **common,
        )
        flagship = ChatOpenAI(model="flagship-model", max_tokens=spec.tiers[-1].max_tokens, **common)
        triage_llm = mini.with_structured_output(
            triage_reply, method="json_schema", strict=True, include_raw=True
        )
        escalate_llm = flagship.with_structured_output(escalation_reply, method="json_schema", strict=True)

        def ticket_block(ticket: Ticket) -> str:
            return f"<ticket>\nSubject: {ticket.subject}\n{ticket.text}\n</ticket>"

        async def triage(state: _PeerState) -> dict[str, Any]:
            user = _fill(triage_user, {**triage_values, "ticket": ticket_block(state["ticket"])})
            out = await triage_llm.ainvoke([("system", triage_system), ("user", user)])
            reply = out["parsed"]
            tokens = out["raw"].response_metadata["logprobs"]["content"]
            return {"triage": reply, "confidence": code_confidence(tokens, reply.category, codes)}

        async def gate(state: _PeerState) -> dict[str, Any]:
            reply = state["triage"]
            escalate = (
                state["confidence"] < threshold
                or code_to_name[reply.category] in rules.categories
                or reply.complexity in rules.complexity
                or reply.priority in rules.priorities
            )
            return {"escalate": escalate}

        async def answer(state: _PeerState) -> dict[str, Any]:
            return {"answer": state["triage"].answer, "route": "mini"}

        async def escalate(state: _PeerState) -> dict[str, Any]:
            reply = state["triage"]
            notes = (
                f"category: {code_to_name[reply.category]} (confidence {state['confidence']:.2f}, logprobs)\n"
                f"priority: {reply.priority}\ncomplexity: {reply.complexity}\ndraft answer: {reply.answer}"
            )
            values = {
                "mini_triage": notes,
                "categories": plain_categories,
                "priorities": ", ".join(priorities),
                "attachments": no_attachments,
                "ticket": ticket_block(state["ticket"]),
            }
            system, user = _fill(escalate_system, values), _fill(escalate_user, values)
            out = await escalate_llm.ainvoke([("system", system), ("user", user)])
            return {"answer": out.answer, "route": "flagship"}

        async def finalize(state: _PeerState) -> dict[str, Any]:
            return {
                "result": {
                    "ticket_id": state["ticket"].id,
                    "route": state["route"],
                    "answer": state["answer"],
                }
            }

        graph = StateGraph(_PeerState)
        graph.add_node("triage", triage)
        graph.add_node("gate", gate)
        graph.add_node("answer", answer)
        graph.add_node("escalate", escalate)
        graph.add_node("finalize", finalize)
        graph.add_edge(START, "triage")
        graph.add_edge("triage", "gate")
        graph.add_conditional_edges("gate", lambda s: "escalate" if s["escalate"] else "answer")
        graph.add_edge("answer", "finalize")
        graph.add_edge("escalate", "finalize")
        graph.add_edge("finalize", END)
        self.graph = graph.compile()
        self.tickets = tickets
        self.clients = [mini, flagship]

    async def run(self, i: int) -> str:
        state = await self.graph.ainvoke({"ticket": self.tickets[i]})
        route: str = state["result"]["route"]
        return route

    async def aclose(self) -> None:
        for llm in self.clients:
            await llm.root_async_client.close()


class Triagegate:
    """``Pipeline.run`` on the loopback graph."""

    def __init__(self, base_url: str, tickets: Sequence[Ticket]) -> None:
        import triagegate

        self.pipeline = triagegate.load(GRAPH, environ=environ_for(base_url))
        self.tickets = tickets

    async def run(self, i: int) -> str:
        outcome = await self.pipeline.run(self.tickets[i])
        return outcome.route

    async def aclose(self) -> None:
        await self.pipeline.aclose()


class NodesOnly:
    """Diagnostic, not a way to run triagegate: its node functions driven by a plain loop.

    Same tier nodes, routing (the graph's own pure routers), reducers, Outcome assembly and
    logging as ``Pipeline.run``, minus LangGraph, so the gap to :class:`Triagegate` is what
    LangGraph costs in place (with real I/O), and the gap to :class:`Floor` is what
    triagegate's own code costs.
    """

    def __init__(self, tg: Triagegate) -> None:
        from types import SimpleNamespace

        from triagegate import graph, nodes

        pipeline = tg.pipeline
        self.pipeline = pipeline
        self.tickets = tg.tickets
        self.runtime = SimpleNamespace(context=pipeline._run_context)
        self.cascade = pipeline._cascade
        tiers = pipeline.spec.tiers
        names = [t.name for t in tiers]
        self.nodes = {t.name: nodes.tier_node(t, last=i == len(tiers) - 1) for i, t in enumerate(tiers)}
        self.enter = graph._entry_router(self.cascade, hops := graph._hops(names, -1, "enter"))
        self.enter_to = hops
        self.routers = {
            t.name: (graph._tier_router(self.cascade, i, h := graph._hops(names, i, "escalate")), h)
            for i, t in enumerate(tiers[:-1])
        }

    async def run(self, i: int) -> str:
        import time
        import uuid

        import structlog

        from triagegate.graph import build_outcome
        from triagegate.pipeline import as_ticket, check_limits, log_ticket_done
        from triagegate.screening import flags_for

        ticket = as_ticket(self.tickets[i])
        check_limits(ticket, self.pipeline.spec.limits)
        run_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(ticket_id=ticket.id, run_id=run_id):
            flags = flags_for(f"{ticket.subject or ''}\n{ticket.text}")
            state: Any = {"run_id": run_id, "ticket": ticket, "images": [], "flags": flags}
            goto = self.enter_to[self.enter(state)]
            while goto != "__end__":
                update = await self.nodes[goto](state, runtime=self.runtime)
                for key, value in update.items():
                    state[key] = (
                        state[key] + value if key in ("visits", "runs", "errors") and key in state else value
                    )
                if goto not in self.routers:
                    break
                router, hops = self.routers[goto]
                label = router(state)
                goto = "__end__" if label == "keep" else hops[label]
            outcome = build_outcome(state, self.cascade, self.runtime.context)
            outcome.latency_ms = (time.perf_counter() - started) * 1000
            log_ticket_done(outcome)
        route: str = outcome.route
        return route

    async def aclose(self) -> None:
        """The pipeline is closed by its :class:`Triagegate`."""
