"""Replicas of one backend, on real servers: two OpenAI simulators with vLLM's /health and /metrics
(and the real CPU vLLM beside a dead replica), behind the gateway as a subprocess."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.config import Settings, build, parse
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.state import GatewayState
from tests.conftest import SIM_KEY
from tests.servers import Server, free_port, start_gateway, start_openai_sim

ENV = {"SIM_OPENAI_KEY": SIM_KEY}
# One health interval of 1 s, the watcher's 0.25 s tick, and slack for a machine busy with other tests.
PROBED = 2.5


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[Server]]:
    servers = []
    for i in range(2):
        home = tmp_path / f"sim{i}"
        home.mkdir()
        servers.append(start_openai_sim(home, SIM_KEY))
    yield servers
    for server in servers:
        server.stop()


def label(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


def pool(urls: list[str], **options: Any) -> dict[str, Any]:
    return {
        "kind": "openai_compatible",
        "replicas": urls,
        "api_key": "${SIM_OPENAI_KEY}",
        "models": [{"name": "gpt-4o"}],
        **options,
    }


def gateway_of(tmp_path: Path, sims: list[Server], **options: Any) -> Server:
    config = {"backends": {"pool": pool([s.url + "/v1" for s in sims], **options)}}
    return start_gateway(tmp_path, config, env=ENV)


def engine(sim: Server, **state: Any) -> None:
    httpx.post(sim.url + "/_sim/engine", json=state).raise_for_status()


def received(sim: Server, clear: bool = False) -> int:
    seen = len(httpx.get(sim.url + "/_sim/requests").json())
    if clear:
        httpx.delete(sim.url + "/_sim/requests")
    return seen


def metric(gateway: Server, name: str, **labels: str) -> float | None:
    text = httpx.get(gateway.url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == want:
            return float(match.group(2))
    return None


def send(gateway: Server, count: int, concurrency: int) -> list[str]:
    """`count` chat requests, `concurrency` at a time; the failures' messages."""
    return asyncio.run(_send(gateway, count, concurrency))


async def _send(gateway: Server, count: int, concurrency: int) -> list[str]:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    limit = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(n: int) -> None:
        async with limit:
            try:
                await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": f"hello {n}"}]
                )
            except openai.APIError as exc:
                failures.append(str(exc))

    await asyncio.gather(*(one(n) for n in range(count)))
    await client.close()
    return failures


def wait_for(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_even_load_is_balanced_within_20_percent(tmp_path: Path, sims: list[Server]) -> None:
    for sim in sims:
        engine(sim, latency=0.02)
    gateway = gateway_of(tmp_path, sims)
    try:
        assert send(gateway, 200, concurrency=8) == []
        counts = [received(sim) for sim in sims]
        assert sum(counts) == 200
        assert all(80 <= c <= 120 for c in counts), counts
    finally:
        gateway.stop()


def test_a_replicas_own_queue_steers_requests_away(tmp_path: Path, sims: list[Server]) -> None:
    """Other gateways' requests queue in vLLM, not here: its /metrics corrects this process's count."""
    engine(sims[0], waiting=20)
    gateway = gateway_of(tmp_path, sims, scrape_metrics=True, health_check_seconds=0.5)
    try:
        wait_for(
            lambda: (
                metric(gateway, "crossover_replica_requests_waiting", backend="pool", replica=label(sims[0]))
                == 20
            ),
            5,
        )
        assert send(gateway, 40, concurrency=4) == []
        assert [received(sim) for sim in sims] == [0, 40]
        assert metric(gateway, "crossover_backend_requests_waiting", backend="pool") == 20  # summed
    finally:
        gateway.stop()


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_affinity_sends_a_shared_prefix_to_one_replica(tmp_path: Path, sims: list[Server], api: str) -> None:
    gateway = gateway_of(tmp_path, sims, affinity="prefix", affinity_prefix_chars=300)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    try:
        homes: dict[int, set[int]] = {}
        for prefix in range(8):
            system = f"You are assistant number {prefix}. " + "Follow the house rules. " * 20
            homes[prefix] = set()
            for question in range(5):
                before = [received(sim) for sim in sims]
                if api == "chat":
                    client.chat.completions.create(
                        model="gpt-4o",
                        messages=[
                            {"role": "system", "content": system},
                            {"role": "user", "content": f"question {question}"},
                        ],
                    )
                else:  # the same conversation as a Responses request: instructions and input
                    client.responses.create(model="gpt-4o", instructions=system, input=f"question {question}")
                after = [received(sim) for sim in sims]
                homes[prefix].add(next(i for i in range(2) if after[i] > before[i]))
        assert all(len(replicas) == 1 for replicas in homes.values()), homes
        assert set().union(*homes.values()) == {0, 1}  # the prefixes themselves spread over both
    finally:
        client.close()
        gateway.stop()


def test_a_replica_killed_under_load_fails_no_request(tmp_path: Path, sims: list[Server]) -> None:
    for sim in sims:
        engine(sim, latency=0.05)
    retries = {"attempts": 2, "backoff_seconds": 0.05}
    gateway = gateway_of(tmp_path, sims, retries=retries, health_check_seconds=1)
    try:
        failures: list[str] = []
        load = threading.Thread(target=lambda: failures.extend(send(gateway, 300, concurrency=8)))
        load.start()
        wait_for(lambda: received(sims[1]) >= 30, 30)
        sims[1].process.kill()  # mid-request: some of its answers are cut, and then it refuses
        killed_at = time.monotonic()
        load.join()
        assert failures == []
        assert received(sims[0]) > 150
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["replicas"] == {"pool": {label(sims[0]): "up", label(sims[1]): "down"}}
        assert metric(gateway, "crossover_replica_up", backend="pool", replica=label(sims[1])) == 0
        assert time.monotonic() - killed_at < 60  # the whole load ran on; no request waited on the dead one
    finally:
        gateway.stop()


def test_a_refused_connection_moves_to_another_replica_even_without_retries(
    tmp_path: Path, sims: list[Server]
) -> None:
    gateway = gateway_of(tmp_path, sims, health_check_seconds=60)  # no probe will notice in time
    try:
        wait_for(
            lambda: metric(gateway, "crossover_replica_up", backend="pool", replica=label(sims[1])) == 1, 3
        )
        sims[1].stop()
        assert send(gateway, 10, concurrency=1) == []  # the request never reached it: sent on
        assert received(sims[0]) == 10
        assert metric(gateway, "crossover_replica_up", backend="pool", replica=label(sims[1])) == 0
        errors = metric(
            gateway, "crossover_upstream_errors_total", backend="pool", code="backend_unreachable"
        )
        assert errors == 1  # once: then it was known down
    finally:
        gateway.stop()


def test_an_unhealthy_replica_gets_no_traffic_within_one_health_interval(
    tmp_path: Path, sims: list[Server]
) -> None:
    gateway = gateway_of(tmp_path, sims, health_check_seconds=1)
    try:
        engine(sims[1], healthy=False)  # it still answers requests: only its /health says it is unwell
        wait_for(
            lambda: httpx.get(gateway.url + "/readyz").json()["replicas"]["pool"][label(sims[1])] == "down",
            PROBED,
        )
        received(sims[1], clear=True)
        assert send(gateway, 20, concurrency=4) == []
        assert received(sims[1]) == 0
        engine(sims[1], healthy=True)
        wait_for(
            lambda: metric(gateway, "crossover_replica_up", backend="pool", replica=label(sims[1])) == 1,
            PROBED,
        )
        assert send(gateway, 20, concurrency=4) == []
        assert received(sims[1]) >= 5
    finally:
        gateway.stop()


def test_the_gpu_cost_follows_the_live_replicas(tmp_path: Path, sims: list[Server]) -> None:
    """`gpu_usd_per_hour` is per replica: two live cost twice the rate, one that died stops costing."""
    gateway = gateway_of(tmp_path, sims, health_check_seconds=1, gpu_usd_per_hour=3.0)
    try:
        assert metric(gateway, "crossover_gpu_cost_usd_per_hour", backend="pool") == 6.0
        engine(sims[1], healthy=False)
        wait_for(lambda: metric(gateway, "crossover_gpu_cost_usd_per_hour", backend="pool") == 3.0, PROBED)
        engine(sims[1], healthy=True)
        wait_for(lambda: metric(gateway, "crossover_gpu_cost_usd_per_hour", backend="pool") == 6.0, PROBED)
    finally:
        gateway.stop()


def test_each_replica_has_its_own_circuit(tmp_path: Path, sims: list[Server]) -> None:
    httpx.post(sims[1].url + "/_sim/faults", json=[{"status": 500}]).raise_for_status()
    gateway = gateway_of(
        tmp_path,
        sims,
        retries={"attempts": 1, "backoff_seconds": 0.01},
        circuit_breaker={"failures": 1, "cooldown_seconds": 60},
    )
    try:
        assert send(gateway, 20, concurrency=1) == []  # the 500 was retried on the other replica
        assert received(sims[1]) == 1  # then its circuit kept it out
        assert received(sims[0]) == 20
        circuit = f"pool/{label(sims[1])}"
        assert metric(gateway, "crossover_circuit_open", backend=circuit) == 1
        assert metric(gateway, "crossover_circuit_open", backend=f"pool/{label(sims[0])}") == 0
    finally:
        gateway.stop()


def test_spill_when_follows_the_replicas_queue(tmp_path: Path, sims: list[Server]) -> None:
    local = pool(
        [s.url + "/v1" for s in sims],
        scrape_metrics=True,
        health_check_seconds=0.3,
        spill_when={"waiting_over": 5},
    )
    api = {
        "kind": "openai_compatible",
        "base_url": sims[0].url + "/v1",
        "api_key": "${SIM_OPENAI_KEY}",
        "models": [{"name": "gpt-4o-mini"}],
    }
    config = {
        "backends": {"pool": local, "api": api},
        "routers": {"auto": {"local": "pool", "api": "api", "classifier": "heuristic", "threshold": 0.5}},
    }
    gateway = start_gateway(tmp_path, config, env=ENV)

    def route() -> str:
        answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            headers={"x-crossover-route": "local"},
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.status_code == 200, answer.text
        return answer.headers["x-crossover-route"]

    def waiting(sim: Server) -> float | None:
        return metric(gateway, "crossover_replica_requests_waiting", backend="pool", replica=label(sim))

    try:
        assert route() == "local"
        engine(sims[0], waiting=9)
        wait_for(lambda: waiting(sims[0]) == 9, 3)
        assert route() == "local"  # one replica still has room
        engine(sims[1], waiting=9)
        wait_for(lambda: waiting(sims[1]) == 9, 3)
        assert route() == "api"  # every replica queues more than 5: spilled
        engine(sims[0], waiting=5)
        wait_for(lambda: waiting(sims[0]) == 5, 3)
        assert route() == "local"
    finally:
        gateway.stop()


def test_the_real_vllm_beside_a_dead_replica(tmp_path: Path, vllm: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    backend = {
        "kind": "openai_compatible",
        "replicas": [dead, vllm.url + "/v1"],  # the first is dead: models are discovered from the other
        "discover_models": True,
        "scrape_metrics": True,
        "health_check_seconds": 1,
    }
    gateway = start_gateway(tmp_path, {"backends": {"local": backend}})
    try:
        for n in range(6):
            answer = httpx.post(
                gateway.url + "/v1/chat/completions",
                json={
                    "model": "tiny-llama",
                    "max_tokens": 3,
                    "messages": [{"role": "user", "content": f"hi {n}"}],
                },
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
        alive, gone = label(vllm), dead.removeprefix("http://").removesuffix("/v1")
        wait_for(lambda: metric(gateway, "crossover_replica_up", backend="local", replica=alive) == 1, 3)
        assert httpx.get(gateway.url + "/readyz").json()["replicas"] == {"local": {alive: "up", gone: "down"}}
        # vLLM's own /metrics, read per replica: its gauges are there (0 running while idle).
        assert (
            metric(gateway, "crossover_replica_kv_cache_usage_ratio", backend="local", replica=alive)
            is not None
        )
    finally:
        gateway.stop()


async def test_a_reload_keeps_replica_circuits_unless_the_replicas_changed() -> None:
    def settings(*urls: str) -> Settings:
        spec = pool(list(urls), circuit_breaker={"failures": 1, "cooldown_seconds": 60})
        return build(parse({"backends": {"pool": spec}}), {"SIM_OPENAI_KEY": "k"})

    first = settings("http://a:1/v1", "http://b:2/v1")
    configs = iter([first, settings("http://a:1/v1", "http://c:3/v1")])
    state = GatewayState(Runtime(first), Metrics(), loader=lambda: next(configs))
    assert sorted(state.breakers) == ["pool/a:1", "pool/b:2"]
    state.breakers["pool/a:1"].record(False)
    assert await state.reload() and state.breakers["pool/a:1"].open  # the same replicas: kept
    assert await state.reload()
    assert sorted(state.breakers) == ["pool/a:1", "pool/c:3"] and not state.breakers["pool/a:1"].open
    await state.close()
