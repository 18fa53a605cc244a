"""`POST /v1/responses` through the gateway with the official SDK's `responses.create`: passed through
to the OpenAI simulator, translated (Responses → Chat → Messages) for the Anthropic simulator, and
routed by a router to either. Every translated body and event is checked against OpenAI's schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ANTHROPIC_KEY, CLAUDE, SIM_KEY, sim_backend
from tests.openai_schema import assert_valid
from tests.servers import Server, start_gateway
from tests.test_bad_input import check_error
from tests.test_metrics import samples, value

PRICE = {"usd_per_million_input_tokens": 2.5, "usd_per_million_output_tokens": 10.0}
CLAUDE_PRICE = {"usd_per_million_input_tokens": 3.0, "usd_per_million_output_tokens": 15.0}
TOOL = {
    "type": "function",
    "name": "search",
    "description": "Search the web",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "strict": False,
}
SCHEMA = {
    "type": "json_schema",
    "name": "answer",
    "schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
}
HARD = (
    "Prove step by step that the integral of x^2 from 0 to 1 is 1/3, then implement "
    "def integrate(f, a, b): return ... in Python, analyze its error and compare it with Simpson's rule."
) * 3
# Passed through; translated to the simulator's Chat Completions; translated to Messages.
BOTH = pytest.mark.parametrize(
    "model", ["gpt-4o", "gpt-4o-mini", CLAUDE], ids=["native", "chat", "anthropic"]
)


def config(openai_sim: Server, anthropic_sim: Server) -> dict[str, Any]:
    anthropic = {
        "kind": "anthropic",
        "base_url": anthropic_sim.url + "/v1",
        "api_key": "${SIM_ANTHROPIC_KEY}",
        "default_max_tokens": 64,
        "models": [{"name": CLAUDE, "price": CLAUDE_PRICE}],
    }
    # `viachat` is the same simulator reached through its Chat Completions (`responses_api: chat`).
    viachat = sim_backend(openai_sim, {"name": "gpt-4o-mini", "price": PRICE}, responses_api="chat")
    local = "viachat/gpt-4o-mini"
    return {
        "backends": {
            "openai": sim_backend(openai_sim, {"name": "gpt-4o", "price": PRICE}),
            "viachat": viachat,
            "anthropic": anthropic,
        },
        "routers": {
            "auto": {"local": local, "api": "openai/gpt-4o", "classifier": "heuristic"},
            "hybrid": {"local": local, "api": f"anthropic/{CLAUDE}", "classifier": "heuristic"},
        },
    }


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, openai_sim: Server, anthropic_sim: Server
) -> Iterator[Server]:
    env = {"SIM_OPENAI_KEY": SIM_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY}
    server = start_gateway(tmp_path_factory.mktemp("responses"), config(openai_sim, anthropic_sim), env=env)
    yield server
    server.stop()


@pytest.fixture
def client(gw: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def post(gw: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + "/v1/responses", json=body, timeout=20)


def events_of(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; the name must repeat the data's type, as OpenAI's do."""
    out = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines.get("event") == data["type"]
        out.append((data["type"], data))
    return out


def check_stream(
    events: list[tuple[str, dict[str, Any]]], ends: tuple[str, ...] = ("response.completed",)
) -> dict[str, Any]:
    """Valid events, numbered in order, opening and closing as OpenAI's do: the final response."""
    for _, data in events:
        assert_valid("ResponseStreamEvent", data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    names = [n for n, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] in ends
    for at in {d["output_index"] for n, d in events if n == "response.output_item.added"}:
        mine = [n for n, d in events if d.get("output_index") == at]
        assert mine[0] == "response.output_item.added" and mine[-1] == "response.output_item.done"
    final: dict[str, Any] = events[-1][1]["response"]
    assert_valid("Response", final)
    return final


@BOTH
def test_text_whole(client: openai.OpenAI, gw: Server, model: str) -> None:
    response = client.responses.create(model=model, input="hi there", instructions="Be brief.")
    assert "hi there" in response.output_text
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    raw = post(gw, {"model": model, "input": "hi there"})
    assert_valid("Response", raw.json())
    backends = {"gpt-4o": "openai", "gpt-4o-mini": "viachat", CLAUDE: "anthropic"}
    assert raw.headers["x-crossover-backend"] == backends[model]


@BOTH
def test_text_streamed(client: openai.OpenAI, gw: Server, model: str) -> None:
    text, final = "", None
    with client.responses.create(model=model, input="stream me please", stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.completed":
                final = event.response
    assert final is not None and final.output_text == text and "stream me please" in text
    assert final.usage is not None and final.usage.output_tokens > 0
    events = events_of(post(gw, {"model": model, "input": "stream me please", "stream": True}))
    names = [n for n, _ in events]
    assert names[2:5] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert names[-5:-1] == [
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert check_stream(events)["output"][0]["content"][0]["text"] == text


@BOTH
def test_function_tool(client: openai.OpenAI, gw: Server, model: str, anthropic_sim: Server) -> None:
    response = client.responses.create(model=model, input="weather in Oslo", tools=[TOOL])  # type: ignore[list-item]
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "search" and json.loads(call.arguments) == {"query": "weather in Oslo"}
    assert_valid("Response", post(gw, {"model": model, "input": "weather in Oslo", "tools": [TOOL]}).json())
    # The call's result goes back as items: the backend answers from it, no new call.
    follow = client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": "weather in Oslo"},
            {"type": "function_call", "call_id": call.call_id, "name": "search", "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
        tools=[TOOL],  # type: ignore[list-item]
    )
    assert all(item.type == "message" for item in follow.output) and follow.output_text
    if model == CLAUDE:
        sent = httpx.get(anthropic_sim.url + "/_sim/requests").json()[-1]["body"]
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
        assert sent["messages"][1]["content"][0]["type"] == "tool_use"
        assert sent["messages"][2]["content"][0] == {
            "type": "tool_result",
            "tool_use_id": call.call_id,
            "content": "sunny, 21 C",
        }


@BOTH
def test_function_tool_streamed(client: openai.OpenAI, gw: Server, model: str) -> None:
    arguments = ""
    with client.responses.create(model=model, input="weather in Oslo", tools=[TOOL], stream=True) as stream:  # type: ignore[list-item]
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments += event.delta
            elif event.type == "response.function_call_arguments.done":
                assert event.arguments == arguments
    assert json.loads(arguments) == {"query": "weather in Oslo"}
    events = events_of(
        post(gw, {"model": model, "input": "weather in Oslo", "tools": [TOOL], "stream": True})
    )
    names = [n for n, _ in events]
    assert "response.function_call_arguments.delta" in names
    assert names[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = check_stream(events)
    assert final["output"][-1]["type"] == "function_call"


@BOTH
def test_json_schema(client: openai.OpenAI, gw: Server, model: str) -> None:
    """The answer is one JSON object, as text (on Anthropic, the forced tool's input becomes the text)."""
    response = client.responses.create(model=model, input="the answer", text={"format": SCHEMA})  # type: ignore[typeddict-item]
    assert "the answer" in json.loads(response.output_text).values()
    assert [item.type for item in response.output] == ["message"]
    streamed = post(gw, {"model": model, "input": "the answer", "text": {"format": SCHEMA}, "stream": True})
    final = check_stream(events_of(streamed))
    assert "the answer" in json.loads(final["output"][0]["content"][0]["text"]).values()


def test_translated_request(gw: Server, anthropic_sim: Server) -> None:
    """What the Anthropic backend is sent for instructions, limits and sampling knobs."""
    body = {
        "model": CLAUDE,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        "instructions": "Be brief.",
        "max_output_tokens": 40,
        "temperature": 0.3,
        "store": False,
    }
    answered = post(gw, body)
    assert answered.status_code == 200, answered.text
    sent = httpx.get(anthropic_sim.url + "/_sim/requests").json()[-1]["body"]
    assert sent["system"] == [{"type": "text", "text": "Be brief."}]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    assert (sent["max_tokens"], sent["temperature"]) == (40, 0.3)
    assert post(gw, {"model": CLAUDE, "input": "x", "top_p": 0.9}).status_code == 200
    assert httpx.get(anthropic_sim.url + "/_sim/requests").json()[-1]["body"]["top_p"] == 0.9


def test_routed(client: openai.OpenAI) -> None:
    easy = client.responses.with_raw_response.create(model="hybrid", input="hi")
    assert easy.headers["x-crossover-route"] == "local" and easy.headers["x-crossover-model"] == "gpt-4o-mini"
    hard = client.responses.with_raw_response.create(
        model="hybrid", input=[{"role": "user", "content": HARD}]
    )
    assert hard.headers["x-crossover-route"] == "api" and hard.headers["x-crossover-backend"] == "anthropic"
    assert float(hard.headers["x-crossover-score"]) > float(easy.headers["x-crossover-score"])
    assert "Prove step by step" in hard.parse().output_text
    header = client.responses.with_raw_response.create(
        model="auto", input="hi", extra_headers={"x-crossover-route": "api"}
    )
    assert header.headers["x-crossover-model"] == "gpt-4o"


def test_previous_response_id(client: openai.OpenAI) -> None:
    """Kept state is the backend's: passed through to OpenAI, refused for a translated backend."""
    first = client.responses.create(model="gpt-4o", input="remember pears")
    second = client.responses.create(model="gpt-4o", input="and now?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and "remember pears" in second.output_text
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=CLAUDE, input="and now?", previous_response_id=first.id)
    assert refused.value.body["param"] == "previous_response_id"  # type: ignore[index]


@BOTH
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": 5}, "input"),
        ({"input": [1]}, "input[0]"),
        ({"input": [{"content": "hi"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": 3}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 1}]}, "input[0].output"),
        (
            {"input": [{"type": "function_call", "call_id": 1, "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        ({"input": "hi", "instructions": 3}, "instructions"),
        ({"input": "hi", "tools": {}}, "tools"),
        ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": []}]},
            "tools[0].parameters",
        ),
        ({"input": "hi", "text": {"format": []}}, "text.format"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "temperature": "hot"}, "temperature"),
        ({"input": "hi", "store": "no"}, "store"),
        ({"input": "hi", "stream": 1}, "stream"),
    ],
)
def test_bad_input(gw: Server, model: str, body: dict[str, Any], param: str) -> None:
    check_error(post(gw, {"model": model, **body}), 400, param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
        ({"input": [{"role": "critic", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "hi", "text": {"format": {"type": "grammar"}}}, "text.format.type"),
        ({"input": "hi", "background": True}, "background"),
        ({"input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"input": "hi", "conversation": {"id": "conv_1"}}, "conversation"),
        ({"input": [{"id": "msg_1"}]}, "input[0]"),  # an item reference: its type may be left out
    ],
)
def test_untranslatable(gw: Server, body: dict[str, Any], param: str) -> None:
    """What Chat Completions cannot carry is refused for the Anthropic backend, naming the field."""
    check_error(post(gw, {"model": CLAUDE, **body}), 400, param)


def test_cost_and_metrics(gw: Server) -> None:
    before = samples(gw)
    whole = post(gw, {"model": "gpt-4o", "input": "count my tokens please"}).json()["usage"]
    streamed = check_stream(events_of(post(gw, {"model": "gpt-4o", "input": "and mine", "stream": True})))[
        "usage"
    ]
    claude = post(gw, {"model": CLAUDE, "input": "and these"}).json()["usage"]
    after = samples(gw)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    given = whole["input_tokens"] + streamed["input_tokens"]
    made = whole["output_tokens"] + streamed["output_tokens"]
    assert grew("crossover_tokens_total", backend="openai", kind="input") == given
    assert grew("crossover_tokens_total", backend="openai", kind="output") == made
    assert grew("crossover_cost_usd_total", backend="openai") == pytest.approx(given * 2.5e-6 + made * 10e-6)
    assert grew("crossover_cost_usd_total", backend="anthropic") == pytest.approx(
        claude["input_tokens"] * 3e-6 + claude["output_tokens"] * 15e-6
    )
    assert grew("crossover_requests_total", status_class="2xx") == 3
    assert grew("crossover_time_to_first_token_seconds_count", backend="openai") == 1  # the stream's


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini"], ids=["native", "chat"])
def test_cut_stream_ends_with_an_error(gw: Server, openai_sim: Server, model: str) -> None:
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"cut_after": 4}])
    with (
        openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0) as client,
        pytest.raises(openai.APIError) as raised,
    ):
        for _ in client.responses.create(model=model, input="one two three", stream=True):
            pass
    assert "backend" in raised.value.message
    # The error is a Responses `error` event, numbered after the events before it.
    before = samples(gw)
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"cut_after": 4}])
    events = events_of(post(gw, {"model": model, "input": "one two three", "stream": True}))
    name, error = events[-1]
    assert name == "error" and error["code"] == "upstream_error" and error["message"]
    assert_valid("ResponseErrorEvent", error)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    # Its usage is estimated from the Responses input, as its door measures it: 13 characters, 4 tokens.
    backend = "openai" if model == "gpt-4o" else "viachat"
    after = samples(gw)
    counted = "crossover_tokens_total"
    assert (
        value(after, counted, backend=backend, kind="input")
        - value(before, counted, backend=backend, kind="input")
        == 4
    )


def test_usage_of_translated_body_matches_the_backend(
    gw: Server, anthropic_sim: Server, tmp_path: Path
) -> None:
    body = post(gw, {"model": CLAUDE, "input": "usage please", "max_output_tokens": 16}).json()
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"]
    assert body["max_output_tokens"] == 16 and body["store"] is False


def test_passthrough_forwards_what_it_does_not_read(gw: Server, openai_sim: Server) -> None:
    """Items and tools the gateway does not translate are the Responses backend's to judge."""
    body = {
        "model": "gpt-4o",
        "input": [{"id": "msg_1"}, {"type": "reasoning", "summary": []}, {"role": "user", "content": "hi"}],
        "tools": [{"type": "web_search"}],
        "conversation": {"id": "conv_1"},
        "include": ["message.output_text.logprobs"],
    }
    answered = post(gw, body)
    assert answered.status_code == 200, answered.text
    sent = httpx.get(openai_sim.url + "/_sim/requests").json()[-1]
    assert sent == {**body, "model": "gpt-4o"}
