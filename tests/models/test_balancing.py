"""Several endpoints per alias: the balancer's decisions, and load over real loopback servers."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import triagegate
from tests.models import test_openai
from tests.support.balancing import ServerProcess, between, run_paced, shares
from tests.support.openai_server import Cut, OpenAIServer, Status
from triagegate.errors import ConfigError, ModelError, ModelUnavailable, RateLimited
from triagegate.models import ChatRequest, ClassifyRequest, Message
from triagegate.models.balancer import BalancedBackend, Health, _Slot, choose, counts_against_endpoint
from triagegate.models.base import PartialReply, chat_until
from triagegate.models.fallback import FallbackChain
from triagegate.models.openai import OpenAIBackend
from triagegate.models.scripted import ScriptedBackend
from triagegate.spec import ModelBinding

REPO = Path(__file__).resolve().parents[2]
FAST = {"retry_base": 0.01, "retry_cap": 0.05}
HELLO = ChatRequest(messages=(Message("user", "Hello"),), max_tokens=8)
Build = test_openai.Build
build = test_openai.build
"""The openai backend tests' fixture: builds an alias from bindings and closes it after the test."""


# --- decisions -------------------------------------------------------------------------------


def slots(*weights: float, cooldown_s: float = 10.0, after: int = 2) -> list[_Slot]:
    return [
        _Slot(ScriptedBackend(f"e{i}", ModelBinding(backend="scripted")), w, Health(cooldown_s, after), None)
        for i, w in enumerate(weights)
    ]


def test_health_opens_after_failures_in_a_row_and_lets_one_probe_through_after_the_cool_down() -> None:
    health = Health(cooldown_s=10.0, cooldown_after=3)
    assert not health.failed(0.0) and not health.failed(0.1)
    assert health.succeeded() is False  # a success in between resets the count
    assert not health.failed(0.2) and not health.failed(0.3)
    assert health.failed(0.4)  # third in a row: open
    assert not health.available(5.0) and not health.available(10.39)
    assert health.available(10.4) and health.half_open(10.4)
    health.sent(10.4)
    assert not health.available(10.5)  # one probe at a time
    assert health.failed(10.6)  # the probe failed: open again for a whole cool-down
    assert not health.available(20.5) and health.available(20.6)
    health.sent(20.6)
    assert health.succeeded() is True  # the probe worked: closed
    assert health.available(20.7) and (health.failures, health.open_until) == (0, None)


@given(
    st.lists(
        st.tuples(st.sampled_from(["send", "fail", "succeed"]), st.floats(min_value=0.0, max_value=3.0)),
        max_size=60,
    )
)
def test_health_never_lets_traffic_through_a_cool_down_and_probes_one_at_a_time(
    events: list[tuple[str, float]],
) -> None:
    health = Health(cooldown_s=2.0, cooldown_after=2)
    now, in_flight = 0.0, 0
    for event, wait in events:
        now += wait
        if event == "send":
            if not health.available(now):
                assert health.open_until is not None and (now < health.open_until or health.probing)
                continue
            health.sent(now)
            in_flight += 1
            if health.open_until is not None:  # a half-open trial: nothing else until it ends
                assert health.probing and not health.available(now)
        elif in_flight:
            in_flight -= 1
            if event == "fail":
                if health.failed(now):
                    assert health.open_until == now + 2.0 and not health.available(now + 1.999)
            else:
                health.succeeded()
                assert health.open_until is None and health.failures == 0 and health.available(now)


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=5), st.integers(1, 4))
def test_at_light_load_the_choice_is_weighted_round_robin(weights: list[int], rounds: int) -> None:
    pool = slots(*weights)
    for _ in range(rounds * sum(weights)):
        index = choose(pool, set(), 0.0)
        assert index is not None
        pool[index].sent += 1
    assert [slot.sent for slot in pool] == [w * rounds for w in weights]


def test_the_choice_prefers_fewest_in_flight_per_weight_and_skips_tried_cooling_and_full() -> None:
    pool = slots(1, 2, 1)
    pool[0].in_flight, pool[1].in_flight, pool[2].in_flight = 1, 1, 1
    assert choose(pool, set(), 0.0) == 1  # 1/2 in flight per weight beats 1/1
    assert choose(pool, {1}, 0.0) == 0
    pool[0].health.failed(0.0)
    pool[0].health.failed(0.0)
    assert choose(pool, {1}, 5.0) == 2  # endpoint 0 is cooling down
    assert choose(pool, {1, 2}, 5.0) is None

    class Full:
        def has_capacity(self) -> bool:
            return False

    pool[1].limited = Full()
    assert choose(pool, set(), 5.0) == 2  # a full limiter loses to busier endpoints with room
    assert choose(pool, {2}, 5.0) == 1  # but is still used when nothing else is available


def test_which_errors_count_against_an_endpoint() -> None:
    assert counts_against_endpoint(ModelUnavailable("x", status=503))
    assert counts_against_endpoint(RateLimited("x"))
    assert counts_against_endpoint(ModelError("bad key", status=401))
    assert not counts_against_endpoint(ModelError("request too long", status=400))


# --- against loopback servers in this process ------------------------------------------------


def binding(urls: list[str], **overrides: Any) -> dict[str, Any]:
    return {
        "backend": "openai",
        "model": "gpt-mini",
        "endpoints": [{"base_url": url, "weight": 1} for url in urls],
        "max_retries": 1,
        "timeout": 5,
        "cooldown_s": 30,
        "cooldown_after": 2,
        "options": dict(FAST),
        **overrides,
    }


@pytest.fixture
def servers() -> Iterator[list[OpenAIServer]]:
    with OpenAIServer() as a, OpenAIServer() as b, OpenAIServer() as c:
        yield [a, b, c]


async def test_endpoints_build_a_balancer_of_one_attempt_backends_named_by_host(
    servers: list[OpenAIServer], build: Build
) -> None:
    backend = build({"mini": binding([s.base_url for s in servers], max_retries=3)})
    assert isinstance(backend, BalancedBackend)
    names = [e.name for e in backend.endpoints]
    assert names == [f"mini@127.0.0.1:{s.port}" for s in servers]
    assert all(isinstance(e, OpenAIBackend) and e.retry.max_retries == 0 for e in backend.endpoints)
    assert backend.rounds == 4
    results = [await backend.chat(HELLO) for _ in range(6)]
    assert sorted(r.endpoint for r in results) == sorted(names * 2)
    assert [s.count for s in servers] == [2, 2, 2]


async def test_endpoints_on_one_host_are_told_apart_by_path(
    build: Build, servers: list[OpenAIServer]
) -> None:
    root = servers[0].base_url.removesuffix("/v1")
    backend = build({"mini": binding([f"{root}/a/v1", f"{root}/b/v1"])})
    assert isinstance(backend, BalancedBackend)
    assert [e.name for e in backend.endpoints] == [
        f"mini@127.0.0.1:{servers[0].port}/a/v1",
        f"mini@127.0.0.1:{servers[0].port}/b/v1",
    ]


async def test_each_endpoint_sends_its_own_key(servers: list[OpenAIServer], build: Build) -> None:
    a, b, _ = servers
    models = {"mini": binding([a.base_url, b.base_url], api_key_env="KEY_ALL")}
    models["mini"]["endpoints"][1]["api_key_env"] = "KEY_B"
    backend = build(models, environ={"KEY_ALL": "sk-all-0123456789", "KEY_B": "sk-b-0123456789"})
    for _ in range(2):
        await backend.chat(HELLO)
    assert a.request_headers[0]["authorization"] == "Bearer sk-all-0123456789"
    assert b.request_headers[0]["authorization"] == "Bearer sk-b-0123456789"
    with pytest.raises(ConfigError, match="KEY_B is not set") as info:
        build(models, environ={"KEY_ALL": "sk-all-0123456789"})
    assert info.value.key == "models.mini.endpoints[1].api_key_env"


async def test_a_failed_attempt_moves_to_another_endpoint_and_is_counted(
    servers: list[OpenAIServer], build: Build
) -> None:
    a, b, _ = servers
    backend = build({"mini": binding([a.base_url, b.base_url])})
    a.script(None, Status(503))
    result = await backend.chat(HELLO)  # the first choice is endpoint a (the first at par)
    assert result.endpoint == f"mini@127.0.0.1:{b.port}"
    assert (result.usage.requests, a.count, b.count) == (2, 1, 1)


async def test_an_endpoint_that_keeps_failing_cools_down_and_comes_back_after_it(
    servers: list[OpenAIServer], build: Build
) -> None:
    a, b, _ = servers
    backend = build({"mini": binding([a.base_url, b.base_url], cooldown_s=0.3)})
    a.fault_rate, a.faults = 1.0, ("500",)
    for _ in range(6):
        assert (await backend.chat(HELLO)).endpoint == f"mini@127.0.0.1:{b.port}"
    assert a.count == 2  # two failures in a row, then no more traffic during the cool-down
    a.fault_rate = 0.0
    time.sleep(0.35)
    endpoints = [(await backend.chat(HELLO)).endpoint for _ in range(4)]
    assert endpoints.count(f"mini@127.0.0.1:{a.port}") == 2  # the probe worked; back at par, not a burst
    assert a.count == 4


async def test_a_stream_cut_mid_reply_restarts_on_another_endpoint(
    servers: list[OpenAIServer], build: Build
) -> None:
    a, b, _ = servers
    backend = build({"mini": binding([a.base_url, b.base_url], max_retries=0)})
    a.script(None, Cut(after_tokens=1))
    seen: list[PartialReply] = []

    def decide(partial: PartialReply) -> None:
        seen.append(partial)

    result = await chat_until(backend, HELLO, decide)
    assert (result.text, result.endpoint, result.usage.requests) == (
        "auto answer",
        f"mini@127.0.0.1:{b.port}",
        2,
    )
    assert seen[-1].complete and seen[-1].text == "auto answer"
    assert a.requests[0]["stream"] is True and b.requests[0]["stream"] is True


async def test_label_scoring_goes_through_the_balancer(servers: list[OpenAIServer], build: Build) -> None:
    a, b, _ = servers
    backend = build({"mini": binding([a.base_url, b.base_url], capabilities={"logprobs": True})})
    a.fault_rate, a.faults = 1.0, ("503",)
    for server in (a, b):
        server.code_confidence = 0.8
    result = await backend.classify(
        ClassifyRequest(text="My invoice is wrong", labels=("billing", "technical"))
    )
    assert result.best == ("billing", pytest.approx(0.8))
    assert (result.endpoint, result.usage.requests) == (f"mini@127.0.0.1:{b.port}", 2)


async def test_all_endpoints_cooling_down_fails_at_once_and_the_fallback_alias_answers(
    servers: list[OpenAIServer], build: Build
) -> None:
    a, b, backup = servers
    for server in (a, b):
        server.fault_rate, server.faults = 1.0, ("502",)
    models = {
        "mini": binding([a.base_url, b.base_url], fallbacks=["backup"]),
        "backup": {"backend": "openai", "model": "gpt-backup", "base_url": backup.base_url, "max_retries": 0},
    }
    chain = build(models)
    assert isinstance(chain, FallbackChain)
    balanced = chain.chain[0]
    assert isinstance(balanced, BalancedBackend)
    results = [await chain.chat(HELLO) for _ in range(3)]
    assert {r.endpoint for r in results} == {f"backup@127.0.0.1:{backup.port}"}
    # Round one tried a and b, round two tried them again (max_retries 1), which opened both.
    assert (a.count, b.count, backup.count) == (2, 2, 3)
    started = time.perf_counter()
    with pytest.raises(ModelUnavailable, match=r"all 2 endpoints are cooling down .* add fallbacks"):
        await balanced.chat(HELLO)
    assert time.perf_counter() - started < 0.5


async def test_a_bad_request_is_not_held_against_the_endpoint(
    servers: list[OpenAIServer], build: Build
) -> None:
    a, b, _ = servers
    backend = build({"mini": binding([a.base_url, b.base_url])})
    for server in (a, b):
        server.script(None, Status(400), Status(400))
    for _ in range(2):
        with pytest.raises(ModelError, match="HTTP 400"):
            await backend.chat(HELLO)
    assert (a.count, b.count) == (2, 2)  # one round only: a 400 is not retried
    assert isinstance(backend, BalancedBackend)
    assert all(s.health.open_until is None for s in backend.slots)


@pytest.mark.parametrize(
    ("limit", "value", "most"),
    [
        # 4 requests a second: one second's burst, then the refill.
        ("max_rps", 4, lambda seconds: 4 + math.ceil(4 * seconds)),
        # 50 tokens a minute, each request about 10 by the estimate (2 of prompt, max_tokens 8):
        # the bucket's 50 at once, then one request per 12 s.
        ("max_tokens_per_min", 50, lambda seconds: 5 + math.ceil(seconds / 12)),
    ],
)
async def test_an_endpoint_at_its_limit_is_passed_over(
    servers: list[OpenAIServer], build: Build, limit: str, value: float, most: Callable[[float], int]
) -> None:
    a, b, _ = servers
    models = {"mini": binding([a.base_url, b.base_url])}
    models["mini"]["endpoints"][0][limit] = value
    backend = build(models)
    started = time.perf_counter()
    for _ in range(40):
        await backend.chat(HELLO)
    elapsed = time.perf_counter() - started
    # Equal weights would give it 20.
    assert 1 <= a.count <= most(elapsed) and a.count < 20, (a.count, elapsed)
    assert a.count + b.count == 40


async def test_a_slow_endpoint_is_sent_less_than_its_share(servers: list[OpenAIServer], build: Build) -> None:
    a, b, _ = servers
    a.latency = 0.2
    backend = build({"mini": binding([a.base_url, b.base_url])})
    done = await run_paced(backend, 200, rate=1000.0, concurrency=8)
    assert [d.error for d in done if d.error] == []
    assert isinstance(backend, BalancedBackend)
    slow, fast = shares([d.endpoint for d in done], [e.name for e in backend.endpoints])
    # Round robin would give each half; requests pile up in flight at the slow one instead.
    assert slow < 0.3 < 0.7 < fast, (slow, fast)


async def test_the_outcome_names_the_endpoint_that_answered(servers: list[OpenAIServer]) -> None:
    a, b, flagship = servers
    endpoints = json.dumps({"endpoints": [{"base_url": a.base_url}, {"base_url": b.base_url}]})
    environ = {
        "TG_TEST_KEY": "sk-test-key",
        "TRIAGEGATE_MINI": endpoints,
        "TRIAGEGATE_MINI_BACKUP_BASE_URL": flagship.base_url,
        "TRIAGEGATE_FLAGSHIP_BASE_URL": flagship.base_url,
    }
    a.code_confidence = b.code_confidence = 0.95
    a.fault_rate, a.faults = 1.0, ("500",)
    async with triagegate.load(REPO / "tests" / "graphs" / "e2e_openai.yaml", environ=environ) as pipeline:
        outcome = await pipeline.run(triagegate.Ticket(text="I was charged twice this month."))
    assert (outcome.status, outcome.route) == ("ok", "mini")
    triage = outcome.nodes[0]
    assert triage.endpoint == f"mini@127.0.0.1:{b.port}"
    assert triage.requests >= 2  # the failed attempt at a is counted too


# --- 2,000 requests over three server processes ------------------------------------------------

WEIGHTS = (1, 2, 3)
COOLDOWN_S = 0.5
COOLDOWN_AFTER = 3
CONCURRENCY = 16
RATE = 400.0
"""Requests per second at most, so each phase lasts at least its share of 5 s on any machine."""
FAIL_AT, HEAL_AT, TOTAL = 700, 1400, 2000
SPREAD_TOLERANCE = 0.05
"""Largest allowed gap between an endpoint's share of the traffic and its share of the weight."""


@pytest.fixture(scope="module")
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        for _ in WEIGHTS:
            started.append(ServerProcess())
        yield started
    finally:
        for process in started:
            process.stop()


async def test_two_thousand_requests_one_endpoint_failing_mid_run(
    processes: list[ServerProcess], build: Build
) -> None:
    models = {
        "mini": {
            "backend": "openai",
            "model": "gpt-mini",
            "endpoints": [
                {"base_url": p.base_url, "weight": w} for p, w in zip(processes, WEIGHTS, strict=True)
            ],
            "cooldown_s": COOLDOWN_S,
            "cooldown_after": COOLDOWN_AFTER,
            "max_retries": 2,
            "timeout": 10,
            "options": dict(FAST),
        }
    }
    backend = build(models)
    assert isinstance(backend, BalancedBackend)
    names = [e.name for e in backend.endpoints]
    failing = processes[2]
    marks: dict[str, float] = {}

    def fail() -> None:
        failing.faults(fault_rate=1.0, faults=["500"])
        marks["fail"] = time.time()

    def heal() -> None:
        failing.faults(fault_rate=0.0)
        marks["heal"] = time.time()

    before = [p.stats()["count"] for p in processes]
    done = await run_paced(
        backend, TOTAL, rate=RATE, concurrency=CONCURRENCY, hooks={FAIL_AT: fail, HEAL_AT: heal}
    )
    stats = [p.stats() for p in processes]

    # No request the caller sent failed.
    assert len(done) == TOTAL
    assert [d.error for d in done if d.error] == []

    # Every attempt reached a server and was counted there.
    received = [s["count"] - b for s, b in zip(stats, before, strict=True)]
    assert sum(received) == sum(d.requests for d in done)

    # Before the fault, the traffic follows the weights.
    weight_shares = [w / sum(WEIGHTS) for w in WEIGHTS]
    first = shares([d.endpoint for d in done[:FAIL_AT]], names)
    assert all(abs(got - want) <= SPREAD_TOLERANCE for got, want in zip(first, weight_shares, strict=True)), (
        first
    )

    # Once it fails, the endpoint gets the requests in flight and those before its breaker
    # opens, all within one cool-down, then one probe per cool-down at most.
    arrivals = stats[2]["arrivals"]
    window = marks["heal"] - marks["fail"]
    burst = between(arrivals, marks["fail"], marks["fail"] + COOLDOWN_S)
    later = between(arrivals, marks["fail"] + COOLDOWN_S, marks["heal"])
    assert len(burst) <= CONCURRENCY + COOLDOWN_AFTER, len(burst)
    assert len(later) <= math.ceil(window / COOLDOWN_S), (len(later), window)
    assert len(burst) + len(later) < 0.2 * weight_shares[2] * (HEAL_AT - FAIL_AT)
    failing_phase = [d.endpoint for d in done[FAIL_AT:HEAL_AT]]
    assert names[2] not in failing_phase
    # The others share its traffic by their own weights.
    rest = shares(failing_phase, names[:2])
    assert abs(rest[0] - 1 / 3) <= SPREAD_TOLERANCE * 2, rest

    # Healed, it is probed within a cool-down and takes its share again.
    after = [d.endpoint for d in done[HEAL_AT:]]
    tail = shares(after[len(after) // 2 :], names)
    assert all(
        abs(got - want) <= SPREAD_TOLERANCE * 2 for got, want in zip(tail, weight_shares, strict=True)
    ), tail
