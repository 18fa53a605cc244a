"""The link to Redis against a real redis-server: calls go through while it is up, fall back to the
caller's local answer while it is down (said once in the log and the metric), and resume after."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import ConfigError, Redis, load
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from tests.services import RedisServer, redis_server


def _gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


@pytest.fixture
def guarded() -> Iterator[RedisServer]:
    with redis_server(password="hunter2") as server:
        yield server


def test_an_outage_falls_back_to_local_state_and_recovers(
    guarded: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics, redis = Metrics(), guarded
    settings = Redis(redis.url, "t", 0.2, 0.1)

    async def scenario() -> list[object]:
        link = RedisLink(settings, Recorder(metrics))
        seen: list[object] = []
        try:
            seen.append(await link.run(lambda c: c.incr(link.key("n")), -1))
            redis.stop()
            seen.append(await link.run(lambda c: c.incr(link.key("n")), -1))
            seen.append(await link.run(lambda c: c.incr(link.key("n")), -1))  # within retry: not tried
            seen.append((_gauge(metrics, "crossover_redis_up"), link.up))
            redis.start()
            await asyncio.sleep(0.15)  # past retry_seconds
            seen.append(await link.run(lambda c: c.incr(link.key("n")), -1))
            seen.append((_gauge(metrics, "crossover_redis_up"), link.up))
        finally:
            await link.close()
        return seen

    with caplog.at_level(logging.WARNING, logger="crossover"):
        seen = asyncio.run(scenario())
    # A restart without persistence starts from nothing: the count begins again at 1.
    assert seen == [1, -1, -1, (0.0, False), 1, (1.0, True)]
    assert _gauge(metrics, "crossover_redis_errors_total") == 1.0  # the call skipped in retry is no error
    said = [r.getMessage() for r in caplog.records]
    assert sum("redis is unreachable" in m for m in said) == 1
    assert sum("redis is reachable again" in m for m in said) == 1
    assert not any("hunter2" in m for m in said)


def test_keys_are_namespaced_and_scripts_run_atomically(redis: RedisServer) -> None:
    async def scenario() -> list[int]:
        link = RedisLink(Redis(redis.url, "gw1", 0.5, 1.0), Recorder(Metrics()))
        add = link.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        try:
            key = link.key("a", "b")
            assert key == "gw1:a:b"
            return list(
                await asyncio.gather(*(link.run(lambda c: add(keys=[key], args=[2]), 0) for _ in range(50)))
            )
        finally:
            await link.close()

    assert sorted(asyncio.run(scenario())) == list(range(2, 101, 2))


def test_config_reads_redis_and_refuses_other_schemes(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    base = "backends:\n  a:\n    kind: openai_compatible\n    base_url: http://127.0.0.1:1/v1\n    models: [{name: m}]\n"
    path.write_text(base + "redis:\n  url: ${REDIS_URL}\n  timeout_ms: 100\n")
    settings = load(path, {"REDIS_URL": "redis://127.0.0.1:6390/2"})
    assert settings.redis == Redis("redis://127.0.0.1:6390/2", "crossover", 0.1, 2.0)
    path.write_text(base + "redis:\n  url: http://127.0.0.1:6390\n")
    with pytest.raises(ConfigError, match=r"redis\.url"):
        load(path, {})
    path.write_text(base)
    assert load(path, {}).redis is None
