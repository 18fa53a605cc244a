"""Shared state across workers and gateway processes through a real redis-server: circuits, spill-over
counts, the held API share and GPU cost metering, and a Redis outage under load. Two gateways (or one
with two workers) on loopback, the OpenAI simulator as every backend."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_client

from classifier import extract_features, load_classifier
from gateway.online_threshold import OnlineThreshold
from tests.conftest import SIM_KEY, sim_backend
from tests.servers import Server, start_gateway, start_openai_sim, until
from tests.services import RedisServer
from tests.test_metrics import samples, value
from tests.test_rules import MIXED_WORDS

ENV = {"SIM_OPENAI_KEY": SIM_KEY}
GPU_USD_PER_HOUR = 36.0  # a cent a second
FREE = {"usd_per_million_input_tokens": 0, "usd_per_million_output_tokens": 0}
SYNC_SECONDS = 0.5  # gateway/shared.py


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Server]:
    """A simulator of this test's own: its scripted faults reach only this test's requests."""
    server = start_openai_sim(tmp_path, SIM_KEY)
    yield server
    server.stop()


@contextmanager
def gateways(
    tmp_path: Path, config: dict[str, Any], count: int = 2, workers: int = 1
) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for i in range(count):
            started.append(start_gateway(tmp_path, config, workers=workers, env=ENV, name=f"gateway{i}"))
        yield started
    finally:
        for server in started:
            server.stop()


def chat(server: Server, model: str, content: str = "hi", **headers: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def fault(sim: Server, faults: list[dict[str, Any]]) -> None:
    httpx.post(sim.url + "/_sim/faults", json=faults)


def test_a_circuit_opened_by_one_gateway_is_open_in_the_other(
    tmp_path: Path, sim: Server, redis: RedisServer
) -> None:
    local = sim_backend(
        sim, {"name": "gpt-4o-mini"}, circuit_breaker={"failures": 1, "cooldown_seconds": 600}
    )
    config = {"redis": {"url": redis.url}, "backends": {"local": local}}
    with gateways(tmp_path, config) as (first, second):
        assert chat(second, "gpt-4o-mini").status_code == 200
        fault(sim, [{"status": 500}])
        assert chat(first, "gpt-4o-mini").status_code == 502
        assert until(lambda: value(samples(second), "crossover_circuit_open", backend="local") == 1, 5.0)
        called = len(httpx.get(sim.url + "/_sim/requests").json())
        refused = chat(second, "gpt-4o-mini")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "circuit_open"
        assert len(httpx.get(sim.url + "/_sim/requests").json()) == called  # never reached the backend


def test_max_in_flight_counts_the_requests_of_every_gateway(
    tmp_path: Path, sim: Server, redis: RedisServer
) -> None:
    (tmp_path / "api").mkdir()
    api_sim = start_openai_sim(tmp_path / "api", SIM_KEY)
    try:
        config = {
            "redis": {"url": redis.url},
            "backends": {
                "local": sim_backend(sim, {"name": "gpt-4o-mini"}, max_in_flight=2),
                "api": sim_backend(api_sim, {"name": "gpt-4o"}),
            },
            # Every scored request is local (no score reaches 1.01) unless the local backend is full.
            "routers": {
                "auto": {"local": "local", "api": "api", "classifier": "heuristic", "threshold": 1.0}
            },
        }
        with gateways(tmp_path, config) as (first, second):
            assert chat(second, "auto").headers["x-crossover-route"] == "local"
            fault(sim, [{"delay": 4}, {"delay": 4}])
            held = [threading.Thread(target=chat, args=(first, "auto")) for _ in range(2)]
            for thread in held:
                thread.start()
            assert until(lambda: value(samples(first), "crossover_in_flight_requests") == 2, 5.0)
            time.sleep(2 * SYNC_SECONDS)  # the second gateway has heard of them
            spilled = chat(second, "auto", **{"x-crossover-explain": "true"})
            assert spilled.headers["x-crossover-route"] == "api"
            assert '"reason":"spill"' in spilled.headers["x-crossover-explain"]
            for thread in held:
                thread.join()
            time.sleep(2 * SYNC_SECONDS)
            assert chat(second, "auto").headers["x-crossover-route"] == "local"  # the slots are free again
    finally:
        api_sim.stop()


def charged(servers: list[Server]) -> tuple[float, float]:
    """The GPU cost the gateways charged (requests and idle) and the wall time since the first started."""
    taken = [samples(server) for server in servers]
    now = time.time()
    total = sum(
        value(s, "crossover_cost_usd_total", backend="local")
        + value(s, "crossover_gpu_idle_cost_usd_total", backend="local")
        for s in taken
    )
    return total, now - min(value(s, "crossover_start_time_seconds") for s in taken)


def gpu_config(sim: Server, redis: RedisServer) -> dict[str, Any]:
    local = sim_backend(sim, {"name": "gpt-4o-mini", "price": FREE}, gpu_usd_per_hour=GPU_USD_PER_HOUR)
    return {"redis": {"url": redis.url}, "backends": {"local": local}}


def run_slow_requests(servers: list[Server], sim: Server, per_server: int) -> None:
    fault(sim, [{"delay": 1.0}] * per_server * len(servers))
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda s=server: statuses.append(chat(s, "gpt-4o-mini").status_code))
        for server in servers
        for _ in range(per_server)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * len(threads)


@pytest.mark.parametrize("processes", ["two workers", "two gateways"])
def test_gpu_cost_is_metered_once_whatever_the_processes(
    tmp_path: Path, sim: Server, redis: RedisServer, processes: str
) -> None:
    """Busy cost charged to requests plus idle cost is the deployment's rate times the wall time, once:
    not once per worker or gateway (without Redis, two gateways would each charge the whole rate)."""
    count, workers = (1, 2) if processes == "two workers" else (2, 1)
    with gateways(tmp_path, gpu_config(sim, redis), count=count, workers=workers) as servers:
        targets = servers * 2 if count == 1 else servers  # one gateway: both of its workers serve
        run_slow_requests(targets, sim, per_server=3)
        time.sleep(8)
        busy = sum(value(samples(s), "crossover_cost_usd_total", backend="local") for s in servers)
        total, wall = charged(servers)
    per_second = GPU_USD_PER_HOUR / 3600
    assert busy > 0.9 * per_second  # requests were charged their busy time (about a second of it)
    assert total == pytest.approx(per_second * wall, rel=0.02)


PACE_PER_SECOND = 250


def test_the_api_share_holds_across_both_gateways(tmp_path: Path, sim: Server, redis: RedisServer) -> None:
    """The harder half of the traffic reaches one gateway, the easier the other: with one shared window
    both use one threshold, so the share holds overall and the API gets the hard requests (each gateway
    holding 30% of its own traffic would send the easy gateway's easiest to the API). The reference is
    one process holding the share over the same requests in the same order: a threshold learnt from
    the last 1,000 requests meets the next ones with some sampling error of its own."""
    config = {
        "redis": {"url": redis.url},
        "backends": {
            "local": sim_backend(sim, {"name": "gpt-4o-mini"}),
            "api": sim_backend(sim, {"name": "gpt-4o"}),
        },
        "routers": {
            "share": {
                "local": "local",
                "api": "api",
                "classifier": "heuristic",
                "threshold": 0.5,
                "target_api_share": 0.3,
                "share_window": 1000,
            }
        },
    }
    rng = random.Random(8)
    prompts = [" ".join(rng.choice(MIXED_WORDS) for _ in range(rng.randint(1, 80))) for _ in range(2000)]
    heuristic = load_classifier("heuristic")
    score = {
        p: heuristic.score(extract_features({"messages": [{"role": "user", "content": p}]})) for p in prompts
    }
    ranked = sorted(prompts, key=score.__getitem__)
    easy, hard = ranked[: len(ranked) // 2], ranked[len(ranked) // 2 :]
    rng.shuffle(easy)
    rng.shuffle(hard)
    in_turns = [text for pair in zip(easy, hard, strict=True) for text in pair]
    routes: dict[str, list[str]] = {"easy": [], "hard": []}
    with gateways(tmp_path, config) as servers, httpx.Client(timeout=30) as client:
        # In turns, so both gateways' requests arrive at the same rate through the whole run; paced at
        # 250 a second, so the run (8 s) is long against the shared window's lag (it learns requests
        # 0.5-1 s late): unpaced, a faster gateway made the run 3 s, and a third of it went by a stale
        # threshold (a share of 0.35-0.38).
        started = time.monotonic()
        for i, text in enumerate(in_turns):
            time.sleep(max(0.0, started + i / PACE_PER_SECOND - time.monotonic()))
            body = {"model": "share", "messages": [{"role": "user", "content": text}]}
            answer = client.post(servers[i % 2].url + "/v1/chat/completions", json=body)
            routes["easy" if i % 2 == 0 else "hard"].append(answer.headers["x-crossover-route"])
    one = OnlineThreshold(0.3, window=1000, initial=0.5)
    alone = []
    for text in in_turns:
        alone.append(score[text] >= one.threshold)
        one.observe(score[text])
    # The last 1,000 requests, after the first 1,000 filled the window.
    share = (routes["easy"][500:] + routes["hard"][500:]).count("api") / 1000
    assert share == pytest.approx(0.3, abs=0.03)
    # The shared threshold counts requests seen over 1 s ago: how many that is depends on the machine's
    # speed, so it may trail one process's by up to the three points (0.29 against 0.306 seen).
    assert share == pytest.approx(sum(alone[1000:]) / 1000, abs=0.03)
    assert routes["hard"][500:].count("api") / 500 > 0.5
    assert routes["easy"][500:].count("api") / 500 < 0.1


def test_a_redis_outage_under_load_fails_no_request_and_the_state_is_rebuilt(
    tmp_path: Path, sim: Server, redis: RedisServer
) -> None:
    local = sim_backend(
        sim,
        {"name": "gpt-4o-mini", "price": FREE},
        gpu_usd_per_hour=GPU_USD_PER_HOUR,
        max_in_flight=50,
        circuit_breaker={"failures": 5, "cooldown_seconds": 30},
    )
    config = {
        "redis": {"url": redis.url, "timeout_ms": 100, "retry_seconds": 0.5},
        "backends": {"local": local, "api": sim_backend(sim, {"name": "gpt-4o"})},
        "routers": {
            # A window larger than the run's requests: its length then says whether the requests seen
            # before the outage were written back (at the default 1,000, a fast run fills it after).
            "share": {
                "local": "local",
                "api": "api",
                "classifier": "heuristic",
                "target_api_share": 0.3,
                "share_window": 100_000,
            }
        },
    }
    statuses: list[int] = []
    stop = threading.Event()

    def load(server: Server) -> None:
        rng = random.Random(server.port)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                text = " ".join(
                    rng.choice(["why", "prove", "hello", "x^2 ="]) for _ in range(rng.randint(1, 40))
                )
                body = {"model": "share", "messages": [{"role": "user", "content": text}]}
                statuses.append(client.post("/v1/chat/completions", json=body).status_code)

    with gateways(tmp_path, config) as servers:
        threads = [threading.Thread(target=load, args=(server,)) for server in servers]
        for thread in threads:
            thread.start()
        try:
            time.sleep(2)
            redis.stop()
            assert until(lambda: all(value(samples(s), "crossover_redis_up") == 0 for s in servers), 5.0)
            time.sleep(2)
            during = len(statuses)
            redis.start()  # empty: a restart without persistence
            restarted = len(statuses)
            assert until(lambda: all(value(samples(s), "crossover_redis_up") == 1 for s in servers), 5.0)
            time.sleep(2 * SYNC_SECONDS)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert len(statuses) > during > 0
        assert set(statuses) == {200}
        store = redis_client.Redis(port=redis.port)
        # Both gateways count their requests in again, and the window holds what they saw before.
        assert store.hlen("crossover:meter:local:running") == 2
        window = list(store.scan_iter("crossover:window:share:*"))
        # It holds more requests than were seen since Redis came back: the older ones were written back.
        assert len(window) == 1 and store.llen(window[0]) > len(statuses) - restarted
        for server in servers:
            said = server.log_text()
            assert "redis is unreachable" in said and "redis is reachable again" in said
            assert value(samples(server), "crossover_redis_errors_total") >= 1


def test_a_gateway_starts_and_serves_while_redis_is_down(
    tmp_path: Path, sim: Server, redis: RedisServer
) -> None:
    redis.stop()
    config = gpu_config(sim, redis)
    config["redis"]["retry_seconds"] = 0.5
    with gateways(tmp_path, config, count=1) as (server,):
        assert chat(server, "gpt-4o-mini").status_code == 200
        assert value(samples(server), "crossover_redis_up") == 0
        redis.start()
        assert until(lambda: value(samples(server), "crossover_redis_up") == 1, 5.0)
        assert redis_client.Redis(port=redis.port).hlen("crossover:meter:local:running") == 1
        assert chat(server, "gpt-4o-mini").status_code == 200
