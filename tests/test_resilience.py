"""Circuit breakers: a backend that keeps failing is skipped for a cooldown, then tried again."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.breaker import CircuitBreaker
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


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, openai_sim: Server) -> Iterator[Server]:
    sim = {"kind": "openai_compatible", "base_url": openai_sim.url + "/v1", "api_key": "${SIM_OPENAI_KEY}"}
    config = {
        "backends": {
            "local": {
                **sim,
                "models": [{"name": "gpt-4o-mini"}],
                "circuit_breaker": {"failures": 2, "cooldown_seconds": 1.5},
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
