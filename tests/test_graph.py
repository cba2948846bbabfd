"""The cascade as a LangGraph StateGraph: routing over 2 and 3 tiers, the pre-gate, the recorded
decisions and the diagram, with scripted backends (models/scripted.py) and the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import triagegate
from triagegate.errors import ModelUnavailable
from triagegate.graph import build_graph, mermaid
from triagegate.models.base import ChatRequest, ClassifyRequest
from triagegate.pipeline import Pipeline
from triagegate.types import GateDecision, Outcome, Ticket

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ["billing", "shipping", "security", "feedback"]

CASCADE = """
version: 1
name: cascade
prompts: {prompts}
models:
  clf: {{backend: scripted, model: clf-model}}
  drafter: {{backend: scripted, model: drafter-model, price: {{input: 0.5, output: 1.0}}}}
  small: {{backend: scripted, model: small-model, price: {{input: 1.0, output: 2.0}}}}
  billing-llm: {{backend: scripted, model: billing-model, price: {{input: 2.0, output: 4.0}}}}
  flagship:
    backend: scripted
    model: flagship-model
    price: {{input: 10.0, output: 20.0}}
    capabilities: {{vision: true}}
tiers:
{tiers}
taxonomy:
  categories:
    - {{name: billing, description: charges and invoices}}
    - {{name: shipping, description: deliveries}}
    - {{name: security, description: hacked accounts, priority: urgent}}
    - {{name: feedback, description: compliments and complaints, priority: low}}
"""

THREE_TIERS = """
  - name: classifier
    model: clf
    prompt: triage.md
    draft: {model: drafter, prompt: answer.md, max_tokens: 100}
    gate: {threshold: 0.9, always_escalate: {categories: [security]}}
  - name: small
    model: small
    prompt: triage.md
    gate: {threshold: 0.8}
  - name: flagship
    model: flagship
    prompt: escalate.md
"""

SPECIALIST = """
  - name: classifier
    model: clf
    prompt: triage.md
    draft: {model: drafter}
    gate: {threshold: 0.9}
  - name: billing
    model: billing-llm
    prompt: triage.md
    categories: [billing]
    gate: {threshold: 0.8}
  - name: flagship
    model: flagship
    prompt: escalate.md
"""


def write_graph(tmp_path: Path, tiers: str) -> Path:
    path = tmp_path / "cascade.yaml"
    path.write_text(CASCADE.format(prompts=ROOT / "prompts", tiers=tiers.strip("\n")), encoding="utf-8")
    return path


def probabilities(best: str, confidence: float) -> dict[str, float]:
    rest = (1 - confidence) / (len(CATEGORIES) - 1)
    return {c: confidence if c == best else rest for c in CATEGORIES}


def triage_reply(code: str, confidence: float, answer: str = "Answered by a small model.") -> str:
    return json.dumps(
        {
            "category": code,
            "priority": "normal",
            "complexity": "low",
            "needs_vision": False,
            "answer": answer,
            "confidence": confidence,
        }
    )


def flagship_reply(category: str = "billing") -> str:
    return json.dumps({"category": category, "priority": "high", "answer": "The flagship answered."})


def cascade(
    graph: Path,
    *,
    clf: tuple[str, float] = ("billing", 0.95),
    small: str | Callable[[ChatRequest], Any] | None = None,
    billing: str | None = None,
    drafter: Callable[[ChatRequest], Any] | None = None,
    flagship: Callable[[ChatRequest], Any] | None = None,
) -> Pipeline:
    def classify(_request: ClassifyRequest) -> dict[str, float]:
        return probabilities(*clf)

    def fixed(text: str | None) -> Callable[[ChatRequest], Any]:
        return lambda _request: text or triage_reply("A", 0.95)

    return triagegate.load(
        graph,
        environ={},
        extras={
            "scripted": {
                "clf": {"classify": classify},
                "drafter": {"chat": drafter or (lambda _request: "Drafted for the classifier.")},
                "small": {"chat": small if callable(small) else fixed(small)},
                "billing-llm": {"chat": fixed(billing)},
                "flagship": {"chat": flagship or (lambda _request: flagship_reply())},
            }
        },
    )


def calls(pipeline: Pipeline, alias: str) -> int:
    return len(pipeline.backends[alias].calls)  # type: ignore[attr-defined]


def decided(outcome: Outcome) -> list[tuple[str, str, list[str]]]:
    return [(d.tier, d.route, d.reasons) for d in outcome.decisions]


@pytest.fixture
def three(tmp_path: Path) -> Path:
    return write_graph(tmp_path, THREE_TIERS)


async def test_kept_at_the_first_tier_the_drafter_writes_the_answer(three: Path) -> None:
    pipeline = cascade(three, clf=("billing", 0.95))
    outcome = await pipeline.run("I was charged twice.")
    assert (outcome.status, outcome.route, outcome.category) == ("ok", "classifier", "billing")
    assert outcome.answer == "Drafted for the classifier."
    assert outcome.path == ["classifier", "classifier:draft"]
    assert outcome.decisions == [
        GateDecision(tier="classifier", route="keep", confidence=0.95, threshold=0.9, reasons=[])
    ]
    assert not outcome.escalated
    assert outcome.confidence_method == "classifier"
    assert [n.model_alias for n in outcome.nodes] == ["clf", "drafter"]
    assert (calls(pipeline, "small"), calls(pipeline, "flagship")) == (0, 0)


async def test_escalated_to_the_second_tier_and_kept_there(three: Path) -> None:
    pipeline = cascade(three, clf=("billing", 0.6), small=triage_reply("A", 0.93))
    outcome = await pipeline.run("Something about my bill, I think.")
    assert (outcome.status, outcome.route) == ("ok", "small")
    assert outcome.answer == "Answered by a small model."
    assert outcome.path == ["classifier", "small"]
    assert decided(outcome) == [("classifier", "escalate", ["low_confidence"]), ("small", "keep", [])]
    assert outcome.decisions[1].confidence == 0.93 and outcome.decisions[1].threshold == 0.8
    assert outcome.confidence == 0.93, "the confidence of the tier that answered"
    assert outcome.escalated
    assert outcome.escalation_reasons == ["low_confidence"]
    assert (calls(pipeline, "drafter"), calls(pipeline, "flagship")) == (0, 0)


async def test_escalated_through_every_tier_to_the_last(three: Path) -> None:
    pipeline = cascade(three, clf=("security", 0.99), small=triage_reply("B", 0.4))
    outcome = await pipeline.run("Someone changed my password.")
    assert (outcome.status, outcome.route) == ("ok", "flagship")
    assert outcome.path == ["classifier", "small", "flagship"]
    assert decided(outcome) == [
        ("classifier", "escalate", ["category:security", "priority:urgent"]),
        ("small", "escalate", ["low_confidence"]),
    ]
    assert outcome.escalation_reasons == ["category:security", "priority:urgent", "low_confidence"]
    assert outcome.confidence == 0.4, "the last tier reports the previous tier's confidence"
    (request,) = pipeline.backends["flagship"].calls  # type: ignore[attr-defined]
    assert "category: shipping (confidence 0.40" in request.messages[-1].text, "it sees the last triage"
    assert outcome.cost_usd == pytest.approx(sum(n.cost_usd for n in outcome.nodes))


async def test_a_failed_draft_escalates_to_the_next_tier_with_answer_failed(three: Path) -> None:
    def broken(_request: ChatRequest) -> str:
        raise ModelUnavailable("drafter answered 503", model="drafter-model", status=503)

    pipeline = cascade(three, clf=("billing", 0.95), drafter=broken, small=triage_reply("A", 0.9))
    outcome = await pipeline.run("I was charged twice.")
    assert (outcome.status, outcome.route) == ("ok", "small")
    assert outcome.path == ["classifier", "classifier:draft", "small"]
    assert decided(outcome) == [
        ("classifier", "keep", []),
        ("classifier:draft", "escalate", ["answer_failed"]),
        ("small", "keep", []),
    ]
    assert outcome.errors == ["answer failed: ModelUnavailable: drafter answered 503"]


async def test_a_failed_last_tier_fails_the_ticket(three: Path) -> None:
    def down(_request: ChatRequest) -> str:
        raise ModelUnavailable("flagship answered 503", model="flagship-model", status=503)

    pipeline = cascade(three, clf=("billing", 0.2), small=triage_reply("A", 0.2), flagship=down)
    outcome = await pipeline.run("I was charged twice.")
    assert (outcome.status, outcome.route, outcome.answer) == ("failed", "flagship", None)
    assert outcome.errors == ["escalation failed: ModelUnavailable: flagship answered 503"]


async def test_a_failed_middle_triage_escalates_as_triage_failed(three: Path) -> None:
    pipeline = cascade(three, clf=("billing", 0.2), small="never json")
    outcome = await pipeline.run("I was charged twice.")
    assert outcome.route == "flagship"
    assert decided(outcome)[1][:2] == ("small", "escalate")
    assert decided(outcome)[1][2][0] == "triage_failed"
    assert calls(pipeline, "small") == 2, "one repair retry"
    assert (outcome.confidence, outcome.confidence_method) == (0.0, "none"), "the last triage, as in 2 tiers"
    (request,) = pipeline.backends["flagship"].calls  # type: ignore[attr-defined]
    assert "triage failed" in request.messages[-1].text


async def test_image_ticket_skips_every_tier_without_vision(three: Path, tmp_path: Path) -> None:
    from tests.support.images import tiny_png

    image = tmp_path / "shot.png"
    image.write_bytes(tiny_png())
    pipeline = cascade(three)
    outcome = await pipeline.run(
        Ticket(text="What is this error?", attachments=[triagegate.Attachment.image(str(image))])
    )
    assert (outcome.route, outcome.path) == ("flagship", ["flagship"])
    assert decided(outcome) == [("classifier", "skip", ["needs_vision"]), ("small", "skip", ["needs_vision"])]
    assert [d.tier for d in outcome.skipped] == ["classifier", "small"]
    assert outcome.escalated and outcome.escalation_reasons == ["needs_vision"]
    assert (calls(pipeline, "clf"), calls(pipeline, "small")) == (0, 0)


async def test_specialist_tier_runs_only_for_its_category(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, SPECIALIST)
    pipeline = cascade(graph, clf=("billing", 0.5), billing=triage_reply("A", 0.9, "Billing specialist."))
    outcome = await pipeline.run("A charge I do not understand.")
    assert (outcome.route, outcome.answer) == ("billing", "Billing specialist.")
    assert outcome.path == ["classifier", "billing"]

    pipeline = cascade(graph, clf=("shipping", 0.5))
    outcome = await pipeline.run("My parcel is late, I think.")
    assert outcome.route == "flagship"
    assert outcome.path == ["classifier", "flagship"]
    assert decided(outcome) == [
        ("classifier", "escalate", ["low_confidence"]),
        ("billing", "skip", ["category_not_served"]),
    ]
    assert calls(pipeline, "billing-llm") == 0


CHAT_TIERS = """
  - name: small
    model: small
    prompt: triage.md
    gate: {threshold: 0.8}
  - name: billing
    model: billing-llm
    prompt: triage.md
    categories: [billing]
    gate: {threshold: 0.85, category_thresholds: {billing: 0.9}}
  - name: flagship
    model: flagship
    prompt: escalate.md
"""


def test_graph_show_draws_the_compiled_graph_with_every_tier_and_edge(tmp_path: Path) -> None:
    graph = write_graph(tmp_path, CHAT_TIERS)
    shown = subprocess.run(
        [sys.executable, "-m", "triagegate", "graph", "show", str(graph)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pipeline = cascade(graph)
    assert shown.strip() == mermaid(pipeline.graph).strip(), "the diagram of the graph the pipeline runs"
    assert shown.strip() == pipeline.graph.get_graph().draw_mermaid().strip()
    for node in ("small", "billing", "flagship"):
        assert f"\t{node}({node}<hr/><small><em>model = " in shown, node
    assert "threshold = 0.8" in shown and "threshold = 0.85, 1 by category" in shown
    assert "serves = billing" in shown
    edges = {
        "__start__ -. &nbsp;enter&nbsp; .-> small",
        "__start__ -. &nbsp;enter, skip to billing&nbsp; .-> billing",
        "__start__ -. &nbsp;enter, skip to flagship&nbsp; .-> flagship",
        "small -. &nbsp;keep&nbsp; .-> __end__",
        "small -. &nbsp;escalate&nbsp; .-> billing",
        "small -. &nbsp;escalate, skip to flagship&nbsp; .-> flagship",
        "billing -. &nbsp;keep&nbsp; .-> __end__",
        "billing -. &nbsp;escalate&nbsp; .-> flagship",
        "flagship --> __end__",
    }
    drawn = {line.strip().rstrip(";") for line in shown.splitlines() if "->" in line}
    assert drawn == edges


def test_the_compiled_graph_has_one_node_per_tier(three: Path) -> None:
    pipeline = cascade(three)
    drawable = pipeline.graph.get_graph()
    assert set(drawable.nodes) == {
        "__start__",
        "classifier",
        "classifier/draft",
        "small",
        "flagship",
        "__end__",
    }
    drawn = drawable.draw_mermaid()
    assert "classifier\\2fdraft -. &nbsp;drafting failed&nbsp; .-> small" in drawn
    assert "classifier -. &nbsp;draft&nbsp; .-> classifier\\2fdraft" in drawn
    rebuilt = build_graph(pipeline.spec, {a: b.capabilities for a, b in pipeline.backends.items()})
    assert rebuilt.get_graph().draw_mermaid() == drawable.draw_mermaid()
