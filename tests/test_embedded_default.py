"""`crossover serve` with no config file: the README's first command."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import openai

from classifier import load_classifier
from tests.conftest import SIM_KEY
from tests.servers import Server, free_port, start
from tests.test_openai_sdk import SIMPLE, TOOLS

# The learned classifier scores this physics problem with units ~0.74, above its default threshold (~0.68).
MMLU_HARD = [
    {
        "role": "user",
        "content": "A 2 kg block slides down a frictionless incline of 30 degrees. "
        "Find the acceleration (in m/s^2) and the normal force (in N), given g = 9.8 m/s^2.",
    }
]


def test_serve_without_config_routes_between_vllm_and_openai(
    tmp_path: Path, vllm: Server, openai_sim: Server
) -> None:
    port = free_port()
    env = {
        "CROSSOVER_LOCAL_BASE_URL": vllm.url + "/v1",  # model discovered from its /v1/models
        "OPENAI_BASE_URL": openai_sim.url + "/v1",
        "OPENAI_API_KEY": SIM_KEY,
    }
    server = start(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        port,
        tmp_path / "default.log",
        "/healthz",
        30,
        env,
    )
    try:
        assert httpx.get(server.url + "/readyz").json() == {
            "status": "ready",
            "backends": {"local": "ok", "openai": "ok"},
        }
        with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
            assert [m.id for m in client.models.list()] == ["auto", "tiny-llama", "gpt-4o"]
            easy = client.chat.completions.with_raw_response.create(
                model="auto", messages=SIMPLE, max_tokens=2
            )
            assert (easy.headers["x-crossover-backend"], easy.parse().model) == ("local", "tiny-llama")
            # The default classifier is `learned`, with its own threshold; a question like its
            # training data's hardest goes to the API.
            hard = client.chat.completions.with_raw_response.create(model="auto", messages=MMLU_HARD)
            assert (
                float(hard.headers["x-crossover-threshold"]) == load_classifier("learned").default_threshold
            )
            assert (hard.headers["x-crossover-backend"], hard.headers["x-crossover-model"]) == (
                "openai",
                "gpt-4o",
            )
            # Tool use is pinned to the API by the default rules, whatever the score.
            tools = client.chat.completions.with_raw_response.create(
                model="auto", messages=SIMPLE, tools=TOOLS
            )
            assert (tools.headers["x-crossover-rule"], tools.headers["x-crossover-backend"]) == (
                "tools",
                "openai",
            )
    finally:
        server.stop()
