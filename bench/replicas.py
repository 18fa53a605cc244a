"""Replica balancing figures: two OpenAI simulators (vLLM-shaped /health and /metrics) behind one
gateway on loopback. Prints a Markdown table: how evenly least-loaded spreads requests, how prefix
affinity pins conversations, and what a replica killed under load costs the clients.

    python3 bench/replicas.py            # about 30 s

Counts, not timings: the simulators answer after a fixed 20 ms, so the figures do not depend on the
machine's speed.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import Server, start_gateway, start_openai_sim

KEY = "sk-bench"


def received(sim: Server) -> int:
    return len(httpx.get(sim.url + "/_sim/requests").json())


def clear(sims: list[Server]) -> None:
    for sim in sims:
        httpx.delete(sim.url + "/_sim/requests")
        httpx.post(sim.url + "/_sim/engine", json={"latency": 0.02, "healthy": True, "waiting": 0})


async def drive(gateway: Server, bodies: list[list[dict[str, str]]], concurrency: int) -> int:
    """Send every conversation; the number that failed."""
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    limit = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(messages: list[dict[str, str]]) -> None:
        nonlocal failed
        async with limit:
            try:
                await client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
            except openai.APIError:
                failed += 1

    await asyncio.gather(*(one(m) for m in bodies))
    await client.close()
    return failed


def home_share(sims: list[Server]) -> float:
    """Of all requests, the share served by the replica that served most of its system prompt's."""
    per_prompt: dict[str, list[int]] = {}
    for i, sim in enumerate(sims):
        for body in httpx.get(sim.url + "/_sim/requests").json():
            per_prompt.setdefault(body["messages"][0]["content"], [0] * len(sims))[i] += 1
    return sum(max(c) for c in per_prompt.values()) / sum(sum(c) for c in per_prompt.values())


def gateway_for(tmp: Path, sims: list[Server], name: str, **options: Any) -> Server:
    backend = {
        "kind": "openai_compatible",
        "replicas": [s.url + "/v1" for s in sims],
        "api_key": "${BENCH_KEY}",
        "models": [{"name": "gpt-4o"}],
        **options,
    }
    return start_gateway(tmp, {"backends": {"pool": backend}}, env={"BENCH_KEY": KEY}, name=name)


def scenario(
    tmp: Path,
    sims: list[Server],
    name: str,
    bodies: list[list[dict[str, str]]],
    during: Callable[[], None] | None = None,
    **options: Any,
) -> tuple[int, list[int]]:
    clear(sims)
    gateway = gateway_for(tmp, sims, name, **options)
    try:
        result: list[int] = []
        load = threading.Thread(target=lambda: result.append(asyncio.run(drive(gateway, bodies, 16))))
        load.start()
        if during is not None:
            during()
        load.join()
        return result[0], [received(s) for s in sims if s.process.poll() is None]
    finally:
        gateway.stop()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="crossover-replicas-"))
    sims = []
    for i in range(2):
        (tmp / f"sim{i}").mkdir()
        sims.append(start_openai_sim(tmp / f"sim{i}", KEY))
    rows = []
    try:
        plain = [[{"role": "user", "content": f"question {n}"}] for n in range(1000)]
        failed, counts = scenario(tmp, sims, "even", plain)
        rows.append(("least loaded, 1,000 requests, 16 at a time", failed, f"{counts[0]} / {counts[1]}"))

        prefixes = [f"You are assistant {p}. " + "Follow the house rules. " * 40 for p in range(50)]
        chats = [
            [{"role": "system", "content": prefixes[n % 50]}, {"role": "user", "content": f"q{n}"}]
            for n in range(1000)
        ]
        for max_load in (1.25, 2.0):
            failed, counts = scenario(
                tmp,
                sims,
                "affinity",
                chats,
                affinity="prefix",
                affinity_prefix_chars=512,
                affinity_max_load=max_load,
            )
            what = f"affinity: prefix, max_load {max_load}, 50 system prompts x 20 requests"
            pinned = f"{home_share(sims):.1%} on their prompt's replica"
            rows.append((f"{what} ({pinned})", failed, f"{counts[0]} / {counts[1]}"))

        def kill() -> None:
            while received(sims[1]) < 200:
                time.sleep(0.01)
            sims[1].process.kill()

        retries = {"attempts": 2, "backoff_seconds": 0.05}
        failed, counts = scenario(
            tmp, sims, "kill", plain, during=kill, retries=retries, health_check_seconds=1
        )
        rows.append(
            ("one replica SIGKILLed after 200 of its requests, retries on", failed, f"{counts[0]} / (killed)")
        )
    finally:
        for sim in sims:
            sim.stop()
    print("| scenario | failed requests | requests per replica |")
    print("|---|---:|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
