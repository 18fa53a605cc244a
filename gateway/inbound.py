"""Reading and checking the client's body: only the fields the gateway acts on are checked here;
everything else is forwarded as it came, and the backend judges it."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from gateway.errors import ClientGone, InvalidRequest, PayloadTooLarge, RequestTimeout
from providers.base import ErrorCode
from providers.shapes import MAX_DEPTH, nested_too_deep, type_name

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


# Set in the ASGI scope by the server when it gave up on a stalled body and answered 408 itself.
BODY_TIMED_OUT = "crossover.body_timed_out"


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        if request.scope.get(BODY_TIMED_OUT):  # the server refused a stalled body (gateway/server_limits.py)
            raise RequestTimeout("Request body read timed out.", code=ErrorCode.REQUEST_TIMEOUT) from None
        raise ClientGone("the client closed the connection while sending the body") from None
    raw = b"".join(chunks)
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


def _check(body: dict[str, Any], param: str, kinds: tuple[type, ...], expected: str) -> None:
    value = body.get(param)
    # bool is an int subclass in Python; JSON keeps them apart, so must we.
    if param in body and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
        raise _wrong_type(param, expected, value)


def _check_common(body: dict[str, Any]) -> None:
    if "model" not in body:
        raise _missing("model")
    _check(body, "model", (str,), "a string")
    if not body["model"]:
        raise InvalidRequest("'model' must not be empty.", param="model", code=ErrorCode.INVALID_VALUE)
    _check(body, "stream", (bool, type(None)), "a boolean")
    _check(body, "stream_options", (dict, type(None)), "an object")
    options = body.get("stream_options")
    if (
        isinstance(options, dict)
        and "include_usage" in options
        and not isinstance(options["include_usage"], bool)
    ):
        raise _wrong_type("stream_options.include_usage", "a boolean", options["include_usage"])
    for name in ("max_tokens", "max_completion_tokens", "n"):
        _check(body, name, (int, type(None)), "an integer")
        value = body.get(name)
        if isinstance(value, int) and value < 1:
            raise InvalidRequest(
                f"Invalid '{name}': integer below minimum value. "
                f"Expected a value >= 1, but got {value} instead.",
                param=name,
                code=ErrorCode.INTEGER_BELOW_MIN_VALUE,
            )
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _check(body, name, (int, float, type(None)), "a number")


def _messages(body: dict[str, Any]) -> list[Any]:
    if "messages" not in body:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array", messages)
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
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise _missing(f"{where}.role")
        if not isinstance(role, str) or role not in _ROLES:  # a list or object is not hashable
            raise InvalidRequest(
                f"Invalid value for '{where}.role': {role!r:.60}. Supported values are: "
                "'system', 'developer', 'user', 'assistant', 'tool' and 'function'.",
                param=f"{where}.role",
                code=ErrorCode.INVALID_VALUE,
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _wrong_type(f"{where}.content", "one of a string or array of objects", content)
    _check(body, "tools", (list, type(None)), "an array")
    _check(body, "response_format", (dict, type(None)), "an object")


def validate_completion(body: dict[str, Any]) -> None:
    _check_common(body)
    if "prompt" not in body:
        raise _missing("prompt")
    prompt = body["prompt"]
    if not isinstance(prompt, str | list):
        raise _wrong_type("prompt", "a string or an array", prompt)


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
