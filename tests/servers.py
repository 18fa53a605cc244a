"""Real servers on loopback for the tests: the gateway, the simulators, and vLLM."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request's head and its Content-Length body, for raw servers in tests."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next((int(line[15:]) for line in lines if line.lower().startswith(b"content-length:")), 0)
    return head, await reader.readexactly(length)


def until(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    """Whether `check` came true within `seconds` (polled every 0.1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(
    os.environ.get("CROSSOVER_VLLM_PYTHON", Path.home() / ".cache/crossover/vllm-venv/bin/python")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    cmd: list[str],
    port: int,
    log: Path,
    ready: str,
    timeout: float,
    env: dict[str, str] | None = None,
) -> Server:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )
    server = Server(process, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited with {process.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(server.url + ready, timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{cmd[:4]} not ready after {timeout}s:\n{server.log_text()[-3000:]}")


def start_openai_sim(tmp: Path, key: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.simulators.openai_sim", "--port", str(port), "--key", key]
    return start(cmd, port, tmp / "openai_sim.log", "/_sim/requests", 30, {"PYTHONPATH": str(ROOT)})


def start_anthropic_sim(tmp: Path, key: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.simulators.anthropic_sim", "--port", str(port), "--key", key]
    return start(cmd, port, tmp / "anthropic_sim.log", "/_sim/requests", 30, {"PYTHONPATH": str(ROOT)})


def start_gateway(
    tmp: Path,
    config: dict[str, Any],
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    name: str = "gateway",
    args: tuple[str, ...] = (),
) -> Server:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "info",
        *args,
    ]
    return start(cmd, port, tmp / f"{name}.log", "/healthz", 30, env)


def loopback_backend(port: int) -> dict[str, Any]:
    """An OpenAI-compatible backend on this machine's `port`, its models discovered."""
    return {"kind": "openai_compatible", "base_url": f"http://127.0.0.1:{port}/v1", "discover_models": True}


def make_tiny_llama(out: Path) -> Path:
    subprocess.run(
        [str(VLLM_PYTHON), str(ROOT / "tests/vllm/make_model.py"), str(out)], check=True, capture_output=True
    )
    return out


def start_vllm(tmp: Path) -> Server:
    model = make_tiny_llama(tmp / "tiny-llama")
    return serve_vllm(
        tmp,
        model,
        "tiny-llama",
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        # A tool parser makes vLLM honour a required or named tool_choice (by structured decoding, so
        # even dummy weights write a call): without one, its /v1/responses ignores tool_choice and its
        # chat refuses it. Pythonic: it needs no special tokens in the tiny model's vocabulary.
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "pythonic",
    )


def start_vllm_embedder(tmp: Path) -> Server:
    """The tiny Llama as an embedding model: vLLM pools its last hidden state (128 dimensions)."""
    model = make_tiny_llama(tmp / "tiny-embedder")
    # float32, not the generative server's bfloat16: vLLM 0.32's CPU worker dies with SIGILL (exit -4) on
    # the first bfloat16 pooling request on these machines; float32 pools fine.
    args = ("--runner", "pooling", "--convert", "embed", "--dtype", "float32", "--max-model-len", "512")
    return serve_vllm(tmp, model, "tiny-embedder", *args)


def serve_vllm(tmp: Path, model: Path, name: str, *args: str) -> Server:
    if not VLLM_PYTHON.exists():
        raise RuntimeError(f"no vLLM environment at {VLLM_PYTHON}; run .ci/setup-vllm (see README)")
    port = free_port()
    cmd = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        name,
        "--load-format",
        "dummy",
        "--enforce-eager",
        *args,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    return start(cmd, port, tmp / f"{name}.log", "/v1/models", 300, env)
