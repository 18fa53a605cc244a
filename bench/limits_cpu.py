"""The gateway's own CPU time per request for a key's limits: one admit (from a lease, or the Lua
check in Redis) and its settle, as the request path does them, against a redis-server of its own on
loopback. Unlike the `crossover w1 limits` row, this does not depend on how the machine schedules
Redis. Redis's CPU per request is shown beside it: in the bench row it runs on the gateway's cores.

    python3 -P bench/limits_cpu.py [--requests 20000] [--no-leases]   # -P: bench/classifier.py is not the package
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, as bench/replicas.py

from classifier import extract_features
from gateway.config import LimitsPolicy, Price, Redis
from gateway.limit_store import RedisStore
from gateway.limits import Limiter
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from tests.services import redis_server

# As in bench/run.sh's limits row: the key's rate limit, its team's budget and token limit.
PRINCIPAL = Principal(
    "bench",
    team="bench",
    key_limits=Limits(requests_per_minute=10**8),
    team_limits=Limits(tokens_per_minute=10**9, usd_per_day=1e6),
)
BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
FEATURES = extract_features({**BODY, "max_tokens": 16})
PRICE = Price(0.15e-6, 0.15e-6, 0.6e-6)


def cpu_of(pid: int) -> float:
    """A process's CPU seconds so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, requests: int, redis_cpu: Callable[[], float], leases: bool) -> None:
    recorder = Recorder(Metrics())
    link = RedisLink(Redis(url, "bench", 1.0, 1.0), recorder)
    limiter = Limiter(RedisStore(link), recorder, lease_seconds=1.0 if leases else 0)

    async def one() -> None:
        ticket = await limiter.admit(PRINCIPAL, LimitsPolicy(), lambda: FEATURES, PRICE, "openai")
        assert ticket is not None
        ticket.settle(24, 0.00001)

    try:
        for _ in range(500):  # warm-up: scripts loaded, connection open
            await one()
        for concurrent in (1, 10):
            cpu, wall, redis = time.process_time(), time.perf_counter(), redis_cpu()
            for _ in range(requests // concurrent):
                # One at once is awaited in place, as the request path does in its own task (a task
                # per call, as gather makes, costs a turn of the event loop: ~15 us).
                await (one() if concurrent == 1 else asyncio.gather(*(one() for _ in range(concurrent))))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            redis = redis_cpu() - redis
            print(
                f"{concurrent:>2} at once: {cpu / requests * 1e6:5.1f} us of CPU per request, "
                f"{wall / requests * 1e6:5.0f} us wall, {redis / requests * 1e6:5.0f} us of Redis's CPU"
            )
    finally:
        await limiter.close()
        await link.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument(
        "--no-leases", action="store_true", help="a Redis call per request, as without leases"
    )
    args = parser.parse_args()
    with redis_server() as server:
        assert server.process is not None
        pid = server.process.pid
        uvloop.run(measure(server.url, args.requests, lambda: cpu_of(pid), not args.no_leases))


if __name__ == "__main__":
    main()
