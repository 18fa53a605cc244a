"""Reading and checking the client's body: only the fields the gateway acts on are checked here;
everything else is forwarded as it came, and the backend judges it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.types import Receive, Scope

from gateway.errors import ClientGone, InvalidRequest, PayloadTooLarge, RequestTimeout
from providers.base import ErrorCode
from providers.responses import item_kind
from providers.shapes import MAX_DEPTH, nested_too_deep, type_name

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


# Set in the ASGI scope by the server when it gave up on a stalled body and answered 408 itself.
BODY_TIMED_OUT = "crossover.body_timed_out"


async def read_json(receive: Receive, scope: Scope, headers: Mapping[str, str], limit: int) -> dict[str, Any]:
    """The body as a JSON object, from the ASGI messages (`headers`: the request's, by lower-case name)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    raw = await _body(receive, scope, limit)
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", code=ErrorCode.INVALID_JSON)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "utf-8" in str(exc).lower():
            raise InvalidRequest(
                "The request body is not valid UTF-8.", code=ErrorCode.INVALID_ENCODING
            ) from None
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}.", code=ErrorCode.INVALID_JSON
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code=ErrorCode.INVALID_JSON)
    # Each level takes two bytes at least, so a short body cannot be too deep: skip the check (~2 µs).
    if len(raw) > 2 * MAX_DEPTH and nested_too_deep(body):
        raise InvalidRequest(
            f"The request body is nested more than {MAX_DEPTH} levels deep.", code=ErrorCode.NESTING_TOO_DEEP
        )
    return body


async def _body(receive: Receive, scope: Scope, limit: int) -> bytes:
    """The body's bytes, read from `receive` itself: Starlette's `Request.stream()` (an async generator
    over the same messages) cost ~1 µs more a request, and a small body comes in one message."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if not message.get("more_body", False):
                return b"".join((*chunks, chunk)) if chunks else chunk
            chunks.append(chunk)
        elif kind == "http.disconnect":
            if scope.get(BODY_TIMED_OUT):  # the server refused a stalled body (gateway/server_limits.py)
                raise RequestTimeout("Request body read timed out.", code=ErrorCode.REQUEST_TIMEOUT)
            raise ClientGone("the client closed the connection while sending the body")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than this gateway accepts ({limit} bytes).",
        code=ErrorCode.REQUEST_TOO_LARGE,
    )


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param=param, code=ErrorCode.MISSING_REQUIRED_PARAMETER
    )


def _wrong_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)} instead.",
        param=param,
        code=ErrorCode.INVALID_TYPE,
    )


_NONE = type(None)
_OPTIONAL_INT = (int, _NONE)
_OPTIONAL_NUMBER = (int, float, _NONE)
# Checked only when present, which most are not: one `in` each instead of a call (~0.1 µs a name).
_POSITIVE_INTEGERS = ("max_tokens", "max_completion_tokens", "n")
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def _check(body: dict[str, Any], param: str, kinds: tuple[type, ...], expected: str) -> None:
    if param in body:
        value = body[param]
        # bool is an int subclass in Python; JSON keeps them apart, so must we.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise _wrong_type(param, expected, value)


def _required(body: dict[str, Any], param: str, kinds: tuple[type, ...], expected: str) -> Any:
    """`body[param]`, which must be there and of one of `kinds`."""
    if param not in body:
        raise _missing(param)
    _check(body, param, kinds, expected)
    return body[param]


def _check_common(body: dict[str, Any]) -> None:
    if not _required(body, "model", (str,), "a string"):
        raise InvalidRequest("'model' must not be empty.", param="model", code=ErrorCode.INVALID_VALUE)
    if "stream" in body:
        _check(body, "stream", (bool, _NONE), "a boolean")
    options = body.get("stream_options")
    if options is not None:
        _check(body, "stream_options", (dict, _NONE), "an object")
        if "include_usage" in options and not isinstance(options["include_usage"], bool):
            raise _wrong_type("stream_options.include_usage", "a boolean", options["include_usage"])
    for name in _POSITIVE_INTEGERS:
        if name in body:
            _check(body, name, _OPTIONAL_INT, "an integer")
            value = body[name]
            if isinstance(value, int) and value < 1:
                raise InvalidRequest(
                    f"Invalid '{name}': integer below minimum value. "
                    f"Expected a value >= 1, but got {value} instead.",
                    param=name,
                    code=ErrorCode.INTEGER_BELOW_MIN_VALUE,
                )
    for name in _NUMBERS:
        if name in body:
            _check(body, name, _OPTIONAL_NUMBER, "a number")


def _messages(body: dict[str, Any]) -> list[Any]:
    messages: list[Any] = _required(body, "messages", (list,), "an array")
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. "
            "Expected an array with minimum length 1, but got an empty array instead.",
            param="messages",
            code=ErrorCode.EMPTY_ARRAY,
        )
    return messages


def validate_chat(body: dict[str, Any]) -> None:
    _check_common(body)
    for i, message in enumerate(_messages(body)):
        if not isinstance(message, dict):
            raise _wrong_type(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:  # a list or object is not hashable
            if role is None:
                raise _missing(f"messages[{i}].role")
            raise InvalidRequest(
                f"Invalid value for 'messages[{i}].role': {role!r:.60}. Supported values are: "
                "'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
                param=f"messages[{i}].role",
                code=ErrorCode.INVALID_VALUE,
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _wrong_type(f"messages[{i}].content", "one of a string or array of objects", content)
    _check(body, "tools", (list, _NONE), "an array")
    _check(body, "response_format", (dict, _NONE), "an object")


def validate_completion(body: dict[str, Any]) -> None:
    _check_common(body)
    _required(body, "prompt", (str, list), "a string or an array")


def validate_messages(body: dict[str, Any]) -> None:
    """Anthropic's Messages request: `model`, `max_tokens` and alternating `messages` are required."""
    _check_common(body)
    if "max_tokens" not in body:
        raise _missing("max_tokens")
    for i, message in enumerate(_messages(body)):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object", message)
        if message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(
                f"{where}.role: Input should be 'user' or 'assistant'",
                param=f"{where}.role",
                code=ErrorCode.INVALID_VALUE,
            )
        if not isinstance(message.get("content"), str | list):
            raise _wrong_type(
                f"{where}.content", "a string or an array of content blocks", message.get("content")
            )
    _check(body, "system", (str, list), "a string or an array of text blocks")
    _check(body, "tools", (list,), "an array")


def _strings(body: dict[str, Any], where: str, *names: str) -> None:
    for name in names:
        if name in body and not isinstance(body[name], str):
            raise _wrong_type(f"{where}{name}", "a string", body[name])


def _input_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise _wrong_type(where, "an object", item)
    kind = item_kind(item)
    if not isinstance(kind, str):
        raise _wrong_type(f"{where}.type", "a string", kind)
    if kind == "message":
        if "role" not in item:
            raise _missing(f"{where}.role")
        _strings(item, f"{where}.", "role")
        content = item.get("content")
        if not isinstance(content, str | list):
            raise _wrong_type(f"{where}.content", "a string or an array of objects", content)
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, dict):
                raise _wrong_type(f"{where}.content[{j}]", "an object", part)
    elif kind == "function_call":
        _strings(item, f"{where}.", "call_id", "name", "arguments")
    elif kind == "function_call_output":
        _strings(item, f"{where}.", "call_id")
        if not isinstance(item.get("output"), str | list):
            raise _wrong_type(f"{where}.output", "a string or an array of objects", item.get("output"))


def validate_responses(body: dict[str, Any]) -> None:
    """The Responses request: what the router reads and the translation to chat reads; items of kinds
    the gateway does not read (reasoning, built-in tools) are the backend's to judge."""
    _check_common(body)
    given = _required(body, "input", (str, list), "a string or an array of input items")
    for i, item in enumerate(given if isinstance(given, list) else ()):
        _input_item(item, f"input[{i}]")
    for name in ("instructions", "previous_response_id"):
        _check(body, name, (str, type(None)), "a string")
    _check(body, "conversation", (str, dict, type(None)), "a string or an object")
    for name in ("store", "background", "parallel_tool_calls"):
        _check(body, name, (bool, type(None)), "a boolean")
    _check(body, "tool_choice", (str, dict, type(None)), "a string or an object")
    _check(body, "max_output_tokens", (int, type(None)), "an integer")
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit < 1:
        raise InvalidRequest(
            f"Invalid 'max_output_tokens': integer below minimum value. "
            f"Expected a value >= 1, but got {limit} instead.",
            param="max_output_tokens",
            code=ErrorCode.INTEGER_BELOW_MIN_VALUE,
        )
    _check(body, "tools", (list, type(None)), "an array")
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict):
            raise _wrong_type(f"tools[{i}]", "an object", tool)
        if "type" not in tool:
            raise _missing(f"tools[{i}].type")
        _strings(tool, f"tools[{i}].", "type")
        if tool["type"] == "function":
            if "name" not in tool:
                raise _missing(f"tools[{i}].name")
            _strings(tool, f"tools[{i}].", "name", "description")
            if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
                raise _wrong_type(f"tools[{i}].parameters", "an object", tool["parameters"])
    _check(body, "text", (dict, type(None)), "an object")
    _text_format((body.get("text") or {}).get("format"))


def _text_format(fmt: Any) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _wrong_type("text.format", "an object", fmt)
    _strings(fmt, "text.format.", "type", "name")
    if fmt.get("type") == "json_schema":
        if "name" not in fmt:
            raise _missing("text.format.name")
        if not isinstance(fmt.get("schema"), dict):
            raise _wrong_type("text.format.schema", "an object", fmt.get("schema"))


# One input of /v1/embeddings: text, or the token ids of one text.
_EMBEDDING_INPUT = "a string, an array of strings, an array of integers or an array of integer arrays"


def _token_ids(value: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def validate_embeddings(body: dict[str, Any]) -> None:
    _check_common(body)
    if body.get("stream") is True:
        raise InvalidRequest(
            "Embeddings cannot be streamed.", param="stream", code=ErrorCode.UNSUPPORTED_PARAMETER
        )
    if "input" not in body:
        raise _missing("input")
    given = body["input"]
    ok = isinstance(given, str) or (
        isinstance(given, list)
        and bool(given)
        and (
            all(isinstance(s, str) for s in given)
            or _token_ids(given)
            or all(isinstance(ids, list) and ids and _token_ids(ids) for ids in given)
        )
    )
    if not ok:
        if isinstance(given, list) and not given:
            raise InvalidRequest(
                "Invalid 'input': empty array. Expected an array with minimum length 1.",
                param="input",
                code=ErrorCode.EMPTY_ARRAY,
            )
        raise _wrong_type("input", _EMBEDDING_INPUT, given)
    _check(body, "dimensions", (int, type(None)), "an integer")
    _check(body, "encoding_format", (str, type(None)), "a string")
