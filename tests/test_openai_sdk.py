"""The official OpenAI SDK against the gateway, with a real vLLM as `local` and the OpenAI
simulator as `api`. Every answer and every stream chunk is checked against OpenAI's own schema."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest

from tests.conftest import SIM_KEY
from tests.openai_schema import assert_valid
from tests.servers import Server

SIMPLE = [{"role": "user", "content": "hi"}]
HARD = [
    {
        "role": "user",
        "content": "Prove step by step that the integral of x^2 from 0 to 1 is 1/3, then implement "
        "def integrate(f, a, b): return ... in Python, analyze its error and compare it with Simpson's rule."
        * 3,
    }
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]


@pytest.fixture
def client(gateway: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
async def aclient(gateway: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(autouse=True)
def _clean_sim(openai_sim: Server) -> None:
    httpx.post(openai_sim.url + "/_sim/faults", json=[])
    httpx.delete(openai_sim.url + "/_sim/requests")


def sim_requests(openai_sim: Server) -> list[dict[str, object]]:
    requests: list[dict[str, object]] = httpx.get(openai_sim.url + "/_sim/requests").json()
    return requests


def test_simple_prompt_routes_to_local_vllm(client: openai.OpenAI) -> None:
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE, max_tokens=5)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert raw.headers["x-crossover-route"] == "local"
    assert raw.headers["x-crossover-backend"] == "local"
    assert raw.headers["x-crossover-model"] == "tiny-llama"
    assert float(raw.headers["x-crossover-score"]) < float(raw.headers["x-crossover-threshold"]) == 0.5
    # The gateway's own time: some, and less than the whole request took as the client saw it.
    assert 0 < float(raw.headers["x-crossover-overhead-ms"]) < elapsed_ms
    assert_valid("CreateChatCompletionResponse", json.loads(raw.content))
    completion = raw.parse()
    assert completion.model == "tiny-llama"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def test_hard_prompt_routes_to_api(client: openai.OpenAI, openai_sim: Server) -> None:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=HARD)
    assert raw.headers["x-crossover-route"] == "api"
    assert float(raw.headers["x-crossover-score"]) >= 0.5
    body = json.loads(raw.content)
    assert_valid("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"].startswith("echo: Prove step by step")
    assert sim_requests(openai_sim)[0]["model"] == "gpt-4o"


def test_route_header_overrides_the_score(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=SIMPLE, extra_headers={"x-crossover-route": "api"}
    )
    assert raw.headers["x-crossover-route"] == "api"
    assert raw.headers["x-crossover-backend"] == "openai"
    assert "x-crossover-score" not in raw.headers  # forced: the classifier is not consulted


def test_concrete_models_go_straight_to_their_backend(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HARD)
    assert (raw.headers["x-crossover-route"], raw.headers["x-crossover-backend"]) == ("direct", "openai")
    raw = client.chat.completions.with_raw_response.create(model="tiny-llama", messages=HARD, max_tokens=3)
    assert (raw.headers["x-crossover-route"], raw.headers["x-crossover-backend"]) == ("direct", "local")
    raw = client.chat.completions.with_raw_response.create(model="openai/gpt-4o", messages=SIMPLE)
    assert raw.headers["x-crossover-model"] == "gpt-4o"


def test_models_lists_routers_and_every_backend_model(client: openai.OpenAI, gateway: Server) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "auto"
    assert {"tiny-llama", "gpt-4o", "gpt-4o-mini"} <= set(ids)
    assert_valid("ListModelsResponse", httpx.get(gateway.url + "/v1/models").json())


def test_completions_endpoint(client: openai.OpenAI, gateway: Server) -> None:
    completion = client.completions.create(model="tiny-llama", prompt="Once upon a time", max_tokens=4)
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    body = httpx.post(
        gateway.url + "/v1/completions", json={"model": "gpt-4o", "prompt": "hello there", "max_tokens": 2}
    ).json()
    assert_valid("CreateCompletionResponse", body)


async def test_async_stream_reassembles_to_the_whole_answer(
    aclient: openai.AsyncOpenAI, gateway: Server
) -> None:
    whole = await aclient.chat.completions.create(model="gpt-4o", messages=HARD)
    stream = await aclient.chat.completions.create(model="gpt-4o", messages=HARD, stream=True)
    chunks = [chunk async for chunk in stream]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True))
    assert all(chunk.usage is None for chunk in chunks)  # not asked for: the usage chunk is stripped
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_usage_when_asked(client: openai.OpenAI, openai_sim: Server) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o", messages=SIMPLE, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens > 0
    # The gateway always asks upstream for usage, whatever the client asked.
    stream = client.chat.completions.create(model="gpt-4o", messages=SIMPLE, stream=True)
    list(stream)
    assert sim_requests(openai_sim)[-1]["stream_options"] == {"include_usage": True}


def test_raw_stream_chunks_match_the_schema(gateway: Server) -> None:
    request = {"model": "auto", "messages": SIMPLE, "stream": True, "max_tokens": 4}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-crossover-route"] == "local"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        assert_valid("CreateChatCompletionStreamResponse", json.loads(line[6:]))


def test_tools_whole_and_streamed(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "find crossover gateways"}]
    whole = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert whole.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"query": "find crossover gateways"}  # type: ignore[union-attr]
    arguments = ""
    for chunk in client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS, stream=True):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments += delta.function.arguments or ""  # type: ignore[union-attr]
    assert json.loads(arguments) == {"query": "find crossover gateways"}
    # A second turn with the tool's result, as an agent loop sends it.
    follow = client.chat.completions.create(
        model="gpt-4o",
        tools=TOOLS,
        messages=[
            *messages,
            whole.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "3 results"},
        ],
    )
    assert follow.choices[0].finish_reason == "stop"


def test_response_format_is_passed_through(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o", messages=SIMPLE, response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "hi"}


def test_extra_parameters_reach_the_backend_unchanged(client: openai.OpenAI, openai_sim: Server) -> None:
    extra = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "vendor_field": {"nested": [1, 2]}}
    client.chat.completions.create(model="gpt-4o", messages=SIMPLE, extra_body=extra, user="u1")
    sent = sim_requests(openai_sim)[-1]
    assert {k: sent[k] for k in extra} == extra and sent["user"] == "u1"
    # vLLM understands them: a 200 from the real server.
    completion = client.chat.completions.create(
        model="tiny-llama", messages=SIMPLE, max_tokens=3, extra_body=extra
    )
    assert completion.choices[0].finish_reason in ("length", "stop")


def test_vllm_validation_errors_reach_the_client_normalised(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-llama", messages=SIMPLE, max_tokens=100_000)
    body = info.value.response.json()
    assert_valid("ErrorResponse", body)
    assert body["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=SIMPLE)
    assert info.value.code == "model_not_found"
    assert info.value.body == {
        "message": "The model 'no-such-model' does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_upstream_429_keeps_retry_after(client: openai.OpenAI, openai_sim: Server) -> None:
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"status": 429, "retry_after": 7}])
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o", messages=SIMPLE)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["x-crossover-backend"] == "openai"
    assert info.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ({"status": 500}, openai.InternalServerError, 502),
        ({"status": 503}, openai.InternalServerError, 503),
    ],
)
def test_upstream_failures_map_to_gateway_statuses(
    client: openai.OpenAI, openai_sim: Server, fault: dict[str, int], error: type[Exception], status: int
) -> None:
    httpx.post(openai_sim.url + "/_sim/faults", json=[fault])
    with pytest.raises(error) as info:
        client.chat.completions.create(model="gpt-4o", messages=SIMPLE)
    assert info.value.status_code == status  # type: ignore[attr-defined]
    assert_valid("ErrorResponse", info.value.response.json())  # type: ignore[attr-defined]


def test_router_falls_back_when_its_target_fails(client: openai.OpenAI, openai_sim: Server) -> None:
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"status": 500}])
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=SIMPLE, max_tokens=3, extra_headers={"x-crossover-route": "api"}
    )
    assert raw.headers["x-crossover-fallback-from"] == "openai"
    assert raw.headers["x-crossover-backend"] == "local"
    assert raw.headers["x-crossover-route"] == "local"


def test_mid_stream_failure_ends_with_an_error_event(client: openai.OpenAI, openai_sim: Server) -> None:
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"cut_after": 3}])
    stream = client.chat.completions.create(model="gpt-4o", messages=HARD, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    assert "closed the connection" in info.value.message
    # And the gateway is fine afterwards.
    assert client.chat.completions.create(model="gpt-4o", messages=SIMPLE).choices[0].message.content


def test_provider_key_never_reaches_the_client_or_the_log(
    client: openai.OpenAI, gateway: Server, openai_sim: Server
) -> None:
    wrong = openai.OpenAI(
        base_url=openai_sim.url + "/v1", api_key="sk-wrong-but-long-key-1234", max_retries=0
    )
    with wrong, pytest.raises(openai.AuthenticationError) as direct:
        wrong.models.list()
    assert "sk-" in direct.value.message  # the real API quotes the key back; the gateway must not
    for fault in ({"status": 429}, {"status": 500}, {"status": 503}):
        httpx.post(openai_sim.url + "/_sim/faults", json=[fault])
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="gpt-4o", messages=SIMPLE)
        assert SIM_KEY not in info.value.response.text
    metrics = httpx.get(gateway.url + "/metrics").text
    assert SIM_KEY not in metrics and SIM_KEY[:12] not in metrics
    assert SIM_KEY not in gateway.log_text()
