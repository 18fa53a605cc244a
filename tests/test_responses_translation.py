"""The pure Responses ⇄ Chat translators (providers/responses.py), without any network: requests,
the router's view, and streams that must reassemble into the whole answer."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier import extract_features
from providers.base import UnsupportedRequest, Usage
from providers.responses import (
    ChatToResponsesStream,
    chat_to_responses_response,
    responses_chat_view,
    responses_to_chat_request,
)
from tests.openai_schema import assert_valid

TOOL = {"type": "function", "name": "search", "parameters": {"type": "object"}, "strict": True}


def test_items_become_chat_turns() -> None:
    body = {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "let me look"}],
            },
            {"type": "function_call", "call_id": "c1", "name": "search", "arguments": '{"q":1}'},
            {"type": "function_call", "call_id": "c2", "name": "search", "arguments": '{"q":2}'},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "two"}],
            },
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "search"},
        "text": {
            "format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}
        },
        "max_output_tokens": 9,
        "temperature": 0.5,
        "stream": True,
        "store": True,
    }
    chat = responses_to_chat_request(body)
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": "let me look",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "search", "arguments": '{"q":2}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}, "strict": True}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "search"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": True},
    }
    assert (chat["max_completion_tokens"], chat["temperature"]) == (9, 0.5)
    assert chat["stream_options"] == {"include_usage": True}  # usage is needed for response.completed
    assert "store" not in chat
    assert_valid("CreateChatCompletionRequest", {**chat, "model": "gpt-4o"})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"tools": [{"type": "function", "name": 3}]}, "tools[0].name"),
        ({"tool_choice": {"type": "mcp"}, "tools": [TOOL]}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "name": "n", "schema": []}}}, "text.format.schema"),
    ],
)
def test_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedRequest) as refused:
        responses_to_chat_request({"model": "m", "input": "hi", **body})
    assert refused.value.param == param


def test_router_reads_a_chat_view() -> None:
    body = {
        "input": [
            {"role": "user", "content": "first question"},
            {"type": "function_call_output", "call_id": "c", "output": "tool said"},
            {"role": "user", "content": [{"type": "input_text", "text": "the real question"}]},
            {"type": "reasoning", "summary": []},  # forwarded as is, scored as nothing
        ],
        "instructions": "sys",
        "tools": [TOOL],
        "text": {"format": {"type": "json_schema"}},
        "max_output_tokens": 77,
    }
    features = extract_features(responses_chat_view(body))
    assert features.text == "the real question" and features.turns == 2
    assert features.total_chars == len("sys" + "first question" + "tool said" + "the real question")
    assert (features.has_tools, features.response_format, features.max_tokens) == (True, "json_schema", 77)
    assert extract_features(responses_chat_view({"input": "plain"})).text == "plain"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _without_ids(response: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in response.items() if k not in ("id", "created_at", "completed_at")}
    out["output"] = [{k: v for k, v in item.items() if k != "id"} for item in response["output"]]
    return out


pieces = st.lists(st.text(min_size=1, max_size=5), max_size=4)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    text=pieces, calls=st.lists(st.tuples(st.sampled_from(["a", "b"]), pieces), max_size=3), cut=st.booleans()
)
def test_stream_reassembles_into_the_whole_answer(
    text: list[str], calls: list[tuple[str, list[str]]], cut: bool
) -> None:
    request = {"model": "m", "input": "q", "tools": [TOOL]}
    stream = ChatToResponsesStream(request)
    events = stream.feed(_chunk({"role": "assistant", "content": ""}))
    events += [e for piece in text for e in stream.feed(_chunk({"content": piece}))]
    for index, (name, fragments) in enumerate(calls):
        head = {
            "index": index,
            "id": f"call_{index}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events += stream.feed(_chunk({"tool_calls": [head]}))
        for fragment in fragments:
            events += stream.feed(
                _chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
            )
    finish = "length" if cut else "tool_calls" if calls else "stop"
    events += stream.feed(_chunk({}, finish))
    usage = Usage(input=5, output=7, cached=2)
    events += stream.finish_events(usage)
    for _, data in events:
        assert_valid("ResponseStreamEvent", data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    names = [n for n, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] == ("response.incomplete" if cut else "response.completed")
    # Each item opens before its deltas and closes once; deltas add up to what is done.
    added = [d["output_index"] for n, d in events if n == "response.output_item.added"]
    done = [d["output_index"] for n, d in events if n == "response.output_item.done"]
    assert added == done == list(range(len(added)))
    streamed = events[-1][1]["response"]
    message = {
        "role": "assistant",
        "content": "".join(text) or None,
        "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": "".join(f)}}
            for i, (n, f) in enumerate(calls)
        ],
    }
    whole = chat_to_responses_response(
        {"model": "m", "choices": [{"index": 0, "message": message, "finish_reason": finish}]}, request, usage
    )
    assert_valid("Response", whole)
    assert _without_ids(streamed) == _without_ids(whole)
    assert whole["usage"]["input_tokens_details"]["cached_tokens"] == 2
