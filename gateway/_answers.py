"""What an answer said, for the judge: its final text and tool calls, read from the bytes the client
was sent (whole, or as the SSE stream) in the client's dialect. Anything unreadable reads as empty:
the judge then sees an empty answer, which is what the client saw too."""

from __future__ import annotations

import json
from typing import Any

import orjson

from providers.base import Dialect
from providers.sse import SSEDecoder


def answer_text(raw: bytes, dialect: Dialect, streamed: bool) -> str:
    """The answer as one text: its content, then one line per tool call (`[tool call] name(arguments)`)."""
    try:
        if streamed:
            text, calls = _from_stream(raw, dialect)
        else:
            text, calls = _from_body(orjson.loads(raw), dialect)
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, IndexError):
        return ""
    lines = [text] if text else []
    lines += [f"[tool call] {name}({arguments})" for name, arguments in calls]
    return "\n".join(lines)


def _from_body(body: dict[str, Any], dialect: Dialect) -> tuple[str, list[tuple[str, str]]]:
    if dialect == "anthropic":
        text, calls = [], []
        for block in body.get("content") or []:
            if block.get("type") == "text":
                text.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                calls.append((str(block.get("name")), json.dumps(block.get("input"))))
        return "".join(text), calls
    choice = (body.get("choices") or [{}])[0]
    if "text" in choice:  # /v1/completions
        return str(choice["text"] or ""), []
    message = choice.get("message") or {}
    calls = [
        (str(c["function"].get("name")), str(c["function"].get("arguments", "")))
        for c in message.get("tool_calls") or []
    ]
    return str(message.get("content") or ""), calls


def _from_stream(raw: bytes, dialect: Dialect) -> tuple[str, list[tuple[str, str]]]:
    text: list[str] = []
    calls: dict[int, list[str]] = {}  # index -> [name, arguments so far]
    for event in SSEDecoder().feed(raw + b"\n\n"):
        if event.data == b"[DONE]" or not event.data.startswith(b"{"):
            continue
        data = orjson.loads(event.data)
        if dialect == "anthropic":
            _anthropic_event(data, text, calls)
            continue
        for choice in data.get("choices") or []:
            if "text" in choice:
                text.append(str(choice["text"] or ""))
                continue
            delta = choice.get("delta") or {}
            text.append(str(delta.get("content") or ""))
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(int(call.get("index", 0)), ["", ""])
                function = call.get("function") or {}
                entry[0] += str(function.get("name") or "")
                entry[1] += str(function.get("arguments") or "")
    return "".join(text), [(name, arguments) for name, arguments in calls.values()]


def _anthropic_event(data: dict[str, Any], text: list[str], calls: dict[int, list[str]]) -> None:
    kind, index = data.get("type"), int(data.get("index", 0))
    if kind == "content_block_start" and (data.get("content_block") or {}).get("type") == "tool_use":
        calls[index] = [str(data["content_block"].get("name")), ""]
    elif kind == "content_block_delta":
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            text.append(str(delta.get("text", "")))
        elif delta.get("type") == "input_json_delta" and index in calls:
            calls[index][1] += str(delta.get("partial_json", ""))
