"""OpenAI's Responses API carried over Chat Completions: pure translation functions.

Request: responses_to_chat_request. Response: chat_to_responses_response. Stream: a
ChatToResponsesStream turns chat.completion.chunk objects into Responses' streaming events, in the
order OpenAI sends them. With the Chat-over-Anthropic translators (providers/openai_over_anthropic.py)
this carries the Responses API to Anthropic backends.

Stateless only: `previous_response_id`, `conversation` and `background` need a server that keeps
responses, so they are refused with a 400 naming the field; `store` is accepted and nothing is kept.
Input items of other types than messages, function calls and their outputs are refused likewise.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from providers.base import UnsupportedRequest, Usage
from providers.openai_compat import usage_from
from providers.shapes import array_or_empty, obj, obj_or_empty, string, string_or_none

# Fields that need the server to keep state; a backend that keeps none cannot honour them.
STATEFUL = ("previous_response_id", "conversation")
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def item_kind(item: dict[str, Any]) -> Any:
    """An input item's type; it may be left out for a message (it has a role) and for an item
    reference (it has only an id)."""
    kind = item.get("type")
    if kind is not None:
        return kind
    return "item_reference" if "id" in item and "role" not in item else "message"


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---- request -----------------------------------------------------------------------------------


def _parts(content: Any, where: str, role: str) -> str | list[dict[str, Any]]:
    """A message item's content as chat content: text stays text; images go as image_url parts."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(array_or_empty(content, where)):
        at = f"{where}[{i}]"
        kind = obj(part, at).get("type")
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": string(part.get("text"), f"{at}.text")})
        elif kind == "refusal":
            continue
        elif kind == "input_image" and role == "user":
            url = string_or_none(part.get("image_url"), f"{at}.image_url")
            if url is None:
                raise UnsupportedRequest(
                    "only images given by image_url can be translated", f"{at}.image_url"
                )
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise UnsupportedRequest(f"content parts of type {kind!r:.40} cannot be translated", at)
    if role != "user" and all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # assistant and system content is plain text in chat
    return parts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = string_or_none(body.get("instructions"), "instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
        return messages
    for i, item in enumerate(array_or_empty(given, "input")):
        where = f"input[{i}]"
        kind = item_kind(obj(item, where))
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in _ROLES:
                raise UnsupportedRequest(
                    f"Invalid value for '{where}.role': {role!r:.40}. Supported values are: "
                    "'user', 'assistant', 'system' and 'developer'.",
                    f"{where}.role",
                )
            content = _parts(item.get("content"), f"{where}.content", role)
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {
                "id": string(item.get("call_id"), f"{where}.call_id"),
                "type": "function",
                "function": {
                    "name": string(item.get("name"), f"{where}.name"),
                    "arguments": string(item.get("arguments"), f"{where}.arguments"),
                },
            }
            if messages and messages[-1]["role"] == "assistant":
                # Calls after the assistant's text, or parallel calls: one assistant turn in chat.
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                output = _parts(output, f"{where}.output", "tool")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": string(item.get("call_id"), f"{where}.call_id"),
                    "content": output,
                }
            )
        else:
            raise UnsupportedRequest(f"input items of type {kind!r:.40} cannot be translated", where)
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(array_or_empty(tools, "tools")):
        where = f"tools[{i}]"
        if obj(tool, where).get("type") != "function":
            raise UnsupportedRequest(
                f"only function tools can be translated, not {tool.get('type')!r:.40}", where
            )
        function: dict[str, Any] = {"name": string(tool.get("name"), f"{where}.name")}
        if tool.get("description") is not None:
            function["description"] = string(tool["description"], f"{where}.description")
        if tool.get("parameters") is not None:
            function["parameters"] = obj(tool["parameters"], f"{where}.parameters")
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": string(choice.get("name"), "tool_choice.name")}}
    raise UnsupportedRequest(f"tool_choice {choice!r:.60} cannot be translated", "tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = obj_or_empty(obj_or_empty(text, "text").get("format"), "text.format")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema: dict[str, Any] = {
            "name": string(fmt.get("name"), "text.format.name"),
            "schema": obj(fmt.get("schema"), "text.format.schema"),
        }
        if fmt.get("description") is not None:
            schema["description"] = string(fmt["description"], "text.format.description")
        if isinstance(fmt.get("strict"), bool):
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise UnsupportedRequest(f"text.format of type {kind!r:.40} cannot be translated", "text.format.type")


def responses_to_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as a Chat Completions request (the model is set by the next bridge)."""
    for field in STATEFUL:
        if body.get(field) is not None:
            raise UnsupportedRequest(
                f"'{field}' needs a backend that keeps responses; this one is reached through Chat "
                "Completions, which keeps none. Send the whole conversation in 'input' instead.",
                field,
            )
    if body.get("background") is True:
        raise UnsupportedRequest("'background' needs a backend that keeps responses", "background")
    out: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body)}
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        if body.get("tool_choice") is not None:
            out["tool_choice"] = _tool_choice(body.get("tool_choice"))
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        out["response_format"] = response_format
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    for same in ("temperature", "top_p"):
        if body.get(same) is not None:
            out[same] = body[same]
    user = body.get("safety_identifier", body.get("user"))
    if isinstance(user, str):
        out["user"] = user
    return out


def responses_chat_view(body: dict[str, Any]) -> dict[str, Any]:
    """What the router scores: the request as chat messages, read leniently (items the gateway does not
    translate are forwarded to a Responses backend as they are, and count for nothing here)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for item in given:
            if not isinstance(item, dict):
                continue
            kind = item_kind(item)
            if kind == "message":
                messages.append({"role": item.get("role"), "content": item.get("content")})
            elif kind == "function_call_output" and isinstance(item.get("output"), str):
                messages.append({"role": "tool", "content": item["output"]})
    view: dict[str, Any] = {"messages": messages, "tools": body.get("tools")}
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict):
        view["response_format"] = {"type": fmt.get("type")}
    if body.get("max_output_tokens") is not None:
        view["max_tokens"] = body["max_output_tokens"]
    return view


# ---- response ----------------------------------------------------------------------------------


def responses_usage_body(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input,
        "input_tokens_details": {"cached_tokens": usage.cached, "cache_write_tokens": 0},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input + usage.output,
    }


def responses_usage(body: dict[str, Any]) -> Usage | None:
    """Usage of a Response object (`input_tokens`, `output_tokens`)."""
    return usage_from(body.get("usage"), "input_tokens", "output_tokens", "input_tokens_details")


def _echo(request: dict[str, Any]) -> dict[str, Any]:
    """The request's settings, as a Response object repeats them."""
    text = request.get("text") if isinstance(request.get("text"), dict) else None
    return {
        "instructions": request.get("instructions") if isinstance(request.get("instructions"), str) else None,
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") if isinstance(request.get("metadata"), dict) else {},
        "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None,
        "store": False,  # nothing is kept: a later previous_response_id could not find it
        "temperature": request.get("temperature", 1.0),
        "text": text or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
    }


def response_object(
    request: dict[str, Any],
    ident: str,
    model: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    finish: str | None = None,
) -> dict[str, Any]:
    reason = _INCOMPLETE.get(finish or "")
    if status == "completed" and reason is not None:
        status = "incomplete"
    out: dict[str, Any] = {
        "id": ident,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": reason} if status == "incomplete" else None,
        "model": model,
        "output": output,
        **_echo(request),
    }
    if usage is not None:  # the schema allows it absent, not null
        out["usage"] = responses_usage_body(usage)
    if status == "completed":
        out["completed_at"] = int(time.time())
    return out


def _message_item(ident: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": ident, "type": "message", "role": "assistant", "status": status, "content": [part]}


def _call_item(ident: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def chat_to_responses_response(
    chat: dict[str, Any], request: dict[str, Any], usage: Usage | None
) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("content"):
        output.append(_message_item(_new_id("msg"), message["content"], "completed"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            _call_item(
                _new_id("fc"),
                call.get("id") or _new_id("call"),
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )
    return response_object(
        request,
        _new_id("resp"),
        str(chat.get("model") or request.get("model") or ""),
        int(chat.get("created") or time.time()),
        "completed",
        output,
        usage,
        choice.get("finish_reason"),
    )


# ---- stream ------------------------------------------------------------------------------------


class ChatToResponsesStream:
    """chat.completion.chunk dicts in, Responses streaming events out (as `(type, data)` pairs), in
    OpenAI's order: created, in_progress, then per output item added → its deltas → done, then
    completed (or incomplete) with usage. Text and each tool call are separate output items."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.id = _new_id("resp")
        self.model = str(request.get("model") or "")
        self.created = int(time.time())
        self.finish: str | None = None
        self.usage: Usage | None = None
        self._sequence = 0
        self._output: list[dict[str, Any]] = []  # items, finished or open
        self._text: int | None = None  # output index of the open message item
        self._calls: dict[int, int] = {}  # chat tool-call index -> output index of its open item
        self._started = False

    @property
    def sequence(self) -> int:
        """The number the next event takes."""
        return self._sequence

    def _event(self, kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        event = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return kind, event

    def _response(self, status: str) -> dict[str, Any]:
        output = (
            [item for item in self._output if item["status"] != "in_progress"]
            if status != "in_progress"
            else []
        )
        usage = self.usage if status != "in_progress" else None
        return response_object(
            self.request, self.id, self.model, self.created, status, output, usage, self.finish
        )

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        if self._started:
            return []
        self._started = True
        response = self._response("in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self.start()
        self.model = str(chunk.get("model") or self.model)
        choices = chunk.get("choices") or []
        if not choices:
            return events
        choice = choices[0]
        delta = choice.get("delta") or {}
        if delta.get("content"):
            events += self._text_delta(delta["content"])
        for call in delta.get("tool_calls") or []:
            events += self._call_delta(call)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return events

    def _text_delta(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        events = []
        if self._text is None:
            events += self._close_calls()
            self._text = len(self._output)
            item: dict[str, Any] = {
                "id": _new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            self._output.append(item)
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                self._event(
                    "response.output_item.added", output_index=self._text, item=dict(item, content=[])
                )
            )
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self._text,
                    content_index=0,
                    part=part,
                )
            )
            item["content"] = [dict(part)]
        item = self._output[self._text]
        item["content"][0]["text"] += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self._text,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call_delta(self, call: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self._calls:
            events += self._close_text()
            self._calls[index] = len(self._output)
            item = _call_item(
                _new_id("fc"),
                call.get("id") or _new_id("call"),
                function.get("name") or "",
                "",
                "in_progress",
            )
            self._output.append(item)
            events.append(
                self._event("response.output_item.added", output_index=self._calls[index], item=dict(item))
            )
        at = self._calls[index]
        item = self._output[at]
        fragment = function.get("arguments") or ""
        if fragment:
            item["arguments"] += fragment
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=at,
                    delta=fragment,
                )
            )
        return events

    def _close_text(self) -> list[tuple[str, dict[str, Any]]]:
        if self._text is None:
            return []
        at, self._text = self._text, None
        item = self._output[at]
        part = item["content"][0]
        item["status"] = "completed"
        return [
            self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=at,
                content_index=0,
                text=part["text"],
                logprobs=[],
            ),
            self._event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=at,
                content_index=0,
                part=dict(part),
            ),
            self._event("response.output_item.done", output_index=at, item=dict(item)),
        ]

    def _close_calls(self) -> list[tuple[str, dict[str, Any]]]:
        events = []
        for at in self._calls.values():
            item = self._output[at]
            if item["status"] != "in_progress":
                continue
            item["status"] = "completed"
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=at,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=at, item=dict(item)))
        return events

    def finish_events(self, usage: Usage | None) -> list[tuple[str, dict[str, Any]]]:
        """Close what is open and end with the whole response, its usage included."""
        self.usage = usage
        events = self.start() + self._close_text() + self._close_calls()
        response = self._response("completed")
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [*events, self._event(kind, response=response)]
