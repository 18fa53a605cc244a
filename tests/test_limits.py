"""Rate limits and budgets across two gateway processes sharing one real redis-server, the OpenAI
simulator as the backend, driven by the official SDKs."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis as redis_client
import yaml

from gateway.config import static_key_id
from tests.conftest import SIM_KEY, sim_backend
from tests.servers import Server, start_gateway
from tests.services import RedisServer, redis_server
from tests.test_reload import wait_for_reloads
from tests.test_shadow import metric

KEYS = {
    "K_RPM": "sk-gw-rpm-0123456789",  # 60 requests a minute
    "K_BUDGET": "sk-gw-budget-0123456789",  # team "spend": $1.00 a day
    "K_LOOSE": "sk-gw-loose-0123456789",  # team "loose": $1.00 a day, prompts it underestimates
    "K_TPM": "sk-gw-tpm-0123456789",  # 150 tokens a minute
    "K_ANTH": "sk-gw-anth-0123456789",  # 2 requests a minute, 1000 tokens a minute
    "K_FREE": "sk-gw-free-0123456789",  # no limits
    "K_STREAM": "sk-gw-stream-0123456789",  # 1000 tokens a minute, streamed
    "K_TINY": "sk-gw-tiny-0123456789",  # team "tiny": 1 cent a month
    # 500 tokens a minute each: a Responses request to a router, to a model, an embedding request
    "K_RESP": "sk-gw-resp-0123456789",
    "K_LONG": "sk-gw-long-0123456789",
    "K_EMBED": "sk-gw-embed-0123456789",
    "K_RELOAD": "sk-gw-reload-0123456789",  # 1000 tokens a minute, in flight over a reload
}
OUT = 0.05  # USD per output token: a few requests spend a dollar
IN = 0.05


def config(sim: Server, redis_url: str) -> dict[str, Any]:
    priced = {"usd_per_million_input_tokens": 0.0, "usd_per_million_output_tokens": OUT * 1e6}
    input_priced = {"usd_per_million_input_tokens": IN * 1e6, "usd_per_million_output_tokens": 0.0}
    return {
        "backends": {
            "openai": sim_backend(sim, {"name": "gpt-4o", "price": priced}),
            "prompted": sim_backend(sim, {"name": "gpt-4o-mini", "price": input_priced}),
            "embed": sim_backend(sim, {"name": "text-embedding-3-small"}),
        },
        "routers": {
            "auto": {"local": "prompted/gpt-4o-mini", "api": "openai/gpt-4o", "classifier": "heuristic"}
        },
        "server": {
            "api_keys": [f"${{{name}}}" for name in KEYS],
            "key_limits": [
                {"key": "${K_RPM}", "requests_per_minute": 60},
                {"key": "${K_BUDGET}", "team": "spend"},
                {"key": "${K_LOOSE}", "team": "loose"},
                {"key": "${K_TPM}", "tokens_per_minute": 150},
                {"key": "${K_ANTH}", "requests_per_minute": 2, "tokens_per_minute": 1000},
                {"key": "${K_STREAM}", "tokens_per_minute": 1000},
                {"key": "${K_TINY}", "team": "tiny"},
                {"key": "${K_RESP}", "tokens_per_minute": 500},
                {"key": "${K_LONG}", "tokens_per_minute": 500},
                {"key": "${K_EMBED}", "tokens_per_minute": 500},
                {"key": "${K_RELOAD}", "tokens_per_minute": 1000},
            ],
            "teams": {
                "spend": {"usd_per_day": 1.0},
                "loose": {"usd_per_day": 1.0},
                "tiny": {"usd_per_month": 0.01},
            },
            "watch_config": False,
        },
        "redis": {"url": redis_url, "key_prefix": "lim"},
    }


@contextmanager
def two_gateways(tmp: Path, sim: Server, redis: RedisServer) -> Iterator[tuple[Server, Server]]:
    """Two gateway processes (as two replicas would be) on one Redis."""
    cfg = config(sim, redis.url)
    env = {"SIM_OPENAI_KEY": SIM_KEY, **KEYS}
    first = start_gateway(tmp, cfg, env=env, name="gw1")
    try:
        second = start_gateway(tmp, cfg, env=env, name="gw2")
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, openai_sim: Server, shared_redis: RedisServer
) -> Iterator[tuple[Server, Server]]:
    """Shared by the tests that use keys of their own and leave Redis up."""
    with two_gateways(tmp_path_factory.mktemp("limits"), openai_sim, shared_redis) as gateways:
        yield gateways


def aclient(gw: Server, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEYS[key], max_retries=0)


async def _burst(gws: tuple[Server, Server], key: str, n: int, **kwargs: Any) -> list[Any]:
    clients = [aclient(gw, key) for gw in gws]
    try:
        calls = [
            clients[i % 2].chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"hello {i}"}], **kwargs
            )
            for i in range(n)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        for c in clients:
            await c.close()


def _checks(pair: tuple[Server, Server], result: str) -> float:
    return sum(metric(gw, "crossover_limit_checks_total", kind="rate", result=result) for gw in pair)


def test_a_60_per_minute_key_gets_60_in_total_across_two_gateways(pair: tuple[Server, Server]) -> None:
    limited_before, allowed_before = _checks(pair, "limited"), _checks(pair, "allowed")
    results = asyncio.run(_burst(pair, "K_RPM", 200, max_tokens=8))
    answered = [r for r in results if not isinstance(r, BaseException)]
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    # Admitted: answered, or (rarely, on a loaded machine) failed upstream after admission.
    failed = [r for r in results if isinstance(r, openai.InternalServerError)]
    seen = Counter(f"{type(r).__name__}: {getattr(r, 'message', '')[:80]}" for r in results)
    assert len(answered) + len(failed) == 60 and len(limited) == 140, seen
    assert len(failed) <= 2, seen
    assert {r.headers["x-crossover-backend"] for r in answered} == {"openai"}
    # Every answer says what is left; between them they counted down 59..0 once each.
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in answered) == list(range(60))
    assert {r.headers["x-ratelimit-limit-requests"] for r in answered} == {"60"}
    refused = limited[0]
    assert refused.status_code == 429 and refused.code == "rate_limit_exceeded" and refused.type == "requests"
    assert "Limit 60" in refused.message
    h = refused.response.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("60", "0")
    assert 1 <= int(h["retry-after"]) <= 60
    assert h["x-ratelimit-reset-requests"].endswith("s")  # OpenAI's "59.9s", "1m0s"
    assert "x-ratelimit-limit-tokens" not in h  # this key has no token limit
    assert _checks(pair, "limited") - limited_before == 140
    assert _checks(pair, "allowed") - allowed_before == 60


def _spent(redis: RedisServer, team: str) -> float:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    value = redis_client.Redis.from_url(redis.url).get(f"lim:spent:team:{team}:day:{day}")
    return float(value or 0)


def test_a_budget_under_concurrent_requests_is_not_overrun(
    pair: tuple[Server, Server], shared_redis: RedisServer
) -> None:
    # Each request reserves 5 output tokens ($0.25) and uses 3 ("echo: hello N", $0.15):
    # the reservation covers the cost, so 20 at once across two gateways cannot overrun $1.00.
    results = asyncio.run(_burst(pair, "K_BUDGET", 20, max_tokens=5))
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(answered) + len(refused) == 20 and 4 <= len(answered) < 20
    assert {(e.code, e.type) for e in refused} == {("insufficient_quota", "insufficient_quota")}
    assert refused[0].response.headers["x-should-retry"] == "false"
    cost = sum(r.parse().usage.completion_tokens * OUT for r in answered)
    time.sleep(0.3)  # the last corrections reach Redis after the answers
    spent = _spent(shared_redis, "spend")
    assert spent == pytest.approx(cost) and spent <= 1.0 + 1e-9
    # Four reservations fill the budget; a request that came after some answers were settled may fit.


def test_a_budget_overrun_is_bounded_by_the_requests_in_flight(
    pair: tuple[Server, Server], shared_redis: RedisServer
) -> None:
    # Here the estimate falls short: "hello N" is 2 tokens by its characters, 6 by the simulator's count
    # ($0.10 reserved, $0.30 used). Only the requests in flight when the budget ran out can overrun it.
    async def burst() -> list[Any]:
        clients = [aclient(gw, "K_LOOSE") for gw in pair]
        calls = [
            clients[i % 2].chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=5
            )
            for i in range(20)
        ]
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            for c in clients:
                await c.close()

    results = asyncio.run(burst())
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert any(isinstance(r, openai.RateLimitError) and r.code == "insufficient_quota" for r in results)
    costs = [r.usage.prompt_tokens * IN for r in answered]
    time.sleep(0.3)
    spent = _spent(shared_redis, "loose")
    assert spent == pytest.approx(sum(costs))
    assert spent > 1.0  # overrun: the estimates were short
    # Bound: admitted while the reservations fit, so at most $1.00 of reservations, each short by
    # (real - reserved); the overrun is at most what the admitted requests cost beyond their reserve.
    assert spent - 1.0 <= sum(c - 2 * IN for c in costs) + 1e-9


def test_tokens_are_estimated_before_and_corrected_after(pair: tuple[Server, Server]) -> None:
    # 150 tokens a minute; each request is counted as 1 ("hi N" by its characters) + 60 (max_tokens)
    # before, and as 9 after (the simulator's usage).
    client = openai.OpenAI(base_url=pair[0].url + "/v1", api_key=KEYS["K_TPM"], max_retries=0)
    seen = []
    for i in range(6):  # 6 x 61 estimated tokens would not fit; 6 x 9 real ones do
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=60
        )
        seen.append(int(raw.headers["x-ratelimit-remaining-tokens"]))
        assert raw.headers["x-ratelimit-limit-tokens"] == "150"
        time.sleep(0.1)  # the correction follows the answer
    usage = raw.parse().usage
    assert usage is not None
    # The last count: five corrected requests and this one's estimate.
    assert seen[-1] == 150 - 5 * usage.total_tokens - 61
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=1000
        )
    assert refused.value.type == "tokens" and refused.value.code == "rate_limit_exceeded"
    assert "Request too large" in refused.value.message and "tokens per min (TPM)" in refused.value.message
    assert refused.value.response.headers["x-should-retry"] == "false"  # it would never fit


def test_a_streamed_answer_is_corrected_by_its_usage(pair: tuple[Server, Server]) -> None:
    client = openai.OpenAI(base_url=pair[1].url + "/v1", api_key=KEYS["K_STREAM"], max_retries=0)
    with client:
        ask: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi 0"}]}
        with client.chat.completions.with_streaming_response.create(
            **ask, max_tokens=100, stream=True, stream_options={"include_usage": True}
        ) as streamed:
            assert streamed.headers["x-ratelimit-remaining-tokens"] == str(1000 - 101)  # 1 + 100 estimated
            chunks = list(streamed.parse())
        usage = chunks[-1].usage
        assert usage is not None
        time.sleep(0.1)
        after = client.chat.completions.with_raw_response.create(**ask, max_tokens=100)
        assert after.headers["x-ratelimit-remaining-tokens"] == str(1000 - usage.total_tokens - 101)


def test_a_responses_request_counts_its_input_and_max_output_tokens(pair: tuple[Server, Server]) -> None:
    """Measured as its door reads it, routed or not: not as `default_max_tokens` (1024, which would
    never fit in 500) and a prompt of nothing."""
    with openai.OpenAI(base_url=pair[0].url + "/v1", api_key=KEYS["K_RESP"], max_retries=0) as client:
        routed = client.responses.with_raw_response.create(model="auto", input="hi", max_output_tokens=16)
        assert routed.headers["x-ratelimit-remaining-tokens"] == str(500 - 1 - 16)
    with openai.OpenAI(base_url=pair[1].url + "/v1", api_key=KEYS["K_LONG"], max_retries=0) as client:
        direct = client.responses.with_raw_response.create(
            model="gpt-4o", instructions="Be brief.", input="x" * 391, max_output_tokens=16
        )
        assert direct.headers["x-ratelimit-remaining-tokens"] == str(500 - 100 - 16)
        with pytest.raises(openai.RateLimitError) as refused:  # 100,000 characters: 25,000 tokens
            client.responses.create(model="gpt-4o", input="y" * 100_000, max_output_tokens=16)
        assert "Requested 25016" in refused.value.message


def test_an_embedding_request_counts_its_input_and_no_output(pair: tuple[Server, Server]) -> None:
    with openai.OpenAI(base_url=pair[0].url + "/v1", api_key=KEYS["K_EMBED"], max_retries=0) as client:
        texts = client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=["a" * 40, "b" * 20]
        )
        assert texts.headers["x-ratelimit-remaining-tokens"] == str(500 - 15)
        usage = texts.parse().usage
        time.sleep(0.1)  # the correction follows the answer
        ids = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=[[1, 2, 3]])
        assert ids.headers["x-ratelimit-remaining-tokens"] == str(500 - usage.total_tokens - 3)


def test_a_request_in_flight_over_a_reload_settles_where_it_was_counted(
    tmp_path: Path, openai_sim: Server, redis: RedisServer
) -> None:
    """A reload that turns Redis off while a request waits on its answer: the request's real tokens
    replace its estimate in Redis, which counted it, not in the new limiter's store."""
    cfg = config(openai_sim, redis.url)
    gw = start_gateway(tmp_path, cfg, env={"SIM_OPENAI_KEY": SIM_KEY, **KEYS})
    total = f"lim:limit:key:{static_key_id(KEYS['K_RELOAD'])}:tokens:total"
    counted = redis_client.Redis.from_url(redis.url)
    try:
        httpx.post(openai_sim.url + "/_sim/faults", json=[{"delay": 3}])
        with (
            openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["K_RELOAD"], max_retries=0) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            ask = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi 0"}], "max_tokens": 100}
            pending = pool.submit(lambda: client.chat.completions.create(**ask))
            deadline = time.monotonic() + 10
            while counted.get(total) is None:  # admitted: its estimate is counted
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert int(counted.get(total) or 0) == 1 + 100
            (tmp_path / "gateway.yaml").write_text(
                yaml.safe_dump({k: v for k, v in cfg.items() if k != "redis"})
            )
            gw.process.send_signal(signal.SIGHUP)
            wait_for_reloads(gw, "applied", 1)
            usage = pending.result().usage
        assert usage is not None
        deadline = time.monotonic() + 5
        while int(counted.get(total) or 0) != usage.total_tokens and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(counted.get(total) or 0) == usage.total_tokens
    finally:
        gw.stop()


def test_anthropic_clients_get_anthropic_shapes_and_headers(pair: tuple[Server, Server]) -> None:
    client = anthropic.Anthropic(base_url=pair[1].url, api_key=KEYS["K_ANTH"], max_retries=0)
    ask = {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    first = client.messages.with_raw_response.create(**ask)  # type: ignore[call-overload]
    h = first.headers
    assert (h["anthropic-ratelimit-requests-limit"], h["anthropic-ratelimit-requests-remaining"]) == (
        "2",
        "1",
    )
    assert h["anthropic-ratelimit-tokens-limit"] == "1000"
    assert datetime.fromisoformat(h["anthropic-ratelimit-requests-reset"]).timestamp() > time.time()
    assert "x-ratelimit-limit-requests" not in h
    client.messages.create(**ask)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(**ask)
    err = refused.value
    assert err.status_code == 429 and err.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": err.body["error"]["message"]},
    }  # type: ignore[index]
    assert err.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert int(err.response.headers["retry-after"]) >= 1


def test_anthropic_clients_over_budget_are_told_not_to_retry(pair: tuple[Server, Server]) -> None:
    client = anthropic.Anthropic(base_url=pair[0].url, api_key=KEYS["K_TINY"], max_retries=0)
    with client, pytest.raises(anthropic.RateLimitError) as refused:  # 16 tokens reserve $0.80
        client.messages.create(model="gpt-4o", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    err = refused.value
    assert err.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "$0.01 per month" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert int(err.response.headers["retry-after"]) <= 31 * 86_400


def test_an_unlimited_key_gets_no_limit_headers(pair: tuple[Server, Server]) -> None:
    client = openai.OpenAI(base_url=pair[0].url + "/v1", api_key=KEYS["K_FREE"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert not [h for h in raw.headers if "ratelimit" in h]


def test_redis_down_rate_limits_open_budgets_closed(
    tmp_path: Path, openai_sim: Server, redis: RedisServer
) -> None:
    with two_gateways(tmp_path, openai_sim, redis) as (gw, _):
        _outage(gw, redis)


def _outage(gw: Server, redis: RedisServer) -> None:
    ok = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["K_RPM"], max_retries=0)
    ok.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    redis.stop()
    raw = ok.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.http_response.status_code == 200
    assert "x-ratelimit-remaining-requests" not in raw.headers  # admitted unchecked: nothing to say
    budget = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["K_BUDGET"], max_retries=0)
    with pytest.raises(openai.InternalServerError) as refused:
        budget.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    assert refused.value.status_code == 503 and refused.value.code == "limits_unavailable"
    assert metric(gw, "crossover_limit_checks_total", kind="rate", result="open") == 1
    assert metric(gw, "crossover_limit_checks_total", kind="budget", result="closed") == 1
    assert metric(gw, "crossover_redis_up") == 0
    assert gw.log_text().count("redis is unreachable") == 1
    for key in KEYS.values():
        assert key not in gw.log_text()
    assert KEYS["K_RPM"] not in httpx.get(gw.url + "/metrics").text
    assert static_key_id(KEYS["K_RPM"]) not in httpx.get(gw.url + "/metrics").text
