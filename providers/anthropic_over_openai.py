"""Anthropic Messages carried over an OpenAI-compatible backend (the local vLLM): pure translation.

Request: anthropic_to_openai_request. Response: openai_to_anthropic_response. Stream: an
OpenAIToAnthropicStream turns chat.completion.chunk objects into Messages events in Anthropic's
order: message_start, ping, then per block content_block_start / _delta / _stop, message_delta
(stop reason and usage), message_stop. `thinking` and cache_control hints have no OpenAI
counterpart and are dropped; server tools and document blocks are refused with a 400.
"""

from __future__ import annotations

from typing import Any

import orjson

from providers.base import UnsupportedRequest, Usage
from providers.openai_compat import openai_usage
from providers.shapes import (
    array_or_empty,
    obj,
    obj_or_empty,
    string,
    string_array,
    string_or_none,
)

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    # Separate blocks stay separate lines (as vLLM joins text parts), not words run together.
    return "\n".join(
        string(b.get("text", ""), f"{where}[{i}].text")
        for i, b in enumerate(array_or_empty(content, where))
        if isinstance(b, dict) and b.get("type") == "text"
    )


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    where = f"{where}.source"
    source = obj(block.get("source"), where)
    url: Any
    if source.get("type") == "base64":
        media_type = string(source.get("media_type"), f"{where}.media_type")
        url = f"data:{media_type};base64,{string(source.get('data'), f'{where}.data')}"
    elif source.get("type") == "url":
        url = string(source.get("url"), f"{where}.url")
    else:
        raise UnsupportedRequest("image sources must be base64 or url", where)
    return {"type": "image_url", "image_url": {"url": url}}


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """One Anthropic user turn → tool messages (first, as OpenAI wants them after the assistant's
    calls) and at most one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(array_or_empty(content, where)):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": string(block.get("text", ""), f"{where}[{i}].text")})
        elif kind == "image":
            parts.append(_image_part(block, f"{where}[{i}]"))
        elif kind == "tool_result":
            text = _text(block.get("content"), f"{where}[{i}].content")
            if block.get("is_error"):
                text = f"[tool error] {text}"
            call_id = string_or_none(block.get("tool_use_id"), f"{where}[{i}].tool_use_id")
            tools.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            raise UnsupportedRequest(
                f"content blocks of type {kind!r} cannot be sent to this backend", f"{where}[{i}]"
            )
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        tools.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text else parts})
    return tools


def _call(block: dict[str, Any], where: str) -> dict[str, Any]:
    arguments = orjson.dumps(obj_or_empty(block.get("input"), f"{where}.input")).decode()
    return {
        "id": string_or_none(block.get("id"), f"{where}.id"),
        "type": "function",
        "function": {"name": string_or_none(block.get("name"), f"{where}.name"), "arguments": arguments},
    }


def _assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text = _text(content, where)
    calls = [
        _call(b, f"{where}[{i}]")
        for i, b in enumerate(content or [])
        if isinstance(b, dict) and b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(array_or_empty(tools, "tools")):
        tool = obj(tool, f"tools[{i}]")
        if "input_schema" not in tool:
            if tool.get("type") not in (None, "custom"):  # web search, code execution, ...
                raise UnsupportedRequest(
                    "server tools cannot run on this backend; only custom tools", f"tools[{i}]"
                )
            raise UnsupportedRequest(f"tools[{i}].input_schema is required", f"tools[{i}].input_schema")
        function = {
            "name": string(tool.get("name"), f"tools[{i}].name"),
            "parameters": obj(tool["input_schema"], f"tools[{i}].input_schema"),
        }
        if tool.get("description"):
            function["description"] = string(tool["description"], f"tools[{i}].description")
        out.append({"type": "function", "function": function})
    return out


def anthropic_to_openai_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text(system, "system")})
    for i, turn in enumerate(array_or_empty(body.get("messages"), "messages")):
        where = f"messages[{i}]"
        if obj(turn, where).get("role") == "assistant":
            messages.append(_assistant(turn.get("content"), f"{where}.content"))
        else:
            messages.extend(_user(turn.get("content"), f"{where}.content"))
    out: dict[str, Any] = {"model": model, "messages": messages}
    if isinstance(body.get("max_tokens"), int):
        out["max_tokens"] = body["max_tokens"]
    for same in ("temperature", "top_p", "top_k"):
        if body.get(same) is not None:
            out[same] = body[same]
    stop = string_array(body.get("stop_sequences"), "stop_sequences")
    if stop:
        out["stop"] = stop
    user = obj_or_empty(body.get("metadata"), "metadata").get("user_id")
    if isinstance(user, str):
        out["user"] = user
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
        choice = obj(body.get("tool_choice") or {"type": "auto"}, "tool_choice")
        kind = choice.get("type")
        out["tool_choice"] = (
            {"type": "function", "function": {"name": string(choice.get("name"), "tool_choice.name")}}
            if kind == "tool"
            else {"any": "required", "none": "none"}.get(str(kind), "auto")
        )
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def anthropic_usage_body(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": usage.input - usage.cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached,
        "output_tokens": usage.output,
    }


def _arguments(raw: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        parsed = None
    # A small local model may emit arguments that are not a JSON object; Anthropic clients need one.
    return parsed if isinstance(parsed, dict) else {"arguments": raw}


def _stop(choice: dict[str, Any]) -> tuple[str, str | None]:
    reason = STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")
    matched = choice.get("stop_reason")  # vLLM names the stop string it hit
    if reason == "end_turn" and isinstance(matched, str):
        return "stop_sequence", matched
    return reason, None


def openai_to_anthropic_response(completion: dict[str, Any]) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _arguments(function.get("arguments", "")),
            }
        )
    reason, sequence = _stop(choice)
    return {
        "id": f"msg_{completion.get('id', '')}",
        "type": "message",
        "role": "assistant",
        "model": completion.get("model", ""),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage_body(openai_usage(completion)),
    }


class OpenAIToAnthropicStream:
    """chat.completion.chunk dicts in, (event name, data) pairs out, in Anthropic's order."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self._block = -1  # index of the open content block, -1 when none is open
        self._block_kind: str | None = None
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index
        self._stop: tuple[str, str | None] | None = None
        self.usage: Usage | None = None

    def _start(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        self.started = True
        message: dict[str, Any] = {
            "id": f"msg_{chunk.get('id', '')}",
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message}), ("ping", {"type": "ping"})]

    def _close_block(self) -> list[tuple[str, dict[str, Any]]]:
        if self._block_kind is None:
            return []
        self._block_kind = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._block})]

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self._close_block()
        self._block += 1
        self._block_kind = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return [*events, ("content_block_start", start)]

    def _delta(self, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {"type": "content_block_delta", "index": self._block, "delta": delta}

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = [] if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = openai_usage(chunk)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._block_kind != "text":
                    events += self._open_block("text", {"type": "text", "text": ""})
                events.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                function = call.get("function") or {}
                if index not in self._tools:
                    block = {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": {},
                    }
                    events += self._open_block("tool_use", block)
                    self._tools[index] = self._block
                if function.get("arguments") and self._tools[index] == self._block:
                    events.append(
                        self._delta({"type": "input_json_delta", "partial_json": function["arguments"]})
                    )
            if choice.get("finish_reason"):
                self._stop = _stop(choice)
        return events

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        """After the upstream's last chunk (its usage chunk included)."""
        events = [] if self.started else self._start({})
        events += self._close_block()
        reason, sequence = self._stop or ("end_turn", None)
        usage = anthropic_usage_body(self.usage)
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage,
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events
