"""Retries, spill-over and circuit breakers, against the OpenAI simulator (both targets on it, so the
route shows in the headers and the model name)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.breaker import CircuitBreaker
from gateway.config import Retries, Settings, build, parse
from gateway.metrics import Metrics
from gateway.resilience import retry_delay as _retry_delay
from gateway.runtime import Runtime
from gateway.state import GatewayState
from providers.base import UpstreamError
from tests.conftest import SIM_KEY
from tests.servers import Server, start_gateway


def test_breaker_opens_after_a_streak_and_lets_one_trial_through_per_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=lambda: now[0])
    breaker.record(False)
    breaker.record(False)
    breaker.record(True)  # a success breaks the streak
    breaker.record(False)
    breaker.record(False)
    assert breaker.allow() and not breaker.open
    breaker.record(False)
    assert breaker.open and not breaker.allow()
    now[0] = 4.0
    assert not breaker.allow() and breaker.retry_after() == pytest.approx(6.0)
    now[0] = 10.0
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one per cooldown
    breaker.record(False)  # the trial failed: open for another cooldown
    now[0] = 15.0
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.record(True)
    assert not breaker.open and breaker.allow() and breaker.retry_after() == 0.0


def test_retry_delays_back_off_with_jitter_and_take_only_a_backends_own_retry_after() -> None:
    retries = Retries(attempts=3, backoff=0.2, max_wait=5.0)
    failed = UpstreamError(503, "overloaded", code="backend_overloaded", retry_after=1.0, retryable=True)
    delays = [_retry_delay(retries, attempt, failed) for attempt in range(4)]
    assert 0.1 <= delays[0] <= 0.2 and 0.2 <= delays[1] <= 0.4 and 0.4 <= delays[2] <= 0.8  # type: ignore[operator]
    assert delays[3] is None  # out of attempts; the gateway's own 1 s hint was not used
    asked = UpstreamError(429, "slow down", retry_after=3.0, retryable=True, backend_asked=True)
    assert _retry_delay(retries, 0, asked) == 3.0
    too_long = UpstreamError(429, "slow down", retry_after=30.0, retryable=True, backend_asked=True)
    assert _retry_delay(retries, 0, too_long) is None
    for code in ("upstream_timeout", "upstream_auth_failed", "circuit_open", "backend_unavailable"):
        assert _retry_delay(retries, 0, UpstreamError(502, "x", code=code, retryable=True)) is None
    assert _retry_delay(retries, 0, UpstreamError(400, "bad request")) is None


async def test_a_reload_keeps_a_circuit_unless_its_backend_moved() -> None:
    def settings(url: str, breaker: bool = True) -> Settings:
        backend: dict[str, Any] = {"kind": "openai_compatible", "base_url": url, "models": [{"name": "m"}]}
        if breaker:
            backend["circuit_breaker"] = {"failures": 1, "cooldown_seconds": 60}
        return build(parse({"backends": {"b": backend}}), {})

    configs = iter([settings("http://a/v1"), settings("http://b/v1"), settings("http://b/v1", breaker=False)])
    state = GatewayState(Runtime(settings("http://a/v1")), Metrics(), loader=lambda: next(configs))
    state.breakers["b"].record(False)
    assert state.breakers["b"].open
    assert await state.reload() and state.breakers["b"].open  # same backend: still failing
    assert await state.reload() and not state.breakers["b"].open  # moved: a fresh circuit
    state.breakers["b"].record(False)
    assert await state.reload() and "b" not in state.breakers
    assert 'crossover_circuit_open{backend="b"} 0.0' in state.metrics.render().decode()
    await state.close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, openai_sim: Server) -> Iterator[Server]:
    sim = {"kind": "openai_compatible", "base_url": openai_sim.url + "/v1", "api_key": "${SIM_OPENAI_KEY}"}
    config = {
        "backends": {
            "local": {
                **sim,
                "models": [{"name": "gpt-4o-mini"}],
                "circuit_breaker": {"failures": 2, "cooldown_seconds": 1.5},
                "max_in_flight": 1,
            },
            "openai": {
                **sim,
                "models": [{"name": "gpt-4o"}],
                "retries": {"attempts": 2, "backoff_seconds": 0.05, "max_wait_seconds": 2},
            },
        },
        "routers": {"auto": {"local": "local", "api": "openai", "classifier": "heuristic", "threshold": 0.5}},
    }
    server = start_gateway(tmp_path_factory.mktemp("guarded"), config, env={"SIM_OPENAI_KEY": SIM_KEY})
    yield server
    server.stop()


def sim_models(openai_sim: Server) -> list[str]:
    return [body["model"] for body in httpx.get(openai_sim.url + "/_sim/requests").json()]


def fault(sim: Server, faults: list[dict[str, Any]]) -> None:
    httpx.post(sim.url + "/_sim/faults", json=faults)


def circuit(server: Server) -> str:
    found = re.search(
        r'crossover_circuit_open\{backend="local"\} (\S+)', httpx.get(server.url + "/metrics").text
    )
    assert found is not None
    return found.group(1)


def test_a_failing_backend_is_skipped_until_its_cooldown_ends(guarded: Server, openai_sim: Server) -> None:
    hi: Any = [{"role": "user", "content": "hi"}]
    httpx.delete(openai_sim.url + "/_sim/requests")
    try:
        with openai.OpenAI(base_url=guarded.url + "/v1", api_key="x", max_retries=0) as client:
            assert circuit(guarded) == "0.0"
            fault(openai_sim, [{"status": 503}, {}, {"status": 503}])
            for _ in range(2):  # local fails, the API answers
                raw = client.chat.completions.with_raw_response.create(model="auto", messages=hi)
                assert (raw.headers["x-crossover-route"], raw.headers["x-crossover-fallback-from"]) == (
                    "api",
                    "local",
                )
            assert sim_models(openai_sim) == ["gpt-4o-mini", "gpt-4o"] * 2
            assert circuit(guarded) == "1.0"
            # Open: local is not even tried.
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=hi)
            assert (raw.headers["x-crossover-route"], raw.headers["x-crossover-fallback-from"]) == (
                "api",
                "local",
            )
            assert sim_models(openai_sim)[4:] == ["gpt-4o"]
            with pytest.raises(openai.InternalServerError) as info:  # a named model has nowhere else to go
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
            assert info.value.status_code == 503 and info.value.code == "circuit_open"
            assert 0 < int(info.value.response.headers["retry-after"]) <= 2
            assert len(sim_models(openai_sim)) == 5
            time.sleep(1.6)
            # The cooldown is over: one trial, which succeeds and closes the circuit.
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=hi)
            assert (
                raw.headers["x-crossover-route"] == "local" and "x-crossover-fallback-from" not in raw.headers
            )
            assert circuit(guarded) == "0.0"
        metrics = httpx.get(guarded.url + "/metrics").text
        assert 'crossover_upstream_errors_total{backend="local",code="circuit_open"} 2.0' in metrics
    finally:
        fault(openai_sim, [])


def test_retries_back_off_and_honour_a_short_retry_after(guarded: Server, openai_sim: Server) -> None:
    hi: Any = [{"role": "user", "content": "hi"}]
    httpx.delete(openai_sim.url + "/_sim/requests")
    try:
        with openai.OpenAI(base_url=guarded.url + "/v1", api_key="x", max_retries=0) as client:
            fault(openai_sim, [{"status": 503}, {"status": 500}])
            reply = client.chat.completions.create(model="gpt-4o", messages=hi)  # third time lucky
            assert reply.choices[0].message.content and len(sim_models(openai_sim)) == 3
            fault(openai_sim, [{"status": 429, "retry_after": 1}])
            started = time.monotonic()
            client.chat.completions.create(model="gpt-4o", messages=hi)
            assert time.monotonic() - started >= 1.0  # waited as the backend asked
            # Asked to wait longer than max_wait_seconds: no retry, the client gets the 429 at once.
            fault(openai_sim, [{"status": 429, "retry_after": 30}])
            started = time.monotonic()
            with pytest.raises(openai.RateLimitError) as info:
                client.chat.completions.create(model="gpt-4o", messages=hi)
            assert time.monotonic() - started < 1.0 and info.value.response.headers["retry-after"] == "30"
            # Out of attempts: three failures, then the error.
            fault(openai_sim, [{"status": 503}] * 3)
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="gpt-4o", messages=hi)
            assert len(sim_models(openai_sim)) == 3 + 2 + 1 + 3
        metrics = httpx.get(guarded.url + "/metrics").text
        assert 'crossover_retries_total{backend="openai"} 5.0' in metrics  # 2 + 1 + 0 + 2
    finally:
        fault(openai_sim, [])


def test_spill_over_frees_the_slot_on_every_way_out(guarded: Server, openai_sim: Server) -> None:
    hi: Any = [{"role": "user", "content": "hi"}]

    def route() -> str:
        return str(ask(guarded, "auto").headers["x-crossover-route"])

    try:
        with openai.OpenAI(base_url=guarded.url + "/v1", api_key="x", max_retries=0) as client:
            fault(openai_sim, [{"delay": 1.5}])
            slow = threading.Thread(
                target=lambda: client.chat.completions.create(model="gpt-4o-mini", messages=hi)
            )
            slow.start()
            time.sleep(0.5)  # the slow call holds local's only slot
            spilled = ask(guarded, "auto")
            assert (spilled.headers["x-crossover-route"], spilled.headers["x-crossover-backend"]) == (
                "api",
                "openai",
            )
            slow.join()
            assert route() == "local"
            # A refused call, and an answer the gateway cannot translate for an Anthropic client,
            # both give the slot back: the next request is not spilled.
            fault(openai_sim, [{"status": 400}])
            with pytest.raises(openai.BadRequestError):
                client.chat.completions.create(model="gpt-4o-mini", messages=hi)
            assert route() == "local"
            fault(openai_sim, [{"body": {"choices": [None]}}])
            garbled = httpx.post(
                guarded.url + "/v1/messages",
                json={"model": "gpt-4o-mini", "max_tokens": 8, "messages": hi},
                headers={"anthropic-version": "2023-06-01"},
            )
            assert garbled.status_code == 502, garbled.text
            assert garbled.json()["error"]["type"] == "api_error" and "Traceback" not in garbled.text
            assert route() == "local"
    finally:
        fault(openai_sim, [])


def test_a_failure_names_the_backend_tried_last_and_counts_under_its_model(
    guarded: Server, openai_sim: Server
) -> None:
    hi: Any = [{"role": "user", "content": "hi"}]
    try:
        # Sent local, which fails; the fallback fails too, three times with its retries.
        fault(openai_sim, [{"status": 500}] * 4)
        both = httpx.post(
            guarded.url + "/v1/chat/completions",
            json={"model": "auto", "messages": hi},
            headers={"x-crossover-route": "local"},
        )
        assert both.status_code == 502, both.text
        assert (both.headers["x-crossover-route"], both.headers["x-crossover-backend"]) == ("api", "openai")
        # A refusal of a routed request is counted with the model its target stands for, as a success is.
        fault(openai_sim, [{"status": 400}])
        refused = httpx.post(
            guarded.url + "/v1/chat/completions",
            json={"model": "auto", "messages": hi},
            headers={"x-crossover-route": "local"},
        )
        assert refused.status_code == 400
        metrics = httpx.get(guarded.url + "/metrics").text
        assert (
            'crossover_requests_total{backend="local",model="gpt-4o-mini",route="local",status_class="4xx"}'
            in metrics
        )
        assert (
            'crossover_requests_total{backend="openai",model="gpt-4o",route="api",status_class="5xx"}'
            in metrics
        )
        assert 'model=""' not in metrics
    finally:
        fault(openai_sim, [])


def ask(server: Server, model: str) -> httpx.Response:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text
    return response
