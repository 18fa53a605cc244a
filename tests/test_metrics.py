"""Prometheus metrics: right values, bounded labels, and correct across several workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SIM_KEY, sim_backend
from tests.servers import Server, start_gateway
from tests.workers import folded, multiproc_dir, replace_every_worker

PRICE = {
    "usd_per_million_input_tokens": 2.5,
    "usd_per_million_cached_input_tokens": 1.25,
    "usd_per_million_output_tokens": 10.0,
}


def config(sim: Server) -> dict[str, Any]:
    return {
        "backends": {"openai": sim_backend(sim, {"name": "gpt-4o", "price": PRICE}, {"name": "gpt-4o-mini"})},
        "routers": {"auto": {"local": "openai/gpt-4o-mini", "api": "openai/gpt-4o", "threshold": 0.5}},
    }


def samples(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    all_samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return sum(v for (n, ls), v in all_samples.items() if n == name and set(labels.items()) <= ls)


@pytest.fixture
def gw(tmp_path: Path, openai_sim: Server, request: pytest.FixtureRequest) -> Iterator[Server]:
    httpx.post(openai_sim.url + "/_sim/faults", json=[])
    server = start_gateway(
        tmp_path, config(openai_sim), workers=request.param, env={"SIM_OPENAI_KEY": SIM_KEY}
    )
    yield server
    server.stop()


@pytest.mark.parametrize("gw", [1, 2], indirect=True, ids=["1-worker", "2-workers"])
def test_counters_match_the_traffic(gw: Server, request: pytest.FixtureRequest) -> None:
    prompt_tokens = completion_tokens = local_in = local_out = 0
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as client:
        for i in range(12):
            hard = i % 3 == 0
            messages = [
                {
                    "role": "user",
                    "content": "Prove step by step and implement def f(): return 1 " * 8 if hard else "hi",
                }
            ]
            if i % 2:
                chunks = list(
                    client.chat.completions.create(
                        model="auto", messages=messages, stream=True, stream_options={"include_usage": True}
                    )
                )
                usage = chunks[-1].usage
            else:
                usage = client.chat.completions.create(model="auto", messages=messages).usage
            assert usage is not None
            if hard:
                prompt_tokens += usage.prompt_tokens
                completion_tokens += usage.completion_tokens
            else:
                local_in += usage.prompt_tokens
                local_out += usage.completion_tokens
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    if request.node.callspec.params["gw"] == 1:
        s = samples(gw)  # the scraped worker folds before it answers: everything is there at once
    else:
        s = folded(lambda: samples(gw), lambda s: value(s, "crossover_requests_total") == 13)
    assert value(s, "crossover_requests_total") == 13
    # The 404 never reached a backend: counted apart, under no route.
    assert value(s, "crossover_requests_total", route="none", status_class="4xx") == 1
    assert (
        value(
            s, "crossover_requests_total", route="api", backend="openai", model="gpt-4o", status_class="2xx"
        )
        == 4
    )
    assert value(s, "crossover_routing_decisions_total", router="auto", route="local", reason="score") == 8
    assert value(s, "crossover_tokens_total", route="api", kind="input") == prompt_tokens
    assert value(s, "crossover_tokens_total", route="api", kind="output") == completion_tokens
    expected_cost = prompt_tokens * 2.5e-6 + completion_tokens * 10e-6
    assert value(s, "crossover_cost_usd_total", route="api") == pytest.approx(expected_cost)
    # gpt-4o-mini has no price in this config: the shipped table's list price applies.
    assert value(s, "crossover_cost_usd_total", route="local") == pytest.approx(
        local_in * 0.15e-6 + local_out * 0.6e-6
    )
    # Every request is also priced on the baseline, the router's api model (gpt-4o) by default.
    all_in, all_out = prompt_tokens + local_in, completion_tokens + local_out
    assert value(s, "crossover_baseline_cost_usd_total") == pytest.approx(all_in * 2.5e-6 + all_out * 10e-6)
    assert value(s, "crossover_request_duration_seconds_count") == 12  # answered requests only
    assert value(s, "crossover_gateway_overhead_seconds_count", stream="true") == 6
    assert value(s, "crossover_time_to_first_token_seconds_count") == 6
    assert value(s, "crossover_classifier_score_count", router="auto") == 12
    assert value(s, "crossover_in_flight_requests") == 0
    # Overhead is a small part of each request: under 50 ms at the 99th percentile here, even on 2 cores.
    assert value(s, "crossover_gateway_overhead_seconds_bucket", le="0.05") == 12


def test_no_label_carries_a_user_string(tmp_path: Path, openai_sim: Server) -> None:
    server = start_gateway(tmp_path, config(openai_sim), env={"SIM_OPENAI_KEY": SIM_KEY})
    try:
        marker = "user-controlled-marker"
        for model in (marker, "gpt-4o"):
            httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": marker}]},
                headers={"x-crossover-route": marker, "user-agent": marker},
            )
        assert marker not in httpx.get(server.url + "/metrics").text
    finally:
        server.stop()


GPU_USD_PER_HOUR = 36.0  # a cent a second: the totals below are large next to float noise
HOUSEKEEPING_SECONDS = 5  # gateway/app.py adds each worker's idle GPU cost to its counter this often


def gpu_config(sim: Server) -> dict[str, Any]:
    free = {"usd_per_million_input_tokens": 0, "usd_per_million_output_tokens": 0}
    local = sim_backend(
        sim,
        {"name": "gpt-4o-mini", "price": free},  # only the GPU costs anything
        gpu_usd_per_hour=GPU_USD_PER_HOUR,
        circuit_breaker={"failures": 1, "cooldown_seconds": 600},
    )
    return {"backends": {"local": local}}


def post_slowly(server: Server, results: list[int]) -> threading.Thread:
    def call() -> None:
        try:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            results.append(
                httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).status_code
            )
        except httpx.TransportError:
            results.append(0)  # its worker was killed

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_gpu_cost_with_two_workers_adds_up_to_the_wall_time(tmp_path: Path, openai_sim: Server) -> None:
    """Busy cost charged to requests plus idle cost make the deployment's cost over the gateway's life,
    not a multiple of it: each of N workers meters its own requests at 1/N of the rate. (The two-worker
    run of test_counters_match_the_traffic has no GPU-priced backend, so it never saw the double charge.)"""
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"delay": 1.0}] * 6)
    server = start_gateway(tmp_path, gpu_config(openai_sim), workers=2, env={"SIM_OPENAI_KEY": SIM_KEY})
    try:
        statuses: list[int] = []
        for thread in [post_slowly(server, statuses) for _ in range(6)]:
            thread.join()
        assert statuses == [200] * 6
        time.sleep(3 * HOUSEKEEPING_SECONDS)  # and idle for a while
        s = samples(server)
        wall = time.time() - value(s, "crossover_start_time_seconds")
        charged = value(s, "crossover_cost_usd_total", backend="local") + value(
            s, "crossover_gpu_idle_cost_usd_total", backend="local"
        )
        per_second = GPU_USD_PER_HOUR / 3600
        # Never more than the wall time (each worker's meter starts after the gateway's start time); less
        # by at most one housekeeping interval of idle not yet added, plus the second worker's later start.
        assert charged <= per_second * wall
        assert charged >= per_second * (wall - 2 * HOUSEKEEPING_SECONDS)
    finally:
        httpx.post(openai_sim.url + "/_sim/faults", json=[])
        server.stop()


def test_gauges_forget_a_killed_worker(tmp_path: Path, openai_sim: Server) -> None:
    server = start_gateway(tmp_path, gpu_config(openai_sim), workers=2, env={"SIM_OPENAI_KEY": SIM_KEY})
    try:
        httpx.post(openai_sim.url + "/_sim/faults", json=[{"delay": 60}])
        held: list[int] = []
        thread = post_slowly(server, held)
        deadline = time.monotonic() + 10
        while value(samples(server), "crossover_in_flight_requests") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        httpx.post(openai_sim.url + "/_sim/faults", json=[{"status": 500}])
        failed: list[int] = []
        post_slowly(server, failed).join()
        assert failed == [502]  # one retryable failure: that worker's circuit is open
        s = samples(server)
        assert value(s, "crossover_in_flight_requests") == 1
        assert value(s, "crossover_circuit_open", backend="local") == 1
        # A worker killed with -9 loses what it wrote since its last fold: wait for the 5xx's.
        folded(
            lambda: samples(server), lambda s: value(s, "crossover_requests_total", status_class="5xx") == 1
        )

        replace_every_worker(server)
        metrics_dir = multiproc_dir(server)
        thread.join()
        assert held == [0]  # its worker died with it
        # The replacements hold no request and no open circuit; the dead workers' gauges are gone.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s = samples(server)
            if value(s, "crossover_in_flight_requests") == 0 == value(s, "crossover_circuit_open"):
                break
            time.sleep(0.2)
        assert value(s, "crossover_in_flight_requests") == 0
        assert value(s, "crossover_circuit_open", backend="local") == 0
        # Counters keep what the dead workers counted.
        assert value(s, "crossover_requests_total", status_class="5xx") == 1
    finally:
        httpx.post(openai_sim.url + "/_sim/faults", json=[])
        server.stop()
    assert metrics_dir.name.startswith("crossover-metrics-")
    assert not metrics_dir.exists()  # `crossover serve` made it, and removes it on the way out
