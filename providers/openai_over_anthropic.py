"""OpenAI Chat Completions carried over Anthropic's Messages API: pure translation functions.

Request: openai_to_anthropic_request. Response: anthropic_to_openai_response. Stream: an
AnthropicToOpenAIStream turns Messages events into chat.completion.chunk objects as they arrive.
What Messages cannot express raises UnsupportedRequest naming the parameter; sampling knobs without
an equivalent (`seed`, `presence_penalty`, `frequency_penalty`, `logit_bias`, `service_tier`, `store`)
are dropped, and `temperature` is capped at Anthropic's maximum of 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from providers.anthropic import anthropic_usage
from providers.base import UnsupportedRequest, Usage
from providers.shapes import (
    array_or_empty,
    nested_too_deep,
    obj,
    obj_or_empty,
    string,
    string_or_none,
    strings,
)

# The forced tool that emulates `response_format` json_object / json_schema.
JSON_TOOL = "json_response"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_REFUSED: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v not in (None, 1),
    "logprobs": lambda v: bool(v),
    "top_logprobs": lambda v: v is not None,
    "audio": lambda v: v is not None,
    "prediction": lambda v: v is not None,
    "modalities": lambda v: v not in (None, ["text"]),
    "functions": lambda v: v is not None,
}


def _text_of(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for i, part in enumerate(array_or_empty(content, where)):
        if isinstance(part, dict) and part.get("type") == "text":
            blocks.append({"type": "text", "text": string(part.get("text", ""), f"{where}[{i}].text")})
        elif isinstance(part, dict) and part.get("type") == "refusal":
            continue
        else:
            raise UnsupportedRequest(f"only text parts are supported here, not {part!r:.60}", f"{where}[{i}]")
    return blocks


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    url = obj_or_empty(part.get("image_url"), f"{where}.image_url").get("url")
    if not isinstance(url, str):
        raise UnsupportedRequest("an image part needs image_url.url", f"{where}.image_url.url")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0]
        if ";base64" not in header or not media_type:
            raise UnsupportedRequest(
                "image data URLs must be base64 with a media type", f"{where}.image_url.url"
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}  # Anthropic fetches it, not us
    raise UnsupportedRequest("image URLs must be http(s) or data: URLs", f"{where}.image_url.url")


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_of(content, where)
    blocks = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": string(part.get("text", ""), f"{where}[{i}].text")})
        elif kind == "image_url":
            blocks.append(_image(part, f"{where}[{i}]"))
        else:
            raise UnsupportedRequest(
                f"content parts of type {kind!r} cannot be sent to Anthropic", f"{where}[{i}]"
            )
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    call = obj(call, where)
    function = obj_or_empty(call.get("function"), f"{where}.function")
    arguments = string(function.get("arguments") or "{}", f"{where}.function.arguments")
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    # Nested arguments are checked like a body: they are parsed here, so the front door never saw them.
    if not isinstance(parsed, dict) or nested_too_deep(parsed):
        raise UnsupportedRequest(
            "tool call arguments must be a JSON object (nested at most as deep as a request)",
            f"{where}.function.arguments",
        )
    return {
        "type": "tool_use",
        "id": string_or_none(call.get("id"), f"{where}.id"),
        "name": string_or_none(function.get("name"), f"{where}.function.name"),
        "input": parsed,
    }


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, turns). Consecutive same-role turns merge: Anthropic wants them alternating,
    and wants every tool result of one assistant turn in the single user turn after it."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = obj(message, where).get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_of(content, f"{where}.content"))
        elif role == "user":
            add("user", _user_blocks(content, f"{where}.content"))
        elif role == "assistant":
            blocks = _text_of(content, f"{where}.content")
            calls = array_or_empty(message.get("tool_calls"), f"{where}.tool_calls")
            blocks += [_tool_use(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
            add("assistant", blocks)
        elif role == "tool":
            result = content if isinstance(content, str) else _text_of(content, f"{where}.content")
            call_id = string_or_none(message.get("tool_call_id"), f"{where}.tool_call_id")
            add("user", [{"type": "tool_result", "tool_use_id": call_id, "content": result}])
        else:
            raise UnsupportedRequest(
                f"messages with role {role!r} cannot be sent to Anthropic", f"{where}.role"
            )
    return system, turns


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(array_or_empty(tools, "tools")):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise UnsupportedRequest("only function tools can be sent to Anthropic", f"tools[{i}]")
        where = f"tools[{i}].function"
        function = obj(tool.get("function"), where)
        spec = {
            "name": string(function.get("name"), f"{where}.name"),
            "input_schema": obj_or_empty(function.get("parameters"), f"{where}.parameters")
            or {"type": "object"},
        }
        if function.get("description"):
            spec["description"] = string(function["description"], f"{where}.description")
        out.append(spec)
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice in (None, "auto"):
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = obj_or_empty(choice.get("function"), "tool_choice.function")
        return {"type": "tool", "name": string_or_none(function.get("name"), "tool_choice.function.name")}
    raise UnsupportedRequest(f"tool_choice {choice!r:.60} has no Anthropic equivalent", "tool_choice")


def openai_to_anthropic_request(body: dict[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    for param, refused in _REFUSED.items():
        if refused(body.get(param)):
            raise UnsupportedRequest(f"'{param}' is not supported by Anthropic backends", param)
    system, turns = _messages(array_or_empty(body.get("messages"), "messages"))
    out: dict[str, Any] = {"model": model, "messages": turns}
    if system:
        out["system"] = system
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) else default_max_tokens
    if body.get("stream"):
        out["stream"] = True
    stop = strings(body.get("stop"), "stop")
    if stop:
        out["stop_sequences"] = stop
    if isinstance(body.get("temperature"), int | float):
        out["temperature"] = min(float(body["temperature"]), 1.0)
    for same in ("top_p", "top_k"):
        if body.get(same) is not None:
            out[same] = body[same]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    response_format = body.get("response_format") or {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema"):
        if tools:
            raise UnsupportedRequest(
                "response_format cannot be combined with tools on Anthropic backends", "response_format"
            )
        schema = None
        if kind == "json_schema":
            where = "response_format.json_schema"
            schema = obj_or_empty(
                obj_or_empty(response_format.get("json_schema"), where).get("schema"), f"{where}.schema"
            )
        out["tools"] = [
            {
                "name": JSON_TOOL,
                "description": "Respond with the JSON object that answers the request.",
                "input_schema": schema or {"type": "object"},
            }
        ]
        out["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
    elif tools:
        out["tools"] = _tools(tools)
        choice = _tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
        out["tool_choice"] = choice
    return out


def openai_usage_body(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cached},
    }


def anthropic_to_openai_response(message: dict[str, Any], json_mode: bool) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if json_mode and block.get("name") == JSON_TOOL:
                texts.append(arguments)
            else:
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": arguments},
                    }
                )
    finish = FINISH_REASONS.get(message.get("stop_reason") or "", "stop")
    if json_mode and finish == "tool_calls":
        finish = "stop"
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    out: dict[str, Any] = {
        "id": f"chatcmpl-{message.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model", ""),
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
    }
    usage = openai_usage_body(anthropic_usage(message.get("usage")))
    if usage is not None:
        out["usage"] = usage
    return out


class AnthropicToOpenAIStream:
    """Messages stream events in, chat.completion.chunk dicts out, as they arrive.

    Tool-call `index` counts tool_use blocks (not Anthropic's block index); `id` and `name` go out
    once, in the first chunk of each call, then argument fragments follow."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.id = ""
        self.model = ""
        self.created = int(time.time())
        self._input: dict[str, Any] = {}
        self._output = 0
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self.usage: Usage | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def feed(self, name: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type", name)
        if kind == "message_start":
            message = data.get("message") or {}
            self.id, self.model = f"chatcmpl-{message.get('id', '')}", message.get("model", "")
            self._input = dict(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use" and not (self.json_mode and block.get("name") == JSON_TOOL):
                index = len(self._tool_index)
                self._tool_index[data.get("index", -1)] = index
                call = {
                    "index": index,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                fragment = delta.get("partial_json", "")
                tool = self._tool_index.get(data.get("index", -1))
                if tool is None:  # the forced JSON tool: its input is the answer's content
                    return [self._chunk({"content": fragment})] if fragment else []
                return [self._chunk({"tool_calls": [{"index": tool, "function": {"arguments": fragment}}]})]
            return []  # thinking and signature deltas have no OpenAI counterpart
        if kind == "message_delta":
            usage = data.get("usage") or {}
            self._input.update({k: v for k, v in usage.items() if k != "output_tokens" and v is not None})
            self._output = usage.get("output_tokens", self._output)
            self.usage = anthropic_usage({**self._input, "output_tokens": self._output})
            finish = FINISH_REASONS.get((data.get("delta") or {}).get("stop_reason") or "", "stop")
            if self.json_mode and finish == "tool_calls":
                finish = "stop"
            return [self._chunk({}, finish)]
        return []  # ping, content_block_stop, message_stop

    def usage_chunk(self) -> dict[str, Any]:
        chunk = self._chunk({})
        chunk["choices"] = []
        chunk["usage"] = openai_usage_body(self.usage)
        return chunk
