"""The human step and threads, on a real SQLite checkpointer and the loopback OpenAI-compatible server.

Counts of requests at the server show that what ran before a pause is not run again on
resume (LangGraph re-runs the interrupted node from its start, and that node calls no model).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import triagegate
from tests.support.openai_server import OpenAIServer
from triagegate.errors import ConfigError, HandoffNotFound, HandoffResolved, InputError
from triagegate.pipeline import Pipeline
from triagegate.spec import parse_spec
from triagegate.types import Ticket, Turn

GRAPHS = Path(__file__).resolve().parent / "graphs"
HANDOFF = GRAPHS / "handoff_openai.yaml"
LOOPBACK = GRAPHS / "loopback_openai.yaml"
CODES = {"billing": "A", "shipping": "B", "security": "C", "legal": "D"}


def environ(server: OpenAIServer) -> dict[str, str]:
    return {"TRIAGEGATE_MINI_BASE_URL": server.base_url, "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url}


def by_keyword(field: str, values: list[Any], body: dict[str, Any]) -> Any:
    """Pick the legal option for a ticket that mentions a lawyer, billing otherwise."""
    text = json.dumps(body["messages"][-1])
    if field == "category" and "D" in values:
        return CODES["legal"] if "lawyer" in text else CODES["billing"]
    if field == "category":
        return "legal" if "lawyer" in text else "billing"
    return values[0]


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(choose=by_keyword) as live:
        yield live


@pytest.fixture
def open_pipeline(tmp_path: Path, server: OpenAIServer) -> Callable[..., Pipeline]:
    """``open_pipeline(graph=HANDOFF)``: a pipeline on the live server, its checkpoints in ``tmp_path``."""

    def make(graph: Path = HANDOFF, **kw: Any) -> Pipeline:
        kw.setdefault("checkpoints", tmp_path / "checkpoints.sqlite")
        return triagegate.load(graph, environ=environ(server), cache_dir=tmp_path / "cache", **kw)

    return make


async def test_a_legal_ticket_pauses_with_the_draft_and_an_edit_resumes_it_without_calling_a_model_again(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    async with open_pipeline() as pipeline:
        paused = await pipeline.run(Ticket(id="T-1", text="My lawyer will contact you about the contract."))
        assert paused.status == "awaiting_human"
        assert paused.thread_id == "T-1"
        assert paused.answer is None
        assert paused.handoff is not None
        assert paused.handoff.reasons == ["handoff:category:legal"]
        assert paused.handoff.draft == "auto answer" and paused.handoff.draft_route == "mini"
        assert "handoff:category:legal" in paused.escalation_reasons
        assert paused.path == ["mini"]
        before = server.count
        assert before == 1

        [pending] = await pipeline.handoffs()
        assert pending.thread_id == "T-1" and pending.outcome.status == "awaiting_human"

        done = await pipeline.resume("T-1", "edit", "We have passed this to our legal team.", by="agent-7")
        assert server.count == before
        assert done.status == "ok"
        assert done.route == "human"
        assert done.answer == "We have passed this to our legal team."
        assert done.path == ["mini", "human"]
        assert done.handoff is not None
        assert done.handoff.action == "edit" and done.handoff.by == "agent-7"
        assert done.handoff.draft == "auto answer"
        assert done.handoff.diff is not None
        assert "-auto answer" in done.handoff.diff and "+We have passed this" in done.handoff.diff
        assert done.category == "legal"
        assert done.input_tokens == paused.input_tokens > 0
        assert await pipeline.handoffs() == []
        [record] = await pipeline.handoffs("resolved")
        assert record.outcome.route == "human"


async def test_an_escalated_ticket_hands_off_after_the_flagship_and_approve_keeps_its_draft(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    server.code_confidence = 0.5
    async with open_pipeline() as pipeline:
        paused = await pipeline.run(Ticket(id="T-2", text="I was charged twice."))
        assert paused.status == "awaiting_human"
        assert paused.path == ["mini", "flagship"]
        assert paused.handoff is not None and paused.handoff.draft_route == "flagship"
        assert paused.handoff.reasons == ["handoff:low_confidence"]
        assert server.model_counts == {"mini-model": 1, "flagship-model": 1}

        done = await pipeline.resume("T-2", "approve")
        assert server.model_counts == {"mini-model": 1, "flagship-model": 1}
        assert done.route == "human" and done.answer == paused.handoff.draft
        assert done.handoff is not None and done.handoff.diff is None and done.handoff.action == "approve"


async def test_a_second_resume_is_refused_and_changes_nothing_and_an_unknown_thread_is_not_found(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    async with open_pipeline() as pipeline:
        await pipeline.run(Ticket(id="T-3", text="My lawyer says hello."))
        first = await pipeline.resume("T-3", "answer", "First answer.")
        with pytest.raises(HandoffResolved, match="resolved already"):
            await pipeline.resume("T-3", "answer", "Second answer.")
        record = await pipeline.handoff("T-3")
        assert record.status == "resolved" and record.outcome.answer == first.answer == "First answer."
        with pytest.raises(HandoffNotFound):
            await pipeline.resume("nope", "approve")
        with pytest.raises(HandoffNotFound):
            await pipeline.handoff("nope")


async def test_answers_that_do_not_fit_are_input_errors_and_leave_the_handoff_pending(
    open_pipeline: Callable[..., Pipeline],
) -> None:
    async with open_pipeline() as pipeline:
        await pipeline.run(Ticket(id="T-4", text="My lawyer again."))
        with pytest.raises(InputError, match="needs the text"):
            await pipeline.resume("T-4", "edit")
        with pytest.raises(InputError, match="takes no text"):
            await pipeline.resume("T-4", "approve", "text")
        assert [r.thread_id for r in await pipeline.handoffs()] == ["T-4"]


async def test_running_the_paused_ticket_again_hands_it_off_once_and_another_ticket_on_its_thread_is_refused(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    async with open_pipeline() as pipeline:
        ticket = Ticket(id="T-5", text="My lawyer wants a copy.")
        first = await pipeline.run(ticket)
        again = await pipeline.run(ticket)
        assert server.count == 1
        assert again.status == "awaiting_human" and again.handoff == first.handoff
        assert len(await pipeline.handoffs()) == 1
        with pytest.raises(InputError, match="waiting for a person") as refused:
            await pipeline.run(Ticket(id="T-6", text="Any news?", thread_id="T-5"))
        assert refused.value.code == "thread_awaiting_human"


async def test_handoffs_survive_a_new_pipeline_on_the_same_checkpoints(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    async with open_pipeline() as first:
        for i in range(3):
            await first.run(Ticket(id=f"K-{i}", text="My lawyer will write."))
    async with open_pipeline() as second:
        pending = await second.handoffs()
        assert [r.thread_id for r in pending] == ["K-0", "K-1", "K-2"]
        count = server.count
        for record in pending:
            done = await second.resume(record.thread_id, "approve")
            assert done.route == "human" and done.path == ["mini", "human"]
        assert server.count == count


async def test_of_two_racing_resumes_from_two_pipelines_exactly_one_wins(
    open_pipeline: Callable[..., Pipeline],
) -> None:
    async with open_pipeline() as one, open_pipeline() as two:
        await one.run(Ticket(id="R-1", text="My lawyer is waiting."))
        await two.handoffs()
        results = await asyncio.gather(
            one.resume("R-1", "answer", "from one"),
            two.resume("R-1", "answer", "from two"),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1
        assert isinstance(lost[0], HandoffResolved)
        record = await one.handoff("R-1")
        assert record.status == "resolved" and record.outcome.answer == won[0].answer


async def test_a_thread_carries_the_conversation_into_the_next_tickets_prompt(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    async with open_pipeline(LOOPBACK) as pipeline:
        first = await pipeline.run(Ticket(id="C-1", text="Where is my parcel?", thread_id="conv-1"))
        assert first.status == "ok" and first.thread_id == "conv-1"
        second = await pipeline.run(Ticket(id="C-2", text="It still has not come.", thread_id="conv-1"))
        assert second.thread_id == "conv-1"
        user = server.requests[-1]["messages"][-1]["content"]
        text = user if isinstance(user, str) else json.dumps(user)
        assert "<history>\nCustomer: Where is my parcel?\n\nAgent: auto answer\n</history>" in text
        assert text.index("</history>") < text.index("<ticket>\nIt still has not come.")


async def test_two_tickets_of_one_thread_at_once_run_one_after_the_other(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    async with open_pipeline(LOOPBACK) as pipeline:
        first, second = await asyncio.gather(
            pipeline.run(Ticket(id="A-1", text="First message.", thread_id="conv-2")),
            pipeline.run(Ticket(id="A-2", text="Second message.", thread_id="conv-2")),
        )
        assert first.status == second.status == "ok"
        prompts = [json.dumps(r["messages"][-1]) for r in server.requests if r["model"] == "mini-model"]
        assert sum("<history>" in p for p in prompts) == 1


async def test_without_a_handoff_rule_or_a_thread_nothing_is_kept(
    open_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    async with open_pipeline(LOOPBACK) as pipeline:
        outcome = await pipeline.run(Ticket(text="Where is my parcel?"))
        assert outcome.status == "ok" and outcome.thread_id is None
    assert not (tmp_path / "checkpoints.sqlite").exists()


async def test_earlier_messages_make_a_repeat_contact_that_escalates_and_later_hands_off(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    history = [
        Turn(role="customer", content="Where is my refund?"),
        Turn(role="agent", content="It is on its way."),
        Turn(role="customer", content="Still nothing."),
    ]
    async with open_pipeline() as pipeline:
        third = await pipeline.run(Ticket(id="M-1", text="Still no refund!", messages=history))
        assert third.status == "ok" and third.route == "flagship"
        assert third.decisions[0].reasons == ["repeat_contact"]
        user = server.requests[0]["messages"][-1]["content"]
        assert "Customer: Still nothing." in (user if isinstance(user, str) else json.dumps(user))
        more = [*history, Turn(role="customer", content="Hello?")]
        fourth = await pipeline.run(Ticket(id="M-2", text="Anyone?", messages=more))
        assert fourth.status == "awaiting_human"
        assert fourth.handoff is not None and fourth.handoff.reasons == ["handoff:repeat_contact"]


def test_the_handoff_rule_is_checked_with_file_line_and_key() -> None:
    text = HANDOFF.read_text().replace("categories: [legal]", "categories: [legl]")
    with pytest.raises(ConfigError, match=r"handoff\.categories\[0\].*unknown categories: legl"):
        parse_spec(text, source="h.yaml", base_dir=GRAPHS)
    text = HANDOFF.read_text().replace("  repeat_contact: 4\n", "  priorities: [soon]\n")
    with pytest.raises(ConfigError, match=r"handoff\.priorities\[0\].*unknown priorities: soon"):
        parse_spec(text, source="h.yaml", base_dir=GRAPHS)
    empty = (
        HANDOFF.read_text().split("handoff:")[0]
        + "handoff: {}\n"
        + HANDOFF.read_text().split("repeat_contact: 4\n")[1]
    )
    with pytest.raises(ConfigError, match="handoff has no rule") as caught:
        parse_spec(empty, source="h.yaml", base_dir=GRAPHS)
    assert caught.value.key == "handoff" and caught.value.line is not None


async def test_a_ticket_on_a_thread_the_checkpointer_cannot_store_is_an_input_error(
    open_pipeline: Callable[..., Pipeline],
) -> None:
    async with open_pipeline(LOOPBACK) as pipeline:
        with pytest.raises(InputError, match="cannot be kept on a thread") as refused:
            await pipeline.run(Ticket(text="hello", thread_id="conv-3", metadata={"order": 2**70}))
        assert refused.value.code == "not_storable"
        assert (
            await pipeline.run(Ticket(text="fine", thread_id="conv-3", metadata={"order": 2**62}))
        ).status == "ok"


async def test_a_claim_left_by_a_resume_that_died_is_taken_over_once_it_is_stale(
    open_pipeline: Callable[..., Pipeline], server: OpenAIServer
) -> None:
    import time

    from triagegate.checkpoints import ABANDONED_S

    async with open_pipeline() as pipeline:
        await pipeline.run(Ticket(id="S-1", text="My lawyer, again."))
        await pipeline.run(Ticket(id="S-2", text="My lawyer, once more."))
        index = (await pipeline.checkpoints()).index
        assert await index.claim("S-1", "died-just-now")
        assert await index.claim("S-2", "died-long-ago", now=time.time() - ABANDONED_S - 1)
        with pytest.raises(HandoffResolved, match="taken by another resume"):
            await pipeline.resume("S-1", "answer", "Too early.")
        calls = server.count
        done = await pipeline.resume("S-2", "answer", "Taken over.")
        assert done.route == "human" and done.answer == "Taken over." and server.count == calls
        assert (await pipeline.handoff("S-2")).status == "resolved"
        assert (await pipeline.handoff("S-1")).status == "resolving"
