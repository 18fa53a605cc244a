"""Reloads that change what requests in flight and shared state depend on: a backend added under load,
a circuit removed during a call, and with Redis, a circuit removed (the meter of the same name goes
on) or a backend moved to another server (its circuit starts closed)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis as redis_client
import yaml

from tests.conftest import SIM_KEY, sim_backend
from tests.servers import Server, free_port, start_gateway, until
from tests.services import RedisServer
from tests.test_shared_state import chat, fault, sim

__all__ = ["sim"]  # the fixture
ENV = {"SIM_OPENAI_KEY": SIM_KEY, "GW_KEY": "sk-gw-reload-0123456789"}


def reload(gateway: Server, tmp_path: Path, config: dict[str, Any]) -> None:
    """Rewrite the config and SIGHUP; back when the log says it was applied."""
    before = gateway.log_text().count("config reloaded")
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(config))
    gateway.process.send_signal(signal.SIGHUP)
    assert until(lambda: gateway.log_text().count("config reloaded") > before, 20)


def test_a_backend_added_under_load_answers_from_its_first_request(tmp_path: Path, sim: Server) -> None:
    """The new backend's meter exists before any request can reach it (a 500 with KeyError before)."""
    local = sim_backend(sim, {"name": "gpt-4o-mini"})
    server: dict[str, Any] = {"watch_config": False, "api_keys": ["${GW_KEY}"]}
    gateway = start_gateway(tmp_path, {"server": server, "backends": {"local": local}}, env=ENV)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30, headers={"authorization": "Bearer " + ENV["GW_KEY"]}) as client:
            while not stop.is_set():
                body = {"model": "b2/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
                statuses.append(client.post(gateway.url + "/v1/chat/completions", json=body).status_code)

    threads = [threading.Thread(target=load) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        assert until(lambda: len(statuses) > 20, 5.0)
        added = sim_backend(sim, {"name": "gpt-4o"}, gpu_usd_per_hour=2.0, circuit_breaker={"failures": 3})
        # A keys store too: opening it is the await during which requests met the new runtime.
        server["keys_store"] = str(tmp_path / "keys.sqlite")
        reload(gateway, tmp_path, {"server": server, "backends": {"local": local, "b2": added}})
        assert until(lambda: statuses.count(200) > 20, 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        gateway.stop()
    assert set(statuses) <= {404, 200}, sorted(set(statuses))
    assert "Traceback" not in gateway.log_text()


def test_a_circuit_removed_during_a_call_leaves_the_call_whole(tmp_path: Path, sim: Server) -> None:
    breaker = {"failures": 5, "cooldown_seconds": 30}
    with_breaker = sim_backend(sim, {"name": "gpt-4o-mini"}, circuit_breaker=breaker, max_in_flight=1)
    config: dict[str, Any] = {"server": {"watch_config": False}, "backends": {"local": with_breaker}}
    gateway = start_gateway(tmp_path, config, env=ENV)
    try:
        fault(sim, [{"delay": 2}])
        answers: list[httpx.Response] = []
        call = threading.Thread(target=lambda: answers.append(chat(gateway, "gpt-4o-mini")))
        call.start()
        time.sleep(0.5)
        without = sim_backend(sim, {"name": "gpt-4o-mini"}, max_in_flight=1)
        reload(gateway, tmp_path, {"server": {"watch_config": False}, "backends": {"local": without}})
        call.join()
        assert answers[0].status_code == 200, answers[0].text
        # Its meter slot was given back: max_in_flight 1 admits the next request at once.
        assert chat(gateway, "gpt-4o-mini").status_code == 200
        assert "Traceback" not in gateway.log_text()
    finally:
        gateway.stop()


def test_with_redis_a_removed_circuit_leaves_the_meter_of_that_name_shared(
    tmp_path: Path, sim: Server, redis: RedisServer
) -> None:
    local = sim_backend(sim, {"name": "gpt-4o-mini"}, gpu_usd_per_hour=3.6, circuit_breaker={"failures": 3})
    config: dict[str, Any] = {
        "server": {"watch_config": False},
        "redis": {"url": redis.url, "key_prefix": "rl"},
        "backends": {"local": local},
    }
    gateway = start_gateway(tmp_path, config, env=ENV)
    store = redis_client.Redis.from_url(redis.url)
    try:
        seen = "rl:meter:local:seen"
        assert until(lambda: bool(store.hgetall(seen)), 5.0)
        del local["circuit_breaker"]
        reload(gateway, tmp_path, config)
        before = {k: float(v) for k, v in store.hgetall(seen).items()}
        time.sleep(1.5)  # three syncs: this process's heartbeat moves its expiry on
        after = {k: float(v) for k, v in store.hgetall(seen).items()}
        assert before and all(after.get(k, 0) > v for k, v in before.items())
    finally:
        store.close()
        gateway.stop()


def test_with_redis_a_backend_moved_elsewhere_starts_with_a_closed_circuit(
    tmp_path: Path, sim: Server, redis: RedisServer
) -> None:
    dead = {
        **sim_backend(sim, {"name": "gpt-4o-mini"}),
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "circuit_breaker": {"failures": 1, "cooldown_seconds": 60},
    }
    config: dict[str, Any] = {
        "server": {"watch_config": False},
        "redis": {"url": redis.url},
        "backends": {"local": dead},
    }
    gateway = start_gateway(tmp_path, config, env=ENV)
    try:
        assert chat(gateway, "gpt-4o-mini").status_code == 503  # unreachable: the circuit opens
        assert chat(gateway, "gpt-4o-mini").json()["error"]["code"] == "circuit_open"
        config["backends"]["local"] = {**dead, "base_url": sim.url + "/v1"}
        reload(gateway, tmp_path, config)
        time.sleep(1.0)  # two syncs: Redis's old open circuit would have been adopted by now
        assert chat(gateway, "gpt-4o-mini").status_code == 200
    finally:
        gateway.stop()
