"""`crossover serve --with-vllm MODEL` with the real CPU vLLM and the tiny dummy-weights Llama: the
gateway starts vLLM, answers through it, restarts it when it is killed, and leaves no vLLM behind."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import VLLM_PYTHON, free_port, loopback_backend, make_tiny_llama, start_gateway

VLLM_ARGS = (
    "--vllm-arg=--served-model-name=tiny-llama",
    "--vllm-arg=--load-format=dummy",
    "--vllm-arg=--enforce-eager",
    "--vllm-arg=--dtype=bfloat16",
    "--vllm-arg=--max-model-len=2048",
)
VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def group_alive(pgid: int) -> list[int]:
    """Processes (not zombies) still in process group `pgid`."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(stat.parent.name))
    return alive


def started_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"vLLM started \(pid (\d+)\)", log)]


def ask_until_answered(url: str, timeout: float) -> tuple[httpx.Response, list[httpx.Response]]:
    """Ask until vLLM answers through the gateway; the answer, and the refusals before it."""
    refused = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        )
        if response.status_code == 200:
            return response, refused
        refused.append(response)
        time.sleep(1)
    raise AssertionError(f"no answer in {timeout} s: {[r.text for r in refused[-3:]]}")


@pytest.mark.vllm
def test_the_gateway_runs_vllm_restarts_it_and_stops_it(tmp_path: Path) -> None:
    model = make_tiny_llama(tmp_path / "tiny-llama")
    port = free_port()
    config = {
        "backends": {"local": loopback_backend(port)},
        "routers": {"auto": {"local": "local", "api": "local", "classifier": "heuristic"}},
    }
    gateway = start_gateway(
        tmp_path,
        config,
        env=VLLM_ENV,
        args=("--with-vllm", str(model), "--vllm-bin", str(VLLM_PYTHON), *VLLM_ARGS),
    )
    try:
        answer, refused = ask_until_answered(gateway.url, 300)
        assert (answer.headers["x-crossover-backend"], answer.headers["x-crossover-model"]) == (
            "local",
            "tiny-llama",
        )
        # While vLLM starts, the 503 says where the gateway looked.
        assert refused and refused[0].status_code == 503
        assert f"127.0.0.1:{port}/v1/models" in refused[0].json()["error"]["message"]
        [first] = started_pids(gateway.log_text())
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(started_pids(gateway.log_text())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"vLLM (pid {first}) exited with code -9; restarting in 1 s" in gateway.log_text()
        [_, second] = started_pids(gateway.log_text())
        ask_until_answered(gateway.url, 300)
        assert not group_alive(first)  # what the killed vLLM left behind was cleaned up
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0
    assert "stopping vLLM" in gateway.log_text()
    assert not group_alive(second)
