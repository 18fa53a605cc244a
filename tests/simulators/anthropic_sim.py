"""An Anthropic Messages API simulator: the real paths, the key in `x-api-key` (or, as the SDK >= 2.0
sends it, `Authorization: Bearer`; `x-api-key` wins when both come), a required `anthropic-version`
(2026-10-21, 2023-06-01 or 2023-01-01), named SSE events in the real order, Anthropic's error
bodies (`{"type":"error","error":{...},"request_id":...}`) and statuses (529 overloaded),
`retry-after` on 429, and a `request-id` header on every API response.

Validation follows the API: unknown top-level fields are refused ("x: Extra inputs are not
permitted"), and under 2026-10-21 so are `temperature`, `top_p` and `top_k` (that version removed
them); under 2023-06-01 they are range-checked. Turns must alternate user/assistant (start the
simulator with --merge-consecutive to combine consecutive same-role turns as the API does today),
tool_result blocks must answer the tool_use ids of the previous assistant turn and every such id
must be answered, and base64 images must decode to their stated media type.

Answers are deterministic. The assistant says "echo: <text of the last user turn>" (with " [image]"
when that turn holds an image), or "tool said: <tool_result text>" when that turn holds tool
results. With `tools` offered (and `tool_choice` not "none") it answers "Let me check." followed by
a tool_use of the first tool (or the one `tool_choice` names) with input {"query": <user text>};
for tool_choice "any"/"tool" the text block is left out. `stop_sequences` cut the text
(stop_reason "stop_sequence"); `max_tokens` smaller than the word count truncates to that many
words (stop_reason "max_tokens").

Token counts: input_tokens = 10 + whitespace-separated words in the system prompt, string
contents, text blocks and tool_result text (tools, images and tool_use inputs are not counted);
output_tokens = words generated + 5 per tool_use. Any `cache_control` (top level, system, message
block or tool) reports cache_read_input_tokens 100 and cache_creation_input_tokens 20.

Endpoints: POST /v1/messages, POST /v1/messages/count_tokens, GET /v1/models,
GET /v1/models/{id}; and for the tests POST /_sim/faults, GET|DELETE /_sim/requests.

Faults are scripted through `POST /_sim/faults` (a list, consumed one per request to /v1/messages
or count_tokens that passed the header checks). Each is a dict of any of:
  {"status": 429, "retry_after": s}   429 rate_limit_error, `retry-after` and ratelimit headers
  {"status": 500|529|400|401|403|404|413, "message"?: str, "type"?: str}   that error
  {"delay": s}                        sleep before answering (combines with the others)
  {"stream_error": "overloaded_error", "message"?: str}   streaming: an `event: error` after the
                                      first content_block_delta, then the stream ends (a
                                      non-streaming request gets the matching HTTP error instead)
  {"cut_after": n}                    streaming: send n frames, then drop the connection
`GET /_sim/requests` returns one record per POST received:
{"path", "body", "headers": {"x-api-key": bool, "authorization": bool, "anthropic-version",
"anthropic-beta"}} - the key itself is never stored.

    python -m tests.simulators.anthropic_sim --port 9200 --key sk-ant-sim
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import random
import re
import string
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.simulators.controls import Controls

# id -> (display name, maximum max_tokens)
MODELS: dict[str, tuple[str, int]] = {
    "claude-sonnet-4-5": ("Claude Sonnet 4.5", 64000),
    "claude-3-5-haiku-latest": ("Claude Haiku 3.5", 8192),
    # Current models, for callers that would rather not trip the SDK's DeprecationWarning.
    "claude-sonnet-4-6": ("Claude Sonnet 4.6", 64000),
    "claude-haiku-4-5": ("Claude Haiku 4.5", 64000),
}
MODEL_CREATED_AT = "2025-02-19T00:00:00Z"
# 2026-10-21 is what the anthropic SDK >= 2.0 sends; 2023-06-01 is what older SDKs and most
# hand-written clients send. The API still accepts both.
VERSION_2026 = "2026-10-21"
VERSIONS = (VERSION_2026, "2023-06-01", "2023-01-01")
SAMPLING = ("temperature", "top_p", "top_k")  # removed from the API in 2026-10-21
# Models that refuse `temperature` together with `top_p` (under 2023-06-01).
NO_TEMPERATURE_AND_TOP_P = ("claude-sonnet-4-5", "claude-sonnet-4-6", "claude-haiku-4-5")

COMMON_FIELDS = {
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "cache_control",
    "output_config",
    "output_format",
    "speed",
    "mcp_servers",
    "context_management",
    "user_profile_id",
    "workspace_id",
}
MESSAGES_FIELDS = COMMON_FIELDS | {
    "max_tokens",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "service_tier",
    "container",
    "inference_geo",
    "diagnostics",
}
BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")
IMAGE_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
SERVER_TOOL_TYPE = re.compile(r"^[a-z_]+_\d{8}$")  # e.g. web_search_20250305, bash_20250124
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": (
        "This request would exceed your organization's rate limit of 50 requests per minute. "
        "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the "
        "response headers for current usage. Please reduce the prompt length or the maximum "
        "tokens requested, or try again later."
    ),
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}
STATUS_OF_TYPE = {v: k for k, v in ERROR_TYPES.items()}
RETRYABLE = (429, 500, 529)
_ALNUM = string.ascii_letters + string.digits


def _ident(prefix: str, n: int) -> str:
    return prefix + "".join(random.choices(_ALNUM, k=n))


def _words(text: str) -> int:
    return len(text.split())


class SimError(Exception):
    """An error the real API would answer with; turned into its JSON body by the handler."""

    def __init__(
        self, status: int, message: str, type_: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        self.headers = headers or {}


def _invalid(message: str) -> SimError:
    return SimError(400, message, "invalid_request_error")


def _fault_error(fault: dict[str, Any]) -> SimError:
    status = int(fault["status"])
    type_ = fault.get("type") or ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    message = fault.get("message") or ERROR_MESSAGES.get(type_, "error")
    headers: dict[str, str] = {}
    if status == 429:
        reset = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + float(fault.get("retry_after", 2)))
        )
        headers = {
            "retry-after": str(fault.get("retry_after", 2)),
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": reset,
        }
    if status in RETRYABLE:
        headers["x-should-retry"] = "true"
    return SimError(status, message, type_, headers)


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    return " ".join(b["text"] for b in content if b.get("type") == "text")


def _cache_controls(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every `cache_control` in the request: top level, system blocks, tools, message blocks."""
    system = body.get("system")
    blocks: list[Any] = [body] + (list(system) if isinstance(system, list) else [])
    blocks += list(body.get("tools") or [])
    for message in body["messages"]:
        if isinstance(message["content"], list):
            for block in message["content"]:
                blocks.append(block)
                if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                    blocks += block["content"]
    return [b["cache_control"] for b in blocks if isinstance(b, dict) and b.get("cache_control")]


def _input_tokens(body: dict[str, Any]) -> int:
    total = 10
    system = body.get("system")
    if isinstance(system, str):
        total += _words(system)
    elif isinstance(system, list):
        total += sum(_words(b["text"]) for b in system)
    for message in body["messages"]:
        for block in _blocks(message["content"]):
            if block["type"] == "text":
                total += _words(block["text"])
            elif block["type"] == "tool_result":
                total += _words(_result_text(block))
    return total


def _pieces(text: str) -> list[str]:
    """Word pieces (each with its leading whitespace) that concatenate back to `text`."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces.append(tail)
    return pieces


def _limit(text: str, stop_sequences: list[str], max_tokens: int) -> tuple[str, str, str | None]:
    """Apply stop sequences and max_tokens: (text, stop_reason, stop_sequence)."""
    hits = [(text.find(s), s) for s in stop_sequences if s and s in text]
    if hits:
        index, sequence = min(hits, key=lambda h: h[0])
        cut = text[:index]
        if _words(cut) <= max_tokens:
            return cut, "stop_sequence", sequence
    if _words(text) > max_tokens:
        return "".join(_pieces(text)[:max_tokens]), "max_tokens", None
    return text, "end_turn", None


class Simulator(Controls):
    def __init__(self, key: str, merge_consecutive: bool = False) -> None:
        super().__init__()
        self.key = key
        # The API now combines consecutive same-role turns; by default the simulator refuses
        # them as the API used to, so that a gateway is made to send strictly alternating turns.
        self.merge_consecutive = merge_consecutive

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/messages", self.messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
                *self.control_routes(),
            ]
        )

    # --- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _error(err: SimError, request_id: str) -> JSONResponse:
        body = {
            "type": "error",
            "error": {"type": err.type, "message": err.message},
            "request_id": request_id,
        }
        return JSONResponse(body, status_code=err.status, headers={"request-id": request_id, **err.headers})

    def _check_headers(self, request: Request) -> str:
        """Authenticate and return the API version. The key may come as `x-api-key` or (as the
        SDK >= 2.0 sends it) `Authorization: Bearer`; with both, `x-api-key` wins."""
        key = request.headers.get("x-api-key")
        if key is None:
            authorization = request.headers.get("authorization", "")
            if authorization.startswith("Bearer "):
                key = authorization[len("Bearer ") :]
        if key is None:
            raise SimError(401, "x-api-key header is required", "authentication_error")
        if key != self.key:
            raise SimError(401, "invalid x-api-key", "authentication_error")
        version = request.headers.get("anthropic-version")
        if version is None:
            raise _invalid("anthropic-version: header is required")
        if version not in VERSIONS:
            raise _invalid(f"anthropic-version: invalid version {version!r}")
        return version

    async def _prelude(self, request: Request) -> tuple[dict[str, Any], dict[str, Any], str]:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(
            {
                "path": request.url.path,
                "body": body,
                "headers": {
                    "x-api-key": "x-api-key" in request.headers,
                    "authorization": "authorization" in request.headers,
                    "anthropic-version": request.headers.get("anthropic-version"),
                    "anthropic-beta": request.headers.get("anthropic-beta"),
                },
            }
        )
        version = self._check_headers(request)
        if body is None:
            raise _invalid("There was an issue with the format of your request: the body is not valid JSON")
        if not isinstance(body, dict):
            raise _invalid("Input should be a valid dictionary")
        fault = self.next_fault()
        if "delay" in fault:
            await asyncio.sleep(float(fault["delay"]))
        if fault.get("status") is not None:
            raise _fault_error(fault)
        return body, fault, version

    # --- validation ----------------------------------------------------------------------------

    def _validate(
        self, body: dict[str, Any], allowed: set[str], needs_max_tokens: bool, version: str
    ) -> dict[str, Any]:
        """Refuse what the API refuses; return the body with its turns normalised."""
        if version == VERSION_2026:
            allowed = allowed - set(SAMPLING)
        for field in body:
            if field not in allowed:
                raise _invalid(f"{field}: Extra inputs are not permitted")
        model = body.get("model")
        if model is None:
            raise _invalid("model: Field required")
        if not isinstance(model, str):
            raise _invalid("model: Input should be a valid string")
        if model not in MODELS:
            raise SimError(404, f"model: {model}", "not_found_error")
        if needs_max_tokens:
            max_tokens = body.get("max_tokens")
            if max_tokens is None:
                raise _invalid("max_tokens: Field required")
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                raise _invalid("max_tokens: Input should be a valid integer")
            if max_tokens < 1:
                raise _invalid("max_tokens: Input should be greater than or equal to 1")
            if max_tokens > MODELS[model][1]:
                raise _invalid(
                    f"max_tokens: {max_tokens} > {MODELS[model][1]}, which is the maximum allowed "
                    f"number of output tokens for {model}"
                )
        self._validate_sampling(body, model)
        self._validate_system(body.get("system"))
        self._validate_tools(body)
        return {**body, "messages": self._validate_messages(body.get("messages"), version)}

    @staticmethod
    def _validate_sampling(body: dict[str, Any], model: str) -> None:
        for name, low, high in (("temperature", 0, 1), ("top_p", 0, 1)):
            if name in body:
                value = body[name]
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise _invalid(f"{name}: Input should be a valid number")
                if value < low:
                    raise _invalid(f"{name}: Input should be greater than or equal to {low}")
                if value > high:
                    raise _invalid(f"{name}: Input should be less than or equal to {high}")
        if "top_k" in body:
            top_k = body["top_k"]
            if not isinstance(top_k, int) or isinstance(top_k, bool):
                raise _invalid("top_k: Input should be a valid integer")
            if top_k < 0:
                raise _invalid("top_k: Input should be greater than or equal to 0")
        if model in NO_TEMPERATURE_AND_TOP_P and "temperature" in body and "top_p" in body:
            raise _invalid(
                "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
            )
        if "stream" in body and not isinstance(body["stream"], bool):
            raise _invalid("stream: Input should be a valid boolean")
        if "stop_sequences" in body:
            stops = body["stop_sequences"]
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise _invalid("stop_sequences: Input should be a valid list of strings")
        if "metadata" in body:
            metadata = body["metadata"]
            if not isinstance(metadata, dict):
                raise _invalid("metadata: Input should be a valid dictionary")
            for field, value in metadata.items():
                if field != "user_id":
                    raise _invalid(f"metadata.{field}: Extra inputs are not permitted")
                if value is not None and not isinstance(value, str):
                    raise _invalid("metadata.user_id: Input should be a valid string")
        if "cache_control" in body and body["cache_control"] is not None:
            Simulator._validate_cache_control(body["cache_control"], "cache_control")

    @staticmethod
    def _validate_cache_control(value: Any, where: str) -> None:
        if not isinstance(value, dict) or value.get("type") != "ephemeral":
            raise _invalid(f"{where}.type: Input should be 'ephemeral'")
        if "ttl" in value and value["ttl"] not in ("5m", "1h"):
            raise _invalid(f"{where}.ttl: Input should be '5m' or '1h'")

    def _validate_text_block(self, block: dict[str, Any], where: str, scope: str) -> None:
        text = block.get("text")
        if text is None:
            raise _invalid(f"{where}.text: Field required")
        if not isinstance(text, str):
            raise _invalid(f"{where}.text: Input should be a valid string")
        if text == "":
            raise _invalid(f"{scope}: text content blocks must be non-empty")
        if not text.strip():
            raise _invalid(f"{scope}: text content blocks must contain non-whitespace text")
        if block.get("cache_control") is not None:
            self._validate_cache_control(block["cache_control"], f"{where}.cache_control")

    def _validate_system(self, system: Any) -> None:
        if system is None or isinstance(system, str):
            return
        if not isinstance(system, list):
            raise _invalid("system: Input should be a valid string or a list of text blocks")
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise _invalid(f"system.{i}.type: Input should be 'text'")
            self._validate_text_block(block, f"system.{i}", "system")

    def _validate_tools(self, body: dict[str, Any]) -> None:
        tools = body.get("tools")
        names: list[str] = []
        if tools is not None:
            if not isinstance(tools, list):
                raise _invalid("tools: Input should be a valid list")
            for i, tool in enumerate(tools):
                if not isinstance(tool, dict):
                    raise _invalid(f"tools.{i}: Input should be a valid dictionary")
                name = tool.get("name")
                kind = tool.get("type")
                if kind not in (None, "custom") and not (
                    isinstance(kind, str) and SERVER_TOOL_TYPE.match(kind)
                ):
                    raise _invalid(
                        f"tools.{i}: Input tag '{kind}' found using 'type' does not match any of the "
                        "expected tags: 'custom' or a versioned built-in tool type such as "
                        "'bash_20250124' or 'web_search_20250305'"
                    )
                if kind in (None, "custom"):
                    if name is None:
                        raise _invalid(f"tools.{i}.custom.name: Field required")
                    if "input_schema" not in tool:
                        raise _invalid(f"tools.{i}.custom.input_schema: Field required")
                    schema = tool["input_schema"]
                    if not isinstance(schema, dict) or schema.get("type") != "object":
                        raise _invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
                    if "description" in tool and not isinstance(tool["description"], str):
                        raise _invalid(f"tools.{i}.custom.description: Input should be a valid string")
                if not isinstance(name, str) or not TOOL_NAME.match(name):
                    raise _invalid(
                        f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                    )
                if tool.get("cache_control") is not None:
                    self._validate_cache_control(tool["cache_control"], f"tools.{i}.cache_control")
                if name in names:
                    raise _invalid("tools: Tool names must be unique.")
                names.append(name)
        choice = body.get("tool_choice")
        if choice is not None:
            if not isinstance(choice, dict):
                raise _invalid("tool_choice: Input should be a valid dictionary")
            kind = choice.get("type")
            if kind not in ("auto", "any", "tool", "none"):
                raise _invalid(
                    f"tool_choice: Input tag '{kind}' found using 'type' does not match any of the "
                    "expected tags: 'auto', 'any', 'tool', 'none'"
                )
            if kind != "none" and not names:
                raise _invalid("tool_choice may only be specified while providing tools")
            if kind == "tool":
                if not isinstance(choice.get("name"), str):
                    raise _invalid("tool_choice.tool.name: Field required")
                if choice["name"] not in names:
                    raise _invalid(f"tool_choice.name: tool '{choice['name']}' was not found in `tools`")
            if "disable_parallel_tool_use" in choice and kind == "none":
                raise _invalid("tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted")

    def _validate_block(self, block: Any, where: str, role: str, version: str) -> None:
        if not isinstance(block, dict):
            raise _invalid(f"{where}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind not in BLOCK_TYPES:
            expected = ", ".join(f"'{t}'" for t in BLOCK_TYPES)
            raise _invalid(
                f"{where}.type: Input tag '{kind}' found using 'type' does not match any of the "
                f"expected tags: {expected}"
            )
        if block.get("cache_control") is not None:
            self._validate_cache_control(block["cache_control"], f"{where}.{kind}.cache_control")
        if kind == "text":
            self._validate_text_block(block, f"{where}.text", "messages")
            if version == VERSION_2026 and role == "user" and block.get("citations"):
                raise _invalid(f"{where}.text.citations: citations are not allowed in user messages")
        elif kind == "document":
            if version == VERSION_2026 and role == "assistant":
                raise _invalid(f"{where}: document blocks are not allowed in assistant messages")
        elif kind == "image":
            if role != "user":
                raise _invalid(f"{where}: image content blocks are only allowed in user messages")
            self._validate_image(block.get("source"), f"{where}.image.source")
        elif kind == "tool_use":
            if role != "assistant":
                raise _invalid(f"{where}: tool_use content blocks are only allowed in assistant messages")
            for field in ("id", "name", "input"):
                if field not in block:
                    raise _invalid(f"{where}.tool_use.{field}: Field required")
            if not isinstance(block["input"], dict):
                raise _invalid(f"{where}.tool_use.input: Input should be a valid dictionary")
        elif kind == "tool_result":
            if role != "user":
                raise _invalid(f"{where}: tool_result content blocks are only allowed in user messages")
            if not isinstance(block.get("tool_use_id"), str):
                raise _invalid(f"{where}.tool_result.tool_use_id: Field required")
            content = block.get("content", "")
            if isinstance(content, list):
                for j, inner in enumerate(content):
                    inner_where = f"{where}.tool_result.content.{j}"
                    if not isinstance(inner, dict) or inner.get("type") not in ("text", "image", "document"):
                        raise _invalid(f"{inner_where}.type: Input should be 'text', 'image' or 'document'")
                    if inner["type"] == "text":
                        self._validate_text_block(inner, inner_where, "messages")
                    elif inner["type"] == "image":
                        self._validate_image(inner.get("source"), f"{inner_where}.image.source")
            elif not isinstance(content, str):
                raise _invalid(f"{where}.tool_result.content: Input should be a valid string or list")

    @staticmethod
    def _validate_image(source: Any, where: str) -> None:
        if not isinstance(source, dict):
            raise _invalid(f"{where}: Field required")
        kind = source.get("type")
        if kind == "base64":
            media_type = source.get("media_type")
            if media_type not in IMAGE_MAGIC:
                raise _invalid(
                    f"{where}.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
                )
            data = source.get("data")
            if not isinstance(data, str):
                raise _invalid(f"{where}.base64.data: Field required")
            try:
                decoded = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(f"{where}.base64.data: The image data is not valid base64") from None
            if not decoded.startswith(IMAGE_MAGIC[media_type]):
                raise _invalid(
                    f"{where}.base64.data: The image was specified using the {media_type} media type, "
                    f"but does not appear to be a valid {media_type.split('/')[1]} image"
                )
        elif kind == "url":
            url = source.get("url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise _invalid(f"{where}.url.url: Input should be a valid URL")
        else:
            raise _invalid(
                f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected "
                "tags: 'base64', 'url'"
            )

    def _validate_messages(self, messages: Any, version: str) -> list[dict[str, Any]]:
        if messages is None:
            raise _invalid("messages: Field required")
        if not isinstance(messages, list):
            raise _invalid("messages: Input should be a valid list")
        if not messages:
            raise _invalid("messages: at least one message is required")
        turns: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _invalid(f"messages.{i}: Input should be a valid dictionary")
            for field in message:
                if field not in ("role", "content"):
                    raise _invalid(f"messages.{i}.{field}: Extra inputs are not permitted")
            role = message.get("role")
            if role is None:
                raise _invalid(f"messages.{i}.role: Field required")
            if role not in ("user", "assistant"):
                raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            if i == 0 and role != "user":
                raise _invalid('messages: first message must use the "user" role')
            if "content" not in message:
                raise _invalid(f"messages.{i}.content: Field required")
            content = message["content"]
            if not isinstance(content, str | list):
                raise _invalid(f"messages.{i}.content: Input should be a valid string or list")
            if not content and not (i == len(messages) - 1 and role == "assistant"):
                raise _invalid(
                    f"messages.{i}: all messages must have non-empty content except for the optional "
                    "final assistant message"
                )
            if isinstance(content, list):
                for j, block in enumerate(content):
                    self._validate_block(block, f"messages.{i}.content.{j}", role, version)
            if turns and turns[-1]["role"] == role:
                if not self.merge_consecutive:
                    raise _invalid(
                        'messages: roles must alternate between "user" and "assistant", but found '
                        f'multiple "{role}" roles in a row'
                    )
                merged = _blocks(turns[-1]["content"]) + (_blocks(content) if content else [])
                turns[-1] = {"role": role, "content": merged}
            else:
                turns.append(message)
        previous_tool_uses: list[str] = []
        for i, turn in enumerate(turns):
            blocks = _blocks(turn["content"]) if turn["content"] else []
            if turn["role"] == "user":
                answered = []
                for j, block in enumerate(blocks):
                    if block["type"] == "tool_result":
                        if block["tool_use_id"] not in previous_tool_uses:
                            raise _invalid(
                                f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                                f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block "
                                "must have a corresponding `tool_use` block in the previous message."
                            )
                        answered.append(block["tool_use_id"])
                missing = [t for t in previous_tool_uses if t not in answered]
                if missing:
                    raise _invalid(
                        f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                        f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                        "corresponding `tool_result` block in the next message."
                    )
                previous_tool_uses = []
            else:
                previous_tool_uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
                final_text = blocks[-1].get("text") if i == len(turns) - 1 and blocks else None
                if isinstance(final_text, str) and final_text != final_text.rstrip():
                    raise _invalid("messages: final assistant content cannot end with trailing whitespace")
        return turns

    # --- answers -------------------------------------------------------------------------------

    @staticmethod
    def _answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str | None, int]:
        """The reply: (content blocks, stop_reason, stop_sequence, output_tokens)."""
        last_user = next(m for m in reversed(body["messages"]) if m["role"] == "user")
        blocks = _blocks(last_user["content"])
        text = " ".join(b["text"] for b in blocks if b["type"] == "text")
        results = [b for b in blocks if b["type"] == "tool_result"]
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {"type": "auto"}
        if tools and choice["type"] != "none" and not results:
            name = choice["name"] if choice["type"] == "tool" else tools[0]["name"]
            content: list[dict[str, Any]] = []
            if choice["type"] == "auto":
                content.append({"type": "text", "text": "Let me check."})
            content.append(
                {"type": "tool_use", "id": _ident("toolu_", 24), "name": name, "input": {"query": text}}
            )
            output = sum(_words(b["text"]) if b["type"] == "text" else 5 for b in content)
            return content, "tool_use", None, output
        if results:
            answer = "tool said: " + " ".join(_result_text(b) for b in results)
        else:
            parts = (
                ["echo:"]
                + ([text] if text else [])
                + (["[image]"] if any(b["type"] == "image" for b in blocks) else [])
            )
            answer = " ".join(parts)
        answer, stop_reason, stop_sequence = _limit(
            answer, body.get("stop_sequences") or [], body["max_tokens"]
        )
        content = [{"type": "text", "text": answer}] if answer else []
        return content, stop_reason, stop_sequence, _words(answer)

    @staticmethod
    def _usage(body: dict[str, Any], output_tokens: int) -> dict[str, Any]:
        controls = _cache_controls(body)
        cached = bool(controls)
        long_ttl = any(c.get("ttl") == "1h" for c in controls)
        return {
            "input_tokens": _input_tokens(body),
            "cache_creation_input_tokens": 20 if cached else 0,
            "cache_read_input_tokens": 100 if cached else 0,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 20 if cached and not long_ttl else 0,
                "ephemeral_1h_input_tokens": 20 if long_ttl else 0,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    # --- endpoints -----------------------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        request_id = _ident("req_011C", 20)
        try:
            body, fault, version = await self._prelude(request)
            body = self._validate(body, MESSAGES_FIELDS, needs_max_tokens=True, version=version)
            if fault.get("stream_error") and not body.get("stream"):
                raise _fault_error(
                    {
                        "status": STATUS_OF_TYPE.get(fault["stream_error"], 500),
                        "type": fault["stream_error"],
                        "message": fault.get("message"),
                    }
                )
        except SimError as err:
            return self._error(err, request_id)
        content, stop_reason, stop_sequence, output_tokens = self._answer(body)
        usage = self._usage(body, output_tokens)
        message: dict[str, Any] = {
            "id": _ident("msg_01", 22),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": usage,
        }
        headers = {"request-id": request_id}
        if not body.get("stream"):
            return JSONResponse(message, headers=headers)
        return StreamingResponse(
            self._stream(message, fault.get("stream_error"), fault.get("message"), fault.get("cut_after")),
            media_type="text/event-stream; charset=utf-8",
            headers={**headers, "cache-control": "no-cache"},
        )

    @staticmethod
    async def _stream(
        message: dict[str, Any], stream_error: str | None, error_message: str | None, cut_after: int | None
    ) -> AsyncIterator[bytes]:
        usage = message["usage"]
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        frames: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": start})
        ]
        for index, block in enumerate(message["content"]):
            first: dict[str, Any]
            if block["type"] == "text":
                first = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
            else:
                first = {**block, "input": {}}
                args = json.dumps(block["input"])
                deltas = [
                    {"type": "input_json_delta", "partial_json": args[i : i + 7]}
                    for i in range(0, len(args), 7)
                ]
            frames.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": first},
                )
            )
            if index == 0:
                frames.append(("ping", {"type": "ping"}))
            frames += [
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                for d in deltas
            ]
            frames.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        if not message["content"]:
            frames.append(("ping", {"type": "ping"}))
        frames.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": message["stop_reason"],
                        "stop_sequence": message["stop_sequence"],
                    },
                    "usage": {
                        "input_tokens": usage["input_tokens"],
                        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
                        "cache_read_input_tokens": usage["cache_read_input_tokens"],
                        "output_tokens": usage["output_tokens"],
                    },
                },
            )
        )
        frames.append(("message_stop", {"type": "message_stop"}))
        if stream_error:
            names = [name for name, _ in frames]
            at = names.index("content_block_delta") + 1 if "content_block_delta" in names else 1
            error = {
                "type": "error",
                "error": {
                    "type": stream_error,
                    "message": error_message or ERROR_MESSAGES.get(stream_error, "error"),
                },
            }
            frames = [*frames[:at], ("error", error)]
        for n, (name, data) in enumerate(frames):
            if cut_after is not None and n >= cut_after:
                raise ConnectionResetError("simulated upstream failure")  # uvicorn drops the connection
            yield f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
            await asyncio.sleep(0)

    async def count_tokens(self, request: Request) -> Response:
        request_id = _ident("req_011C", 20)
        try:
            body, _, version = await self._prelude(request)
            body = self._validate(body, COMMON_FIELDS, needs_max_tokens=False, version=version)
        except SimError as err:
            return self._error(err, request_id)
        return JSONResponse({"input_tokens": _input_tokens(body)}, headers={"request-id": request_id})

    @staticmethod
    def _model_object(model: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": model,
            "display_name": MODELS[model][0],
            "created_at": MODEL_CREATED_AT,
        }

    async def models(self, request: Request) -> Response:
        request_id = _ident("req_011C", 20)
        try:
            self._check_headers(request)
        except SimError as err:
            return self._error(err, request_id)
        data = [self._model_object(m) for m in MODELS]
        body = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        return JSONResponse(body, headers={"request-id": request_id})

    async def model(self, request: Request) -> Response:
        request_id = _ident("req_011C", 20)
        model = request.path_params["model_id"]
        try:
            self._check_headers(request)
            if model not in MODELS:
                raise SimError(404, f"model: {model}", "not_found_error")
        except SimError as err:
            return self._error(err, request_id)
        return JSONResponse(self._model_object(model), headers={"request-id": request_id})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", default="sk-ant-sim")
    parser.add_argument(
        "--merge-consecutive",
        action="store_true",
        help="combine consecutive same-role turns (as the API now does) instead of refusing them",
    )
    args = parser.parse_args()
    app = Simulator(args.key, merge_consecutive=args.merge_consecutive).app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
