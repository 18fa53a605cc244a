"""`POST /v1/responses` through the gateway to the real CPU vLLM, which serves `/v1/responses` itself:
passed through (its tiny dummy-weights model writes nonsense, so the tests check shapes, order,
usage and accounting, not words), directly and through a router."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.openai_schema import assert_valid
from tests.servers import Server, start_gateway
from tests.test_metrics import samples, value
from tests.test_responses import TOOL, check_stream, events_of

pytestmark = pytest.mark.vllm
ENDS = ("response.completed", "response.incomplete")
SCHEMA = {
    "type": "json_schema",
    "name": "answer",
    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
}


@pytest.fixture
def client(gateway: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_whole(client: openai.OpenAI, gateway: Server) -> None:
    before = samples(gateway)
    raw = client.responses.with_raw_response.create(
        model="tiny-llama", input="hi", instructions="Be brief.", max_output_tokens=8, store=False
    )
    response = raw.parse()
    assert raw.headers["x-crossover-backend"] == "local"
    assert response.status in ("completed", "incomplete") and response.output
    assert response.usage is not None and 0 < response.usage.output_tokens <= 8
    grown = value(samples(gateway), "crossover_tokens_total", backend="local", kind="output") - value(
        before, "crossover_tokens_total", backend="local", kind="output"
    )
    assert grown == response.usage.output_tokens


def test_streamed(client: openai.OpenAI) -> None:
    kinds: list[str] = []
    text, final = "", None
    with client.responses.create(model="tiny-llama", input="hi", max_output_tokens=8, stream=True) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert final is not None and final.usage is not None and final.usage.output_tokens > 0
    assert final.output_text == text


def test_routed(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="auto", input="hi", max_output_tokens=4)
    assert (raw.headers["x-crossover-route"], raw.headers["x-crossover-backend"]) == ("local", "local")
    assert raw.parse().usage is not None


CALL: dict[str, Any] = {
    "model": "tiny-llama",
    "input": "search for cats",
    "tools": [TOOL],
    "tool_choice": {"type": "function", "name": "search"},
    "max_output_tokens": 20,
}


def test_function_tool(client: openai.OpenAI) -> None:
    """A named tool choice makes vLLM's structured decoding write the call, whatever the weights (its
    arguments, mostly whitespace and a string, are cut short by the token limit: random weights rarely
    close the object)."""
    response = client.responses.create(**CALL)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "search" and calls[0].arguments.lstrip().startswith("{")
    assert calls[0].call_id


def test_function_tool_streamed(client: openai.OpenAI) -> None:
    arguments, done = "", None
    with client.responses.create(**CALL, stream=True) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments += event.delta
            elif event.type == "response.function_call_arguments.done":
                done = event.arguments
    assert arguments.lstrip().startswith("{") and done == arguments


def test_json_schema(client: openai.OpenAI) -> None:
    """vLLM's structured decoding holds the text to the schema (a limit may cut the object short)."""
    response = client.responses.create(
        model="tiny-llama",
        input="a number",
        text={"format": SCHEMA},  # type: ignore[typeddict-item]
        max_output_tokens=30,
    )
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.output_text.lstrip().startswith("{")
    if response.status == "completed":
        assert isinstance(json.loads(response.output_text)["a"], int)


def test_previous_response_id_goes_to_the_backend(client: openai.OpenAI) -> None:
    """vLLM keeps no responses unless started with VLLM_ENABLE_RESPONSES_API_STORE: its refusal,
    not the gateway's, reaches the client (the gateway refuses only where it translates)."""
    with pytest.raises(openai.APIStatusError) as refused:
        client.responses.create(model="tiny-llama", input="hi", previous_response_id="resp_unknown")
    assert refused.value.status_code in (400, 404)


@pytest.fixture(scope="module")
def viachat(tmp_path_factory: pytest.TempPathFactory, vllm: Server) -> Iterator[Server]:
    """The same vLLM, its /v1/responses served by the gateway over its Chat Completions."""
    backend = {
        "kind": "openai_compatible",
        "base_url": vllm.url + "/v1",
        "models": [{"name": "tiny-llama"}],
        "responses_api": "chat",
    }
    server = start_gateway(tmp_path_factory.mktemp("viachat"), {"backends": {"local": backend}})
    yield server
    server.stop()


def test_over_chat(viachat: Server) -> None:
    """The translation back from vLLM's own chat answers and chunks, checked against OpenAI's schema."""
    body: dict[str, Any] = {
        "model": "tiny-llama",
        "input": "hi",
        "instructions": "Be brief.",
        "max_output_tokens": 8,
    }
    whole = httpx.post(viachat.url + "/v1/responses", json=body, timeout=60).json()
    assert_valid("Response", whole)
    # Dummy weights mostly run on to the limit: incomplete, unless they happened to stop.
    limited = whole["usage"]["output_tokens"] == 8
    assert whole["status"] == ("incomplete" if limited else "completed")
    streamed = httpx.post(viachat.url + "/v1/responses", json={**body, "stream": True}, timeout=60)
    final = check_stream(events_of(streamed), ENDS)
    assert 0 < final["usage"]["output_tokens"] <= 8


def test_over_chat_function_tool(viachat: Server) -> None:
    with openai.OpenAI(base_url=viachat.url + "/v1", api_key="unused", max_retries=0) as client:
        test_function_tool(client)
    events = events_of(httpx.post(viachat.url + "/v1/responses", json={**CALL, "stream": True}, timeout=60))
    final = check_stream(events, ENDS)
    assert final["output"][0]["type"] == "function_call"
    assert "response.function_call_arguments.delta" in [name for name, _ in events]


def test_generative_vllm_serves_no_embeddings(client: openai.OpenAI) -> None:
    """vLLM serves /v1/embeddings only for a pooling model (`--runner pooling`): its refusal of a
    generative one reaches the client as a 4xx, not a gateway failure."""
    with pytest.raises(openai.APIStatusError) as refused:
        client.embeddings.create(model="tiny-llama", input="hi")
    assert 400 <= refused.value.status_code < 500
