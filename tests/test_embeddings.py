"""`POST /v1/embeddings` through the gateway with the official SDK's `embeddings.create`: against the
OpenAI simulator, and against the real CPU vLLM serving the tiny dummy Llama as a pooling model
(`vllm_embed`, a vLLM of its own: one vLLM serves either generation or pooling)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ANTHROPIC_KEY, CLAUDE, SIM_KEY, sim_backend
from tests.openai_schema import assert_valid
from tests.servers import Server, loopback_backend, start_gateway
from tests.test_bad_input import check_error
from tests.test_metrics import samples, value

SMALL, LARGE = "text-embedding-3-small", "text-embedding-3-large"
EMBEDDER = "tiny-embedder"  # vLLM's served name for the pooling model (tests/servers.py)
PRICE = {"usd_per_million_input_tokens": 0.02, "usd_per_million_output_tokens": 0.0}


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, openai_sim: Server, anthropic_sim: Server
) -> Iterator[Server]:
    anthropic = {
        "kind": "anthropic",
        "base_url": anthropic_sim.url + "/v1",
        "api_key": "${SIM_ANTHROPIC_KEY}",
        "models": [{"name": CLAUDE}],
    }
    config = {
        "backends": {
            "openai": sim_backend(openai_sim, {"name": SMALL, "price": PRICE}, {"name": LARGE}),
            "anthropic": anthropic,
        },
        # The router's fallback is on (the default): embeddings must not use it.
        "routers": {
            "vectors": {"local": f"openai/{SMALL}", "api": f"openai/{LARGE}", "classifier": "heuristic"}
        },
    }
    env = {"SIM_OPENAI_KEY": SIM_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY}
    server = start_gateway(tmp_path_factory.mktemp("embeddings"), config, env=env)
    yield server
    server.stop()


@pytest.fixture
def client(gw: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def post(gw: Server, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/embeddings", json=body, headers=headers, timeout=20)


@pytest.mark.parametrize(
    ("given", "count", "tokens"),
    [
        ("the quick brown fox", 1, 4),
        (["one two", "three"], 2, 3),
        ([5, 17, 42], 1, 3),
        ([[5, 17], [42]], 2, 3),
    ],
    ids=["string", "strings", "token-ids", "token-id-lists"],
)
def test_inputs(client: openai.OpenAI, gw: Server, given: Any, count: int, tokens: int) -> None:
    answer = client.embeddings.create(model=SMALL, input=given)  # the SDK asks for base64 and decodes it
    assert [d.index for d in answer.data] == list(range(count))
    assert all(len(d.embedding) == 1536 for d in answer.data)
    assert answer.usage.prompt_tokens == tokens
    raw = post(gw, {"model": SMALL, "input": given, "encoding_format": "float"})
    assert_valid("CreateEmbeddingResponse", raw.json())
    assert raw.json()["data"][0]["embedding"] == pytest.approx(answer.data[0].embedding, rel=1e-6)


def test_dimensions_pass_through(client: openai.OpenAI) -> None:
    assert len(client.embeddings.create(model=SMALL, input="x", dimensions=8).data[0].embedding) == 8


def test_router_places_on_its_local_target(client: openai.OpenAI, gw: Server) -> None:
    """Not scored: the local target, or the route header's; never the other target as a fallback."""
    before = samples(gw)
    placed = client.embeddings.with_raw_response.create(model="vectors", input="hello")
    assert (placed.headers["x-crossover-route"], placed.headers["x-crossover-model"]) == ("local", SMALL)
    assert "x-crossover-score" not in placed.headers
    assert len(placed.parse().data[0].embedding) == 1536
    pinned = client.embeddings.with_raw_response.create(
        model="vectors", input="hello", extra_headers={"x-crossover-route": "api"}
    )
    assert (pinned.headers["x-crossover-route"], pinned.headers["x-crossover-model"]) == ("api", LARGE)
    after = samples(gw)
    for reason in ("model", "header"):
        name, labels = "crossover_routing_decisions_total", {"router": "vectors", "reason": reason}
        assert value(after, name, **labels) - value(before, name, **labels) == 1


def test_no_fallback_to_another_vector_space(gw: Server, openai_sim: Server) -> None:
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"status": 503}])
    failed = post(gw, {"model": "vectors", "input": "hello"})
    check_error(failed, 503)
    assert failed.headers["x-crossover-route"] == "local"


def test_cost(gw: Server) -> None:
    before = samples(gw)
    usage = post(gw, {"model": SMALL, "input": ["a b c", "d e"]}).json()["usage"]
    after = samples(gw)
    grown = {
        name: value(after, name, model=SMALL) - value(before, name, model=SMALL)
        for name in ("crossover_tokens_total", "crossover_cost_usd_total")
    }
    assert usage["prompt_tokens"] == 5
    assert grown["crossover_tokens_total"] == 5  # input only: an embedding has no output tokens
    assert grown["crossover_cost_usd_total"] == pytest.approx(5 * 0.02e-6)


def test_anthropic_backend_is_refused(gw: Server) -> None:
    body = check_error(post(gw, {"model": CLAUDE, "input": "hello"}), 400, "model")
    assert "embeddings" in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [1, "a"]}, "input"),
        ({"input": [True]}, "input"),
        ({"input": {"a": 1}}, "input"),
        ({"input": "x", "stream": True}, "stream"),
        ({"input": "x", "dimensions": "8"}, "dimensions"),
        ({"input": "x", "encoding_format": 1}, "encoding_format"),
    ],
)
def test_bad_input(gw: Server, body: dict[str, Any], param: str) -> None:
    check_error(post(gw, {"model": SMALL, **body}), 400, param)


def test_unknown_model(gw: Server) -> None:
    check_error(post(gw, {"model": "no-such-embedder", "input": "x"}), 404, "model", "model_not_found")


@pytest.fixture(scope="module")
def vllm_gw(tmp_path_factory: pytest.TempPathFactory, vllm_embed: Server) -> Iterator[Server]:
    config = {"backends": {"local": loopback_backend(vllm_embed.port)}}
    server = start_gateway(tmp_path_factory.mktemp("vllm-embeddings"), config)
    yield server
    server.stop()


def vllm_prompt_tokens(vllm_embed: Server, given: Any) -> int:
    """What vLLM itself counts for `given`: its tokenizer's count for text, the ids' count for ids."""
    prompts = [given] if isinstance(given, str | int) or isinstance(given[0], int) else given
    total = 0
    for prompt in prompts:
        if isinstance(prompt, str):
            body = {"model": EMBEDDER, "prompt": prompt}
            total += httpx.post(vllm_embed.url + "/tokenize", json=body, timeout=20).json()["count"]
        else:
            total += len(prompt)
    return total


@pytest.mark.parametrize(
    ("given", "count"),
    # "hello world" is 4 tokens, a length that killed vLLM's worker (SIGILL) when it pooled in bfloat16.
    [("hello world", 1), (["one two", "three four five six"], 2), ([5, 17, 42], 1)],
    ids=["string", "strings", "token-ids"],
)
def test_real_vllm(vllm_gw: Server, vllm_embed: Server, given: Any, count: int) -> None:
    """The SDK's call through the gateway to vLLM's pooling model: vLLM's own vectors (decoded from
    the base64 the SDK asks for) and vLLM's token count, which the gateway meters as input tokens."""
    before = samples(vllm_gw)
    with openai.OpenAI(base_url=vllm_gw.url + "/v1", api_key="unused", max_retries=0) as client:
        answer = client.embeddings.create(model=EMBEDDER, input=given)
    after = samples(vllm_gw)
    assert [d.index for d in answer.data] == list(range(count))
    assert {len(d.embedding) for d in answer.data} == {128}  # the tiny model's hidden size
    direct = httpx.post(
        vllm_embed.url + "/v1/embeddings", json={"model": EMBEDDER, "input": given}, timeout=60
    ).json()
    for mine, theirs in zip(answer.data, direct["data"], strict=True):
        assert mine.embedding == pytest.approx(theirs["embedding"], rel=1e-5, abs=1e-6)
    tokens = vllm_prompt_tokens(vllm_embed, given)
    assert answer.usage.prompt_tokens == tokens
    grown = value(after, "crossover_tokens_total", model=EMBEDDER) - value(
        before, "crossover_tokens_total", model=EMBEDDER
    )
    assert grown == tokens
