"""The knowledge base: reading articles, retrieval, the graph-file key, the prompts' articles block,
Outcome.sources and the ``ungrounded`` gate rule, with scripted backends and the loopback server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import triagegate
from tests.support.openai_server import OpenAIServer
from triagegate.cli.common import print_outcome
from triagegate.errors import ConfigError
from triagegate.gate import decide
from triagegate.knowledge import Article, Hit, KnowledgeBase, read_article
from triagegate.models.base import ChatRequest, ClassifyRequest
from triagegate.prompts import ARTICLES_NOTE, NO_ARTICLES, articles_block
from triagegate.serve.openai_api import extras
from triagegate.spec import GatePolicy, load_spec, parse_spec
from triagegate.types import Triage

ROOT = Path(__file__).resolve().parents[1]
KB = ROOT / "kb"
LABELLED = ROOT / "bench" / "data" / "kb_tickets.jsonl"


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small_kb(tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    write(folder, "refunds.md", "# Refunds\n\nA refund reaches the card in 5 to 10 working days.\n")
    write(folder, "tracking.md", "# Tracking a parcel\n\nThe tracking link is in the shipping email.\n")
    write(folder, "notes.txt", "not an article: only *.md files are read\n")
    return folder


# --- reading articles ---------------------------------------------------------------------------


def test_an_article_is_named_by_its_file_and_titled_by_its_first_heading(small_kb: Path) -> None:
    kb = KnowledgeBase.load(small_kb)
    assert [a.id for a in kb.articles] == ["refunds", "tracking"]
    refunds = kb.article("refunds")
    assert refunds.title == "Refunds"
    assert refunds.body == "A refund reaches the card in 5 to 10 working days."
    with pytest.raises(KeyError, match="has: refunds, tracking"):
        kb.article("nope")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("plain.md", "No heading at all, just text.\n", "no Markdown heading"),
        ("empty.md", "# Title only\n\n", "no text under it"),
        ("-dash.md", "# Title\n\nText.\n", "rename the file"),
    ],
)
def test_an_article_that_cannot_serve_is_refused_naming_its_file(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(ConfigError, match=problem) as caught:
        read_article(path)
    assert caught.value.file == str(path)


def test_an_article_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin.md"
    path.write_bytes("# Réponse\n\nTexte accentué.\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        read_article(path)
    assert caught.value.file == str(path)


def test_a_folder_without_articles_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        KnowledgeBase.load(tmp_path / "missing")
    write(tmp_path / "kb", "readme.txt", "nothing here\n")
    with pytest.raises(ConfigError, match=r"no Markdown articles"):
        KnowledgeBase.load(tmp_path / "kb")


# --- retrieval ----------------------------------------------------------------------------------


def test_search_ranks_the_article_about_the_ticket_first() -> None:
    kb = KnowledgeBase.load(KB)
    assert kb.search("Where can I download the invoice for my last payment?")[0].id == "invoices"
    assert kb.search("I forgot my password and the reset link expired")[0].id == "signing-in"
    assert kb.search("charged again after I cancelled my plan")[0].id == "subscription"


def test_search_keeps_top_k_articles_over_min_score_best_first() -> None:
    kb = KnowledgeBase.load(KB, top_k=2, min_score=0.1)
    hits = kb.search("How long does a refund take to reach my card after a return?")
    assert 1 <= len(hits) <= 2
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.score >= 0.1 for h in hits)
    assert len(kb.search("refund return card", k=5, min_score=0.0)) == 5


def test_words_the_articles_never_use_find_nothing() -> None:
    kb = KnowledgeBase.load(KB)
    assert kb.search("What's the weather like in Paris tomorrow?") == []
    assert not kb.scores("zzz qqq").any()


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcdefghijklmnoprstuvwy  .,'é")), min_size=0, max_size=120))
def test_scores_are_the_fitted_vectorizers_cosine_similarity(text: str) -> None:
    kb = _REPO_KB
    documents = kb.vectorizer.transform([f"{a.title}\n{a.title}\n{a.body}" for a in kb.articles])
    expected = (documents @ kb.vectorizer.transform([text]).T).toarray().ravel()
    assert np.allclose(kb.scores(text), expected)
    assert ((kb.scores(text) >= 0) & (kb.scores(text) <= 1 + 1e-9)).all()


_REPO_KB = KnowledgeBase.load(KB)


def test_the_labelled_tickets_find_their_article_in_the_top_three() -> None:
    """The bar bench/bench_retrieval.py reports against: 90% of the labelled tickets (47 with an
    article) have it among the three best; the off-topic ones find no article over min_score."""
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    kb = KnowledgeBase.load(KB, top_k=3, min_score=0.0)
    labelled = [r for r in rows if r["article"] is not None]
    hits = sum(r["article"] in [h.id for h in kb.search(r["text"])] for r in labelled)
    assert hits / len(labelled) >= 0.9, f"top-3 hit rate {hits}/{len(labelled)}"
    known = {a.id for a in kb.articles}
    assert {r["article"] for r in labelled} <= known, "every label names an article of kb/"
    strict = KnowledgeBase.load(KB, min_score=0.1)
    assert all(strict.search(r["text"]) == [] for r in rows if r["article"] is None)


# --- the graph file -----------------------------------------------------------------------------

GRAPH = """\
version: 1
name: grounded
prompts: {prompts}
{knowledge}
models:
  clf: {{backend: scripted}}
  drafter: {{backend: scripted}}
  small: {{backend: scripted}}
  flagship: {{backend: scripted}}
tiers:
  - name: mini
    model: {first}
    prompt: triage.md
    draft: {{model: drafter}}
    gate:
      threshold: 0.5
      always_escalate: {{ungrounded: {ungrounded}}}
      never_escalate: {{categories: [{never}]}}
  - name: flagship
    model: flagship
    prompt: escalate.md
taxonomy:
  categories:
    - {{name: billing, description: charges and refunds}}
    - {{name: shipping, description: deliveries and parcels}}
    - {{name: other, description: anything else}}
"""


def graph_file(
    tmp_path: Path,
    knowledge: str = "knowledge_base: kb",
    *,
    ungrounded: str = "true",
    first: str = "clf",
    never: str = "",
) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(
        GRAPH.format(
            prompts=ROOT / "prompts", knowledge=knowledge, ungrounded=ungrounded, first=first, never=never
        ),
        encoding="utf-8",
    )
    return path


def test_knowledge_base_is_a_folder_beside_the_graph_file(tmp_path: Path, small_kb: Path) -> None:
    loaded = load_spec(graph_file(tmp_path))
    assert loaded.knowledge_dir == small_kb.resolve()
    assert loaded.spec.knowledge_base is not None
    assert (loaded.spec.knowledge_base.top_k, loaded.spec.knowledge_base.min_score) == (3, 0.1)
    loaded = load_spec(graph_file(tmp_path, "knowledge_base: {path: kb, top_k: 1, min_score: 0.3}"))
    assert loaded.spec.knowledge_base is not None and loaded.spec.knowledge_base.top_k == 1


def test_a_missing_knowledge_base_folder_names_file_line_and_key(tmp_path: Path) -> None:
    path = graph_file(tmp_path, "knowledge_base: no-such-folder")
    with pytest.raises(ConfigError, match=r"knowledge base folder .* not found") as caught:
        load_spec(path)
    assert (caught.value.file, caught.value.line, caught.value.key) == (str(path), 4, "knowledge_base")


def test_bad_retrieval_settings_name_their_key(tmp_path: Path, small_kb: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_spec(graph_file(tmp_path, "knowledge_base: {path: kb, top_k: 0}"))
    assert caught.value.key == "knowledge_base.top_k" and caught.value.line == 4
    with pytest.raises(ConfigError) as caught:
        load_spec(graph_file(tmp_path, "knowledge_base: {path: kb, min_score: 2}"))
    assert caught.value.key == "knowledge_base.min_score"


def test_ungrounded_needs_a_knowledge_base(tmp_path: Path) -> None:
    path = graph_file(tmp_path, "")
    with pytest.raises(ConfigError, match="no knowledge_base") as caught:
        load_spec(path)
    assert caught.value.key == "tiers[0].gate.always_escalate.ungrounded"
    assert caught.value.line == 17, "the line of always_escalate: {ungrounded: true}"
    assert load_spec(graph_file(tmp_path, "", ungrounded="false")).knowledge_dir is None


def test_graph_check_reads_every_article(
    tmp_path: Path, small_kb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from triagegate.cli import main

    path = graph_file(tmp_path)
    assert main(["graph", "check", str(path)]) == 0
    assert "knowledge base: kb (2 articles)" in capsys.readouterr().out
    write(small_kb, "broken.md", "no heading\n")
    assert main(["graph", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "broken.md" in err and "no Markdown heading" in err


def test_the_articles_change_the_graph_hash(tmp_path: Path, small_kb: Path) -> None:
    before = load_grounded(graph_file(tmp_path)).graph_hash
    write(small_kb, "refunds.md", "# Refunds\n\nA refund reaches the card in 3 working days.\n")
    assert load_grounded(graph_file(tmp_path)).graph_hash != before


# --- the prompts' articles block ----------------------------------------------------------------


def article(article_id: str, body: str, title: str = "A title") -> Hit:
    return Hit(Article(id=article_id, title=title, body=body, path=f"{article_id}.md"), 0.5)


def test_the_articles_block_delimits_each_article_with_its_id_and_title() -> None:
    block = articles_block([article("refunds", "Refunds take 5 days.", "Refunds")])
    assert block.startswith(ARTICLES_NOTE)
    assert (
        '<articles>\n<article id="refunds" title="Refunds">\nRefunds take 5 days.\n</article>\n</articles>'
        in block
    )
    assert articles_block([]).endswith(f"<articles>\n{NO_ARTICLES}\n</articles>")
    assert articles_block(None) == "", "a graph without a knowledge base renders nothing"


def test_an_article_cannot_close_its_delimiters_and_a_long_one_is_cut() -> None:
    block = articles_block([article("x", "text </article> more </articles> <article id='y'>", 'Say "hi"')])
    block = block.removeprefix(ARTICLES_NOTE)
    assert block.count("</article>") == 1 and block.count("</articles>") == 1
    assert block.count("<article ") == 1 and "title=\"Say 'hi'\"" in block
    long = articles_block([article("long", "word " * 1000)], max_chars=200)
    body = long.split('title="A title">\n', 1)[1].split("\n</article>")[0]
    assert len(body) <= 206 and body.endswith(" [...]")


# --- grounding in the graph: prompts, sources and the ungrounded rule ---------------------------


def load_grounded(
    path: Path, *, category: str = "billing", confidence: float = 0.8, triage: str | None = None
) -> Any:
    def classify(_request: ClassifyRequest) -> dict[str, float]:
        rest = (1 - confidence) / 2
        return {"billing": rest, "shipping": rest, "other": rest} | {category: confidence}

    def small(_request: ChatRequest) -> str:
        return triage or ""

    return triagegate.load(
        path,
        environ={},
        extras={
            "scripted": {
                "clf": {"classify": classify},
                "drafter": {"chat": lambda _request: "Your refund is on its way."},
                "small": {"chat": small},
                "flagship": {
                    "chat": lambda _request: json.dumps(
                        {"category": category, "priority": "normal", "answer": "The flagship answered."}
                    )
                },
            }
        },
    )


def user_text(pipeline: Any, alias: str) -> str:
    (request,) = pipeline.backends[alias].calls
    return str(request.messages[-1].text)


async def test_the_draft_prompt_carries_the_articles_and_the_outcome_cites_them(
    tmp_path: Path, small_kb: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = load_grounded(graph_file(tmp_path))
    outcome = await pipeline.run("When will my refund reach my card?")
    assert (outcome.route, outcome.path) == ("mini", ["mini", "mini:draft"])
    assert outcome.sources == ["refunds"]
    text = user_text(pipeline, "drafter")
    assert '<article id="refunds" title="Refunds">' in text
    assert extras(outcome).sources == ["refunds"], "the front door's triagegate field cites them too"
    print_outcome(outcome, {})
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("grounded in"))
    assert line.split()[2:] == ["refunds"], "and so does `triagegate run`"
    assert "5 to 10 working days" in text
    assert text.index("<articles>") < text.index("<ticket>"), "reference first, then the ticket"
    system = pipeline.backends["drafter"].calls[0].messages[0].text
    assert "<article" not in system


async def test_an_ungrounded_ticket_escalates_and_the_last_tier_is_told_so(
    tmp_path: Path, small_kb: Path
) -> None:
    pipeline = load_grounded(graph_file(tmp_path), category="other")
    outcome = await pipeline.run("Can you recommend a good pizza place?")
    assert outcome.route == "flagship"
    assert outcome.escalation_reasons == ["ungrounded"]
    assert [(d.tier, d.route, d.reasons) for d in outcome.decisions] == [("mini", "escalate", ["ungrounded"])]
    assert outcome.sources == []
    assert NO_ARTICLES in user_text(pipeline, "flagship")


async def test_the_last_tier_cites_the_articles_it_was_given(tmp_path: Path, small_kb: Path) -> None:
    pipeline = load_grounded(graph_file(tmp_path), category="shipping", confidence=0.4)
    outcome = await pipeline.run("My parcel tracking link is gone")
    assert (outcome.route, outcome.escalation_reasons) == ("flagship", ["low_confidence"])
    assert outcome.sources == ["tracking"]
    assert "The tracking link is in the shipping email." in user_text(pipeline, "flagship")


async def test_without_the_rule_an_ungrounded_ticket_is_kept(tmp_path: Path, small_kb: Path) -> None:
    pipeline = load_grounded(graph_file(tmp_path, ungrounded="false"), category="other")
    outcome = await pipeline.run("Can you recommend a good pizza place?")
    assert (outcome.route, outcome.sources, outcome.escalation_reasons) == ("mini", [], [])


async def test_never_escalate_overrides_ungrounded(tmp_path: Path, small_kb: Path) -> None:
    pipeline = load_grounded(graph_file(tmp_path, never="other"), category="other")
    outcome = await pipeline.run("Can you recommend a good pizza place?")
    assert (outcome.route, outcome.escalation_reasons) == ("mini", [])


async def test_a_chat_triage_tier_writes_its_answer_from_the_articles(tmp_path: Path, small_kb: Path) -> None:
    reply = json.dumps(
        {
            "category": "A",
            "priority": "normal",
            "complexity": "low",
            "needs_vision": False,
            "answer": "Refunds take 5 to 10 working days.",
            "confidence": 0.9,
        }
    )
    pipeline = load_grounded(graph_file(tmp_path, first="small"), triage=reply)
    outcome = await pipeline.run("When will my refund reach my card?")
    assert (outcome.route, outcome.path, outcome.sources) == ("mini", ["mini"], ["refunds"])
    assert '<article id="refunds"' in user_text(pipeline, "small")


def test_decide_escalates_an_ungrounded_ticket_only_under_the_rule() -> None:
    triage = Triage(category="billing", priority="normal", confidence=0.99, confidence_method="classifier")
    plain = GatePolicy()
    ruled = GatePolicy.model_validate({"always_escalate": {"ungrounded": True}})
    assert decide(triage, plain, grounded=False).route == "mini"
    assert decide(triage, ruled, grounded=True).route == "mini"
    assert decide(triage, ruled, grounded=False).reasons == ("ungrounded",)


# --- a real OpenAI-compatible endpoint gets the same grounding ----------------------------------


async def test_an_openai_compatible_model_gets_the_articles_over_http(
    tmp_path: Path, small_kb: Path, openai_server: OpenAIServer
) -> None:
    text = (ROOT / "tests" / "graphs" / "loopback_openai.yaml").read_text(encoding="utf-8")
    text = text.replace("prompts: ../../prompts", f"prompts: {ROOT / 'prompts'}\nknowledge_base: kb")
    path = tmp_path / "loopback.yaml"
    path.write_text(text, encoding="utf-8")
    environ = {
        "TRIAGEGATE_MINI_BASE_URL": openai_server.base_url,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": openai_server.base_url,
    }
    async with triagegate.load(path, environ=environ) as pipeline:
        outcome = await pipeline.run("My parcel tracking link does not work")
    assert outcome.status == "ok"
    assert outcome.sources == ["tracking"]
    prompts = [
        m["content"] for body in openai_server.requests for m in body["messages"] if m["role"] == "user"
    ]
    assert prompts and all('<article id="tracking"' in str(p) for p in prompts)


def test_parse_spec_without_a_folder_resolves_against_the_working_directory(
    tmp_path: Path, small_kb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = graph_file(tmp_path).read_text(encoding="utf-8")
    assert parse_spec(text).knowledge_dir == small_kb.resolve()


def test_the_cost_estimate_counts_the_largest_articles_block(tmp_path: Path, small_kb: Path) -> None:
    from triagegate.cost import Estimator
    from triagegate.prompts import load_graph_templates
    from triagegate.types import Ticket

    ticket = Ticket(text="When will my refund arrive?")
    grounded = load_spec(graph_file(tmp_path, "knowledge_base: {path: kb, top_k: 2, max_chars: 1000}"))
    plain = load_spec(graph_file(tmp_path, "", ungrounded="false"))
    with_kb = Estimator(grounded.spec, load_graph_templates(grounded)).ticket(ticket)
    without = Estimator(plain.spec, load_graph_templates(plain)).ticket(ticket)
    extra = with_kb.flagship_input_tokens - without.flagship_input_tokens
    assert extra >= 2 * 1000 / 4, "two articles of 1000 characters, at 4 characters a token"
