"""graphs/cascade.yaml end to end: classifier -> small model with log-probabilities -> flagship.

The two hosted tiers run against the loopback OpenAI-compatible server over real HTTP; the
classifier is trained on the graph's own examples (cached under a temporary directory).
Each test edits one gate in a copy of the file so that the route it checks does not
depend on how sure the classifier happens to be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import triagegate
from tests.support.images import tiny_png
from tests.support.openai_server import OpenAIServer
from triagegate.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
CASCADE = REPO / "graphs" / "cascade.yaml"


def cascade(tmp_path: Path, classifier_threshold: float) -> Path:
    """A copy of graphs/cascade.yaml with the classifier tier's threshold set."""
    text = CASCADE.read_text(encoding="utf-8")
    old = "      threshold: 0.9\n"
    assert text.count(old) == 1
    (tmp_path / "graphs").mkdir(exist_ok=True)
    (tmp_path / "prompts").symlink_to(REPO / "prompts")
    path = tmp_path / "graphs" / "cascade.yaml"
    path.write_text(text.replace(old, f"      threshold: {classifier_threshold}\n"), encoding="utf-8")
    return path


def environ(server: OpenAIServer, tmp_path: Path) -> dict[str, str]:
    return {
        "TRIAGEGATE_SMALL_BASE_URL": server.base_url,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url,
        "TRIAGEGATE_CACHE_DIR": str(tmp_path / "cache"),
    }


async def run(
    graph: Path, server: OpenAIServer, tmp_path: Path, ticket: triagegate.Ticket
) -> triagegate.Outcome:
    async with triagegate.load(graph, environ=environ(server, tmp_path)) as pipeline:
        return await pipeline.run(ticket)


def models_called(server: OpenAIServer) -> list[str]:
    return [body["model"] for body in server.requests]


def test_the_cascade_file_loads_as_three_tiers() -> None:
    spec = load_spec(CASCADE, environ={}).spec
    assert spec.tier_names == ["classifier", "small", "flagship"]
    assert spec.models["small"].capabilities.logprobs and spec.models["flagship"].capabilities.vision
    assert spec.first_tier.draft is not None and spec.first_tier.draft.model == "small"


async def test_unsure_classifier_hands_over_to_the_small_model_which_keeps(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.code_confidence = 0.95
    graph = cascade(tmp_path, classifier_threshold=1.0)
    outcome = await run(
        graph, openai_server, tmp_path, triagegate.Ticket(text="Where is my parcel? It is late.")
    )
    assert outcome.status == "ok", outcome.errors
    assert outcome.route == "small"
    assert outcome.path == ["classifier", "small"]
    assert [(d.tier, d.route) for d in outcome.decisions] == [("classifier", "escalate"), ("small", "keep")]
    assert "low_confidence" in outcome.decisions[0].reasons
    assert outcome.confidence_method == "logprobs"
    assert outcome.confidence == pytest.approx(0.95, abs=1e-6)
    assert models_called(openai_server) == ["small-model"]


async def test_unsure_small_model_escalates_to_the_flagship(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    openai_server.code_confidence = 0.4
    graph = cascade(tmp_path, classifier_threshold=1.0)
    outcome = await run(
        graph, openai_server, tmp_path, triagegate.Ticket(text="Where is my parcel? It is late.")
    )
    assert outcome.status == "ok", outcome.errors
    assert outcome.route == "flagship"
    assert outcome.path == ["classifier", "small", "flagship"]
    assert [(d.tier, d.route) for d in outcome.decisions] == [
        ("classifier", "escalate"),
        ("small", "escalate"),
    ]
    assert "low_confidence" in outcome.escalation_reasons
    assert models_called(openai_server) == ["small-model", "flagship-model"]


async def test_a_confident_classifier_keeps_and_the_small_model_drafts(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    graph = cascade(tmp_path, classifier_threshold=0.0)
    outcome = await run(
        graph, openai_server, tmp_path, triagegate.Ticket(text="Where is my parcel? It is late.")
    )
    assert outcome.status == "ok", outcome.errors
    assert outcome.route == "classifier"
    assert outcome.path == ["classifier", "classifier:draft"]
    assert outcome.confidence_method == "classifier"
    assert [(d.tier, d.route) for d in outcome.decisions] == [("classifier", "keep")]
    assert models_called(openai_server) == ["small-model"]
    assert "logprobs" not in openai_server.requests[0]


async def test_an_image_skips_both_tiers_that_cannot_see_it(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    image = tmp_path / "screenshot.png"
    image.write_bytes(tiny_png())
    graph = cascade(tmp_path, classifier_threshold=0.0)
    ticket = triagegate.Ticket(
        text="What does this error on my invoice mean?", attachments=[triagegate.Attachment(path=str(image))]
    )
    outcome = await run(graph, openai_server, tmp_path, ticket)
    assert outcome.status == "ok", outcome.errors
    assert outcome.route == "flagship"
    assert outcome.path == ["flagship"]
    assert [(d.tier, d.route, d.reasons) for d in outcome.skipped] == [
        ("classifier", "skip", ["needs_vision"]),
        ("small", "skip", ["needs_vision"]),
    ]
    assert models_called(openai_server) == ["flagship-model"]


def test_graph_check_lists_the_three_tiers_and_each_tiers_confidence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from triagegate.cli import main

    assert main(["graph", "check", str(CASCADE)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ok: {CASCADE} (cascade): 4 categories, tiers classifier -> small -> flagship"
    assert "  tier classifier: classifier; threshold 0.9; answers drafted by small" in out
    assert "  tier flagship: flagship; answers what reaches it" in out
    assert "  confidence: triage model classifier: classifier (the trained model's class probability)" in out
    assert (
        "  confidence: triage model small: logprobs; a reply without usable log-probabilities escalates "
        "(tiers[1].gate.on_missing_logprobs: escalate)"
    ) in out
    assert not any("legacy form" in line for line in out)


def test_graph_check_notes_the_legacy_form_with_its_fix(capsys: pytest.CaptureFixture[str]) -> None:
    from triagegate.cli import main

    legacy = REPO / "tests" / "graphs" / "scripted.yaml"
    assert main(["graph", "check", str(legacy)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        f"  legacy form: {legacy} uses nodes:/gate: (read as 2 tiers mini -> flagship); "
        "to write it as tiers see README 'Tiers'"
    ) in out
    assert "  tier mini: mini; threshold 0.7" in out
    assert not any("draft ignored" in line for line in out)


def test_graph_check_says_a_draft_on_a_chat_tier_is_ignored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from triagegate.cli import main

    text = CASCADE.read_text(encoding="utf-8").replace(
        "    max_tokens: 400\n", "    max_tokens: 400\n    draft: {model: flagship}\n", 1
    )
    graph = cascade(tmp_path, classifier_threshold=0.9)
    graph.write_text(text, encoding="utf-8")
    assert main(["graph", "check", str(graph)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  tier small: draft ignored: small is a chat model and writes its own answer" in out


def test_dry_run_estimates_the_cascade_along_every_tier(tmp_path: Path) -> None:
    """batch --dry-run on three tiers: kept tickets cost the classifier and its drafter,
    escalated ones every later tier (an upper bound)."""
    from triagegate.batch.dryrun import dry_run
    from triagegate.batch.runner import BatchOptions

    source = tmp_path / "tickets.jsonl"
    source.write_text('{"id": "a", "text": "Where is my parcel?"}\n{"id": "b", "text": "Refund me"}\n')
    report = dry_run(
        load_spec(CASCADE, environ={}), BatchOptions(input=str(source), output=tmp_path / "o.jsonl")
    )
    assert report["rows"]["to_run"] == 2
    tokens, cost = report["estimate"]["tokens"], report["estimate"]["cost_usd"]
    assert tokens["mini_input"] > 0 and tokens["mini_output_max"] == 2 * 300
    assert tokens["flagship_output_max_if_all_escalate"] == 2 * (400 + 800)
    assert 0 < cost["no_escalation"] < cost["expected"] < cost["all_escalate"]
