"""Translation between OpenAI's and Anthropic's wire formats, without a network: pure functions,
and property tests that streams reassemble into the whole answer wherever chunks are cut."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.anthropic_over_openai import (
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from providers.base import Completion, UnsupportedRequest
from providers.bridges import OpenAIOverAnthropic
from providers.openai_over_anthropic import (
    JSON_TOOL,
    AnthropicToOpenAIStream,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
)
from providers.shapes import MAX_DEPTH, nested_too_deep
from providers.sse import SSEDecoder, encode

TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "web",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


def to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    return openai_to_anthropic_request(body, "claude", 1024)


def test_system_and_developer_become_top_level_system_and_turns_merge() -> None:
    out = to_anthropic(
        {
            "model": "x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "no emojis"}]},
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
            ],
        }
    )
    assert out["system"] == [{"type": "text", "text": "be brief"}, {"type": "text", "text": "no emojis"}]
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert out["max_tokens"] == 1024


def test_tool_round_trip_request() -> None:
    out = to_anthropic(
        {
            "model": "x",
            "tools": [TOOL],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "messages": [
                {"role": "user", "content": "find it"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q": "a"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q": "b"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "r1"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "r2"}]},
                {"role": "user", "content": "thanks"},
            ],
        }
    )
    assert out["tools"] == [
        {"name": "search", "description": "web", "input_schema": TOOL["function"]["parameters"]}
    ]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assistant, results = out["messages"][1], out["messages"][2]
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "search", "input": {"q": "a"}},
        {"type": "tool_use", "id": "call_2", "name": "search", "input": {"q": "b"}},
    ]
    # Both results and the following user text share one user turn, results first.
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "r1"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "r2"}]},
            {"type": "text", "text": "thanks"},
        ],
    }


def test_images_stop_sampling_and_user() -> None:
    out = to_anthropic(
        {
            "model": "x",
            "stop": "END",
            "temperature": 1.7,
            "top_p": 0.9,
            "seed": 3,
            "user": "u",
            "max_completion_tokens": 50,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    ],
                }
            ],
        }
    )
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert (out["stop_sequences"], out["temperature"], out["top_p"], out["max_tokens"]) == (
        ["END"],
        1.0,
        0.9,
        50,
    )
    assert out["metadata"] == {"user_id": "u"}
    assert "seed" not in out


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "not json"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_what_cannot_be_expressed_is_refused_naming_the_parameter(extra: dict[str, Any], param: str) -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(UnsupportedRequest) as info:
        to_anthropic(body)
    assert info.value.param == param


def _deep(levels: int) -> Any:
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def _assistant_calls(calls: Any) -> list[dict[str, Any]]:
    return [*_user("hi"), {"role": "assistant", "content": None, "tool_calls": calls}]


# Chat fields of the wrong shape that once ended in a TypeError (a 500) on their way to Anthropic.
CHAT_TO_ANTHROPIC_MISSHAPEN: list[tuple[dict[str, Any], str]] = [
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 5]}, "stop[1]"),
    ({"tools": [{"type": "function", "function": "x"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": 5}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": "x"}}, "tool_choice.function"),
    ({"messages": _assistant_calls("x")}, "messages[1].tool_calls"),
    ({"messages": _assistant_calls(["x"])}, "messages[1].tool_calls[0]"),
    ({"messages": _assistant_calls([{"function": "x"}])}, "messages[1].tool_calls[0].function"),
    ({"messages": _assistant_calls([{"function": {"arguments": 5}}])}, "messages[1].tool_calls[0].function.arguments"),
    (
        {"messages": _assistant_calls([{"function": {"arguments": orjson.dumps(_deep(200)).decode()}}])},
        "messages[1].tool_calls[0].function.arguments",
    ),
    ({"messages": _user([{"type": "image_url", "image_url": "x"}])}, "messages[0].content[0].image_url"),
    ({"messages": _user([{"type": "text", "text": 5}])}, "messages[0].content[0].text"),
    ({"messages": [{"role": "system", "content": [{"type": "text", "text": []}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "tool", "content": "r", "tool_call_id": 5}]}, "messages[0].tool_call_id"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": 5}}}, "response_format.json_schema.schema"),
]  # fmt: skip

# Messages fields of the wrong shape that once ended in a TypeError on their way to an OpenAI backend.
MESSAGES_TO_CHAT_MISSHAPEN: list[tuple[dict[str, Any], str]] = [
    ({"metadata": "x"}, "metadata"),
    ({"tools": [{"name": "f", "input_schema": {}}], "tool_choice": "auto"}, "tool_choice"),
    ({"tools": [{"name": "f", "input_schema": "x"}]}, "tools[0].input_schema"),
    ({"tools": [{"name": 5, "input_schema": {}}]}, "tools[0].name"),
    ({"messages": _user([{"type": "text", "text": 5}])}, "messages[0].content[0].text"),
    ({"messages": _user([{"type": "image", "source": "x"}])}, "messages[0].content[0].source"),
    ({"messages": _user([{"type": "image", "source": {"type": "url", "url": 5}}])}, "messages[0].content[0].source.url"),
    ({"messages": _user([{"type": "tool_result", "tool_use_id": "t", "content": 5}])}, "messages[0].content[0].content"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": "x"}]}]}, "messages[0].content[0].input"),
    ({"system": [{"type": "text", "text": 5}]}, "system[0].text"),
    ({"stop_sequences": "X"}, "stop_sequences"),
    ({"stop_sequences": [5]}, "stop_sequences[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param"), CHAT_TO_ANTHROPIC_MISSHAPEN)
def test_misshapen_chat_fields_are_refused_naming_them(extra: dict[str, Any], param: str) -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(UnsupportedRequest) as info:
        to_anthropic(body)
    assert info.value.param == param


@pytest.mark.parametrize(("extra", "param"), MESSAGES_TO_CHAT_MISSHAPEN)
def test_misshapen_messages_fields_are_refused_naming_them(extra: dict[str, Any], param: str) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(UnsupportedRequest) as info:
        anthropic_to_openai_request(body, "tiny")
    assert info.value.param == param


def test_nesting_limit_is_exact_and_within_what_orjson_serialises() -> None:
    assert not nested_too_deep(_deep(MAX_DEPTH))
    assert nested_too_deep(_deep(MAX_DEPTH + 1))
    # What passes the limit still serialises after a translation wraps it in a few more levels.
    orjson.dumps([[[[[[_deep(MAX_DEPTH)]]]]]])


def test_response_format_is_emulated_with_a_forced_tool() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    bridge = OpenAIOverAnthropic(
        {
            "model": "x",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        },
        64,
    )
    request = bridge.request("claude")
    assert request["tools"][0]["input_schema"] == schema
    assert request["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    message = {
        "id": "msg_1",
        "model": "claude",
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 7},
        "content": [{"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {"city": "Paris"}}],
    }
    raw, _ = bridge.response(Completion(message, b"", 0.0))
    choice = orjson.loads(raw)["choices"][0]
    assert json.loads(choice["message"]["content"]) == {"city": "Paris"}
    assert (choice["finish_reason"], "tool_calls" in choice["message"]) == ("stop", False)


def test_response_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    message = {
        "id": "m",
        "model": "claude",
        "stop_reason": "max_tokens",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {
            "input_tokens": 10,
            "cache_creation_input_tokens": 20,
            "cache_read_input_tokens": 100,
            "output_tokens": 3,
        },
    }
    out = anthropic_to_openai_response(message, json_mode=False)
    assert out["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 3,
        "total_tokens": 133,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    assert out["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(stop: str, finish: str) -> None:
    message = {"id": "m", "model": "c", "stop_reason": stop, "content": [], "usage": {}}
    assert anthropic_to_openai_response(message, json_mode=False)["choices"][0]["finish_reason"] == finish


# ---- property tests: streams reassemble into the whole answer -----------------------------------

words = st.text(alphabet='abcdefgh xyz{}":,\\é', min_size=1, max_size=12)
tool_inputs = st.dictionaries(
    st.sampled_from(["q", "n", "deep"]),
    st.one_of(words, st.integers(-(2**63), 2**63 - 1), st.booleans()),
    max_size=3,
)
blocks = st.lists(
    st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, words),
        st.builds(
            lambda i, n: {
                "type": "tool_use",
                "id": f"toolu_{abs(hash(n)) % 10**6}",
                "name": "search",
                "input": i,
            },
            tool_inputs,
            words,
        ),
    ),
    min_size=1,
    max_size=4,
)
usages = st.fixed_dictionaries(
    {
        "input_tokens": st.integers(0, 500),
        "cache_read_input_tokens": st.integers(0, 50),
        "cache_creation_input_tokens": st.integers(0, 50),
        "output_tokens": st.integers(0, 500),
    }
)


def anthropic_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """How Anthropic streams this message."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [("message_start", {"type": "message_start", "message": start}), ("ping", {"type": "ping"})]
    for i, block in enumerate(message["content"]):
        empty = {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}
        events.append(
            ("content_block_start", {"type": "content_block_start", "index": i, "content_block": empty})
        )
        if block["type"] == "text":
            pieces = [
                {"type": "text_delta", "text": block["text"][j : j + 3]}
                for j in range(0, len(block["text"]), 3)
            ]
        else:
            raw = json.dumps(block["input"])
            pieces = [
                {"type": "input_json_delta", "partial_json": raw[j : j + 5]} for j in range(0, len(raw), 5)
            ]
        events += [
            ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": p}) for p in pieces
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def reassemble_openai(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    text, calls, finish, usage = "", {}, None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                entry["id"] = call.get("id") or entry["id"]
                entry["name"] = (call.get("function") or {}).get("name") or entry["name"]
                entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    # OpenAI clients index tool calls 0, 1, 2...: the count of tool_use blocks, not Anthropic's block index.
    assert sorted(calls) == list(range(len(calls)))
    return {"text": text, "calls": [calls[i] for i in sorted(calls)], "finish": finish, "usage": usage}


@settings(max_examples=150, deadline=None)
@given(
    blocks,
    st.sampled_from(["end_turn", "tool_use", "max_tokens"]),
    usages,
    st.lists(st.integers(0, 10**6), max_size=8),
)
def test_anthropic_stream_reassembles_to_the_whole_openai_answer(
    content: list[dict[str, Any]], stop: str, usage: dict[str, int], points: list[int]
) -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    whole = anthropic_to_openai_response(message, json_mode=False)
    wire = b"".join(encode(orjson.dumps(data), name) for name, data in anthropic_events(message))
    decoder, translator, chunks = SSEDecoder(), AnthropicToOpenAIStream(json_mode=False), []
    for piece in cut(wire, points):
        for event in decoder.feed(piece):
            chunks += translator.feed(event.event, orjson.loads(event.data))
    chunks.append(translator.usage_chunk())
    got = reassemble_openai(chunks)
    reply = whole["choices"][0]["message"]
    assert got["text"] == (reply["content"] or "")
    assert [
        {"id": c["id"], "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
        for c in reply.get("tool_calls", [])
    ] == [{"id": c["id"], "name": c["name"], "arguments": json.loads(c["arguments"])} for c in got["calls"]]
    assert got["finish"] == whole["choices"][0]["finish_reason"]
    assert got["usage"] == whole["usage"]


# ---- the front door: Anthropic clients over an OpenAI-compatible backend -------------------------


def test_messages_request_to_chat_request() -> None:
    out = anthropic_to_openai_request(
        {
            "model": "auto",
            "max_tokens": 9,
            "system": [{"type": "text", "text": "sys"}],
            "stop_sequences": ["X"],
            "top_k": 4,
            "metadata": {"user_id": "u"},
            "stream": True,
            "tools": [{"name": "search", "description": "web", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "search", "disable_parallel_tool_use": True},
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAA"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "ok"},
                        {"type": "tool_use", "id": "t1", "name": "search", "input": {"q": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "found"},
                        {"type": "text", "text": "and?"},
                    ],
                },
            ],
        },
        "tiny",
    )
    assert out["messages"] == [
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": "ok",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "search", "arguments": '{"q":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "found"},
        {"role": "user", "content": "and?"},
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "search"}}
    assert (out["parallel_tool_calls"], out["stop"], out["top_k"], out["user"]) == (False, ["X"], 4, "u")
    assert out["stream_options"] == {"include_usage": True}


def test_server_tools_are_refused() -> None:
    with pytest.raises(UnsupportedRequest) as info:
        anthropic_to_openai_request(
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tiny",
        )
    assert info.value.param == "tools[0]" and "server tools" in info.value.message


def test_a_custom_tool_without_a_schema_is_told_so_not_called_a_server_tool() -> None:
    with pytest.raises(UnsupportedRequest) as info:
        anthropic_to_openai_request(
            {"model": "m", "max_tokens": 1, "messages": [], "tools": [{"name": 5}]}, "tiny"
        )
    assert info.value.param == "tools[0].input_schema" and "server tools" not in info.value.message


openai_texts = st.lists(words, max_size=5)
openai_calls = st.lists(st.tuples(st.sampled_from(["search", "calc"]), tool_inputs), max_size=3)


@settings(max_examples=150, deadline=None)
@given(
    openai_texts,
    openai_calls,
    st.sampled_from(["stop", "length", "tool_calls"]),
    st.integers(0, 100),
    st.lists(st.integers(0, 10**6), max_size=8),
)
def test_openai_stream_reassembles_to_the_whole_anthropic_message(
    texts: list[str], calls: list[tuple[str, dict[str, Any]]], finish: str, cached: int, points: list[int]
) -> None:
    tool_calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
        for i, (n, a) in enumerate(calls)
    ]
    usage = {
        "prompt_tokens": 200,
        "completion_tokens": 17,
        "total_tokens": 217,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    completion = {
        "id": "c1",
        "model": "tiny",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }
    whole = openai_to_anthropic_response(completion)
    base = {"id": "c1", "object": "chat.completion.chunk", "model": "tiny", "created": 1}
    chunks = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    chunks += [
        {**base, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in texts
    ]
    for i, call in enumerate(tool_calls):
        args = call["function"]["arguments"]
        chunks.append(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": None,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": i,
                                    "id": call["id"],
                                    "type": "function",
                                    "function": {"name": call["function"]["name"], "arguments": ""},
                                }
                            ]
                        },
                    }
                ],
            }
        )
        chunks += [
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": None,
                        "delta": {"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 4]}}]},
                    }
                ],
            }
            for j in range(0, len(args), 4)
        ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({**base, "choices": [], "usage": usage})
    wire = b"".join(encode(orjson.dumps(c)) for c in chunks) + b"data: [DONE]\n\n"
    decoder, translator, events = SSEDecoder(), OpenAIToAnthropicStream("tiny"), []
    for piece in cut(wire, points):
        for event in decoder.feed(piece):
            if event.data != b"[DONE]":
                events += translator.feed(orjson.loads(event.data))
    events += translator.finish()
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop")
    content: list[dict[str, Any]] = []
    for name, data in events:
        if name == "content_block_start":
            content.append(dict(data["content_block"], _json=""))
        elif name == "content_block_delta":
            block, delta = content[data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                block["_json"] += delta["partial_json"]
    for block in content:
        raw = block.pop("_json")
        if block["type"] == "tool_use":
            block["input"] = json.loads(raw or "{}")
    assert content == whole["content"]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == whole["stop_reason"]
    assert delta["usage"] == whole["usage"]


def test_event_names_and_data_types_agree() -> None:
    translator = OpenAIToAnthropicStream("m")
    events = translator.feed(
        {"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}
    )
    events += translator.finish()
    assert all(name == data["type"] for name, data in events)
