"""Anthropic both ways, with real parts: the official `openai` SDK against chat completions routed to
the Anthropic simulator, and the official `anthropic` SDK against /v1/messages routed to the
simulator (natively) and to the real vLLM (translated)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from providers.anthropic import AnthropicProvider
from providers.http import HttpConfig
from tests.conftest import ANTHROPIC_KEY, CLAUDE
from tests.openai_schema import assert_valid
from tests.servers import Server

# A 1x1 PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}
SEARCH_TOOL = {
    "name": "search",
    "description": "Search the web",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


@pytest.fixture
def oai(gateway: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(gateway: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture(autouse=True)
def _clean_sim(anthropic_sim: Server) -> None:
    httpx.post(anthropic_sim.url + "/_sim/faults", json=[])
    httpx.delete(anthropic_sim.url + "/_sim/requests")


def sim_bodies(anthropic_sim: Server) -> list[dict[str, Any]]:
    return [r["body"] for r in httpx.get(anthropic_sim.url + "/_sim/requests").json()]


def fault(anthropic_sim: Server, *faults: dict[str, Any]) -> None:
    httpx.post(anthropic_sim.url + "/_sim/faults", json=list(faults))


# ---- OpenAI SDK → Anthropic backend ---------------------------------------------------------------


def test_openai_client_gets_claude_answers_in_openai_shape(oai: openai.OpenAI, anthropic_sim: Server) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=CLAUDE,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        stop=["there"],
    )
    body = json.loads(raw.content)
    assert_valid("CreateChatCompletionResponse", body)
    assert raw.headers["x-crossover-backend"] == "anthropic"
    assert body["choices"][0]["message"]["content"] == "echo: hello "
    assert body["choices"][0]["finish_reason"] == "stop"
    sent = sim_bodies(anthropic_sim)[-1]
    assert sent["system"] == [{"type": "text", "text": "be brief"}]
    assert (sent["max_tokens"], sent["stop_sequences"]) == (
        256,
        ["there"],
    )  # the backend's default_max_tokens
    headers = httpx.get(anthropic_sim.url + "/_sim/requests").json()[-1]["headers"]
    assert headers["x-api-key"] is True
    assert headers["anthropic-version"] == "2023-06-01"


def test_openai_stream_from_claude_reassembles(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "stream me a few words please"}]
    whole = oai.chat.completions.create(model=CLAUDE, messages=messages)
    chunks = list(
        oai.chat.completions.create(
            model=CLAUDE, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(mode="json", exclude_unset=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_openai_tools_over_claude_several_turns(oai: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "crossover gateway"}]
    first = oai.chat.completions.create(model=CLAUDE, messages=messages, tools=[SEARCH])
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert json.loads(call.function.arguments) == {"query": "crossover gateway"}  # type: ignore[union-attr]
    streamed = list(oai.chat.completions.create(model=CLAUDE, messages=messages, tools=[SEARCH], stream=True))
    deltas = [d for c in streamed if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "search"  # type: ignore[union-attr]
    assert all(d.id is None for d in deltas[1:])  # id and name go out once
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"query": "crossover gateway"}  # type: ignore[union-attr]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "3 results"},
    ]
    second = oai.chat.completions.create(model=CLAUDE, messages=messages, tools=[SEARCH], tool_choice="none")
    assert second.choices[0].message.content == "tool said: 3 results"


def test_openai_image_and_json_mode_over_claude(oai: openai.OpenAI, anthropic_sim: Server) -> None:
    reply = oai.chat.completions.create(
        model=CLAUDE,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is it"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
    )
    assert reply.choices[0].message.content == "echo: what is it [image]"
    source = sim_bodies(anthropic_sim)[-1]["messages"][0]["content"][1]["source"]
    assert source == {"type": "base64", "media_type": "image/png", "data": PNG}
    as_json = oai.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": "paris"}], response_format={"type": "json_object"}
    )
    assert json.loads(as_json.choices[0].message.content or "") == {"query": "paris"}
    assert as_json.choices[0].finish_reason == "stop"


def test_openai_errors_from_claude(oai: openai.OpenAI, anthropic_sim: Server) -> None:
    simple = [{"role": "user", "content": "hi"}]
    fault(anthropic_sim, {"status": 429, "retry_after": 4})
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model=CLAUDE, messages=simple)
    assert limited.value.response.headers["retry-after"] == "4"
    fault(anthropic_sim, {"status": 529})
    with pytest.raises(openai.InternalServerError) as overloaded:
        oai.chat.completions.create(model=CLAUDE, messages=simple)
    assert overloaded.value.status_code == 503
    assert overloaded.value.response.headers["retry-after"]
    assert_valid("ErrorResponse", overloaded.value.response.json())
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=CLAUDE, messages=simple, n=2)
    assert (refused.value.param, refused.value.code) == ("n", "unsupported_parameter")  # type: ignore[attr-defined]
    fault(anthropic_sim, {"stream_error": "overloaded_error"})
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(oai.chat.completions.create(model=CLAUDE, messages=simple, stream=True))
    assert ANTHROPIC_KEY not in overloaded.value.response.text


# ---- Anthropic SDK → Anthropic backend (native) ---------------------------------------------------


def test_anthropic_client_native_text_and_stream(claude: anthropic.Anthropic) -> None:
    whole = claude.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hello claude"}]
    )
    assert whole.headers["x-crossover-backend"] == "anthropic"
    message = whole.parse()
    assert message.content[0].text == "echo: hello claude"  # type: ignore[union-attr]
    with claude.messages.stream(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "hello claude"}]
    ) as stream:
        final = stream.get_final_message()
    assert [b.model_dump(include={"type", "text"}) for b in final.content] == [
        b.model_dump(include={"type", "text"}) for b in message.content
    ]
    assert final.stop_reason == message.stop_reason == "end_turn"
    assert final.usage.output_tokens == message.usage.output_tokens


def test_anthropic_beta_reaches_anthropic_but_not_a_translated_backend(
    claude: anthropic.Anthropic, oai: openai.OpenAI, anthropic_sim: Server, openai_sim: Server
) -> None:
    def sim_headers() -> dict[str, Any]:
        headers: dict[str, Any] = httpx.get(anthropic_sim.url + "/_sim/requests").json()[-1]["headers"]
        return headers

    betas = ["prompt-caching-2024-07-31", "token-efficient-tools-2025-02-19"]
    hi: Any = [{"role": "user", "content": "hi"}]
    claude.beta.messages.create(model=CLAUDE, max_tokens=8, messages=hi, betas=betas)
    assert sim_headers()["anthropic-beta"] == ",".join(betas)
    with claude.beta.messages.stream(model=CLAUDE, max_tokens=8, messages=hi, betas=betas) as stream:
        stream.get_final_message()
    assert sim_headers()["anthropic-beta"] == ",".join(betas)
    claude.beta.messages.count_tokens(model=CLAUDE, messages=hi, betas=betas)
    assert set(betas) <= set(sim_headers()["anthropic-beta"].split(","))  # the SDK adds its own
    claude.messages.create(model=CLAUDE, max_tokens=8, messages=hi)
    assert sim_headers()["anthropic-beta"] is None  # per request, not remembered
    # An OpenAI client's request is translated: Anthropic's beta header is not its to send.
    oai.chat.completions.create(model=CLAUDE, messages=hi, extra_headers={"anthropic-beta": "x"})
    assert sim_headers()["anthropic-beta"] is None
    # Nor does an Anthropic client's beta go to an OpenAI-compatible backend it is translated for.
    claude.beta.messages.create(model="gpt-4o", max_tokens=8, messages=hi, betas=betas)
    assert httpx.get(openai_sim.url + "/_sim/headers").json()[-1] == {"anthropic-beta": None}


def test_anthropic_client_routed_by_score_and_header(claude: anthropic.Anthropic) -> None:
    hard = claude.messages.with_raw_response.create(
        model="hybrid",
        max_tokens=50,
        extra_headers={"x-crossover-route": "api"},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert (hard.headers["x-crossover-route"], hard.headers["x-crossover-backend"]) == ("api", "anthropic")


def test_anthropic_client_tools_natively_several_turns(claude: anthropic.Anthropic) -> None:
    first = claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        tools=[SEARCH_TOOL],
        messages=[{"role": "user", "content": "weather in Paris"}],
    )
    use = next(b for b in first.content if b.type == "tool_use")
    with claude.messages.stream(
        model=CLAUDE,
        max_tokens=100,
        tools=[SEARCH_TOOL],
        messages=[{"role": "user", "content": "weather in Paris"}],
    ) as stream:
        streamed = stream.get_final_message()
    assert (
        next(b for b in streamed.content if b.type == "tool_use").input
        == use.input
        == {"query": "weather in Paris"}
    )  # type: ignore[union-attr]
    second = claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        tools=[SEARCH_TOOL],
        messages=[
            {"role": "user", "content": "weather in Paris"},
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},  # type: ignore[union-attr]
        ],
    )
    assert second.content[0].text == "tool said: sunny"  # type: ignore[union-attr]


def test_anthropic_client_errors_keep_their_shape(
    claude: anthropic.Anthropic, gateway: Server, anthropic_sim: Server
) -> None:
    fault(anthropic_sim, {"status": 429, "retry_after": 3})
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="claude-9", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    bad = httpx.post(
        gateway.url + "/v1/messages", json={"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]}
    )
    assert bad.status_code == 400
    assert bad.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Missing required parameter: 'max_tokens'."},
    }
    fault(anthropic_sim, {"stream_error": "overloaded_error"})
    with (
        pytest.raises(anthropic.APIStatusError),
        claude.messages.stream(
            model=CLAUDE, max_tokens=50, messages=[{"role": "user", "content": "a b c d"}]
        ) as stream,
    ):
        stream.get_final_message()


def hybrid_decisions(gateway: Server) -> float:
    lines = httpx.get(gateway.url + "/metrics").text.splitlines()
    return sum(
        float(line.split()[-1])
        for line in lines
        if line.startswith("crossover_routing_decisions_total{") and 'router="hybrid"' in line
    )


def test_count_tokens_native_and_on_vllm(claude: anthropic.Anthropic, gateway: Server) -> None:
    native = claude.messages.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "one two three"}]
    )
    assert native.input_tokens == 13  # the simulator: 10 + words
    local = claude.messages.count_tokens(
        model="tiny-llama", messages=[{"role": "user", "content": "one two three"}]
    )
    assert local.input_tokens > 3  # vLLM's own tokenizer, chat template included
    # Through a router: counted where the request would go, without counting as a routing decision.
    before = hybrid_decisions(gateway)
    routed = claude.messages.with_raw_response.count_tokens(
        model="hybrid", messages=[{"role": "user", "content": "one two three"}]
    )
    assert routed.headers["x-crossover-route"] == "local"
    assert routed.parse().input_tokens == local.input_tokens
    assert hybrid_decisions(gateway) == before


# ---- Anthropic SDK → the real vLLM (translated) ---------------------------------------------------


def test_anthropic_client_on_vllm_text_and_stream_order(claude: anthropic.Anthropic, gateway: Server) -> None:
    raw = claude.messages.with_raw_response.create(
        model="hybrid", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert (raw.headers["x-crossover-route"], raw.headers["x-crossover-backend"]) == ("local", "local")
    message = raw.parse()
    assert message.model == "tiny-llama"
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0
    request = {
        "model": "tiny-llama",
        "max_tokens": 4,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with httpx.stream("POST", gateway.url + "/v1/messages", json=request) as response:
        frames = [line for line in response.iter_lines() if line.startswith("event: ")]
    names = [f[7:] for f in frames]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") >= 1
    with claude.messages.stream(
        model="tiny-llama", max_tokens=6, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 6
    assert final.stop_reason == "max_tokens"


def test_anthropic_client_on_vllm_with_a_tool_conversation(claude: anthropic.Anthropic) -> None:
    reply = claude.messages.create(
        model="tiny-llama",
        max_tokens=5,
        tools=[SEARCH_TOOL],
        tool_choice={"type": "none"},
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"query": "weather"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
            },
        ],
    )
    assert reply.role == "assistant"
    assert reply.stop_reason == "max_tokens"


def test_anthropic_image_on_a_text_only_vllm_is_a_clean_400(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model="tiny-llama",
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {"type": "text", "text": "what is it"},
                    ],
                }
            ],
        )
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_a_clients_betas_join_the_ones_the_backend_is_configured_with(anthropic_sim: Server) -> None:
    config = HttpConfig("anthropic", anthropic_sim.url + "/v1", headers={"anthropic-beta": "operator-beta"})
    provider = AnthropicProvider(config, ANTHROPIC_KEY, "2023-06-01")
    body = {"model": CLAUDE, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}

    async def last_beta() -> str | None:
        async with httpx.AsyncClient() as client:
            beta: str | None = (await client.get(anthropic_sim.url + "/_sim/requests")).json()[-1]["headers"][
                "anthropic-beta"
            ]
        return beta

    try:
        await provider.complete("/messages", body, {"anthropic-beta": "client-beta"})
        assert await last_beta() == "operator-beta,client-beta"
        await provider.complete("/messages", body)
        assert await last_beta() == "operator-beta"
    finally:
        await provider.close()
