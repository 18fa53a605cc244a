from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import (
    Server,
    start_anthropic_sim,
    start_gateway,
    start_openai_sim,
    start_vllm,
    start_vllm_embedder,
)
from tests.services import RedisServer, redis_server

SIM_KEY = "sk-sim-0123456789abcdefSECRET"
ANTHROPIC_KEY = "sk-ant-sim-0123456789SECRET"
CLAUDE = "claude-sonnet-4-6"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reaches vLLM through any fixture (`gateway`, `cost_gateway`, ...) is a `vllm` test, so
    `-m "not vllm"` never starts vLLM, whether or not its author remembered the marker."""
    for item in items:
        if {"vllm", "vllm_embed"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def tmp_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def openai_sim(tmp_session: Path) -> Iterator[Server]:
    server = start_openai_sim(tmp_session, SIM_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def anthropic_sim(tmp_session: Path) -> Iterator[Server]:
    server = start_anthropic_sim(tmp_session, ANTHROPIC_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm(tmp_session: Path) -> Iterator[Server]:
    server = start_vllm(tmp_session)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_embed(tmp_session: Path) -> Iterator[Server]:
    """A second vLLM, serving the tiny model for embeddings: one vLLM serves one runner (generate or
    pooling). Only the tests that ask for it start it."""
    server = start_vllm_embedder(tmp_session)
    yield server
    server.stop()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (tests/services.py)."""
    with redis_server() as server:
        yield server


def sim_backend(sim: Server, *models: dict[str, Any], **options: Any) -> dict[str, Any]:
    """A backend on the OpenAI simulator, with the simulator's key (SIM_OPENAI_KEY in the gateway's env)."""
    return {
        "kind": "openai_compatible",
        "base_url": sim.url + "/v1",
        "api_key": "${SIM_OPENAI_KEY}",
        "models": list(models),
        **options,
    }


def base_config(vllm_url: str, sim_url: str, anthropic_url: str) -> dict[str, Any]:
    return {
        "backends": {
            "local": {"kind": "openai_compatible", "base_url": vllm_url + "/v1", "discover_models": True},
            "openai": {
                "kind": "openai_compatible",
                "base_url": sim_url + "/v1",
                "api_key": "${SIM_OPENAI_KEY}",
                "models": [
                    {
                        "name": "gpt-4o",
                        "price": {
                            "usd_per_million_input_tokens": 2.5,
                            "usd_per_million_cached_input_tokens": 1.25,
                            "usd_per_million_output_tokens": 10.0,
                        },
                    },
                    {"name": "gpt-4o-mini"},
                ],
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": anthropic_url + "/v1",
                "api_key": "${SIM_ANTHROPIC_KEY}",
                "default_max_tokens": 256,
                "models": [
                    {
                        "name": CLAUDE,
                        "price": {
                            "usd_per_million_input_tokens": 3.0,
                            "usd_per_million_cached_input_tokens": 0.3,
                            "usd_per_million_output_tokens": 15.0,
                        },
                    }
                ],
            },
        },
        "routers": {
            # The heuristic: its cues make "hard" test prompts predictable (the default is `learned`).
            "auto": {"local": "local", "api": "openai/gpt-4o", "classifier": "heuristic", "threshold": 0.5},
            "hybrid": {
                "local": "local",
                "api": f"anthropic/{CLAUDE}",
                "classifier": "heuristic",
                "threshold": 0.5,
            },
        },
    }


@pytest.fixture(scope="session")
def gateway(tmp_session: Path, vllm: Server, openai_sim: Server, anthropic_sim: Server) -> Iterator[Server]:
    """The shared gateway: local = the real vLLM, api = the OpenAI and Anthropic simulators."""
    config = base_config(vllm.url, openai_sim.url, anthropic_sim.url)
    server = start_gateway(
        tmp_session, config, env={"SIM_OPENAI_KEY": SIM_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY}
    )
    yield server
    server.stop()
