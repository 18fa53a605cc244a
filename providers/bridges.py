"""Bridges between the client's wire format and the backend's: one per (client, backend) dialect
pair, chosen in one place (`bridge_for`). Same-dialect bridges forward the bytes as they came and
only read what accounting needs; cross-dialect bridges use the pure translation modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import orjson

from providers.anthropic import AnthropicProvider, anthropic_usage
from providers.anthropic_over_openai import (
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from providers.base import Completion, Provider, UnsupportedRequest, Usage
from providers.openai_compat import openai_usage
from providers.openai_over_anthropic import (
    JSON_TOOL,
    AnthropicToOpenAIStream,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
)
from providers.responses import (
    ChatToResponsesStream,
    chat_to_responses_response,
    responses_to_chat_request,
    responses_usage,
)
from providers.sse import Event, encode

# The first chunk that carries generated text or a tool call marks time to first token.
_HAS_TOKEN = re.compile(rb'"(?:content|text)": ?"[^"]|"tool_calls": ?\[')


class StreamBridge(Protocol):
    first_token: bool  # becomes True with the first event carrying generated content

    @property
    def usage(self) -> Usage | None: ...

    def feed(self, events: list[Event]) -> bytes:
        """Client-dialect frames for these upstream events (b"" when there is nothing to send)."""
        ...

    def end(self) -> bytes:
        """Frames that close the stream for the client once the upstream is done."""
        ...


@runtime_checkable
class NumberedStream(Protocol):
    """A Responses stream: its events are numbered, and an error event ending it takes the next number."""

    @property
    def sequence(self) -> int: ...


class Bridge(Protocol):
    backend_path: str

    def request(self, model: str) -> dict[str, Any]:
        """The body to send upstream, for the backend's model name."""
        ...

    def response(self, completion: Completion) -> tuple[bytes, Usage | None]: ...

    def stream(self) -> StreamBridge: ...


# ---- OpenAI client, OpenAI-compatible backend: forward as is -------------------------------------


class _OpenAIPassthroughStream:
    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.first_token = False

    def feed(self, events: list[Event]) -> bytes:
        out = []
        for event in events:
            data = event.data
            if not self.first_token and _HAS_TOKEN.search(data):
                self.first_token = True
            if b'"usage":{' in data or b'"usage": {' in data:
                chunk = orjson.loads(data)
                self.usage = openai_usage(chunk)
                if not self.include_usage:
                    # The gateway asked for usage, the client did not: OpenAI would not send it.
                    if not chunk.get("choices"):
                        continue
                    del chunk["usage"]
                    data = orjson.dumps(chunk)
            out.append(encode(data))
        return b"".join(out)

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"


class OpenAIPassthrough:
    def __init__(self, body: dict[str, Any], path: str) -> None:
        self.body = body
        self.backend_path = path

    def request(self, model: str) -> dict[str, Any]:
        out = {**self.body, "model": model}
        if self.body.get("stream") is True:
            out["stream_options"] = {**(self.body.get("stream_options") or {}), "include_usage": True}
        return out

    def response(self, completion: Completion) -> tuple[bytes, Usage | None]:
        return completion.raw, openai_usage(completion.body)

    def stream(self) -> StreamBridge:
        options = self.body.get("stream_options")
        return _OpenAIPassthroughStream(isinstance(options, dict) and options.get("include_usage") is True)


# ---- Anthropic client, Anthropic backend: forward as is ------------------------------------------


class _AnthropicPassthroughStream:
    def __init__(self) -> None:
        self._usage: dict[str, Any] = {}
        self.usage: Usage | None = None
        self.first_token = False

    def feed(self, events: list[Event]) -> bytes:
        for event in events:
            if event.event == "message_start":
                self._usage = dict((orjson.loads(event.data).get("message") or {}).get("usage") or {})
            elif event.event == "message_delta":
                late = orjson.loads(event.data).get("usage") or {}
                self._usage.update({k: v for k, v in late.items() if v is not None})
                self.usage = anthropic_usage(self._usage)
            elif event.event == "content_block_delta":
                self.first_token = True
        return b"".join(encode(e.data, e.event) for e in events)

    def end(self) -> bytes:
        return b""  # message_stop came from upstream


class AnthropicPassthrough:
    backend_path = "/messages"

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def request(self, model: str) -> dict[str, Any]:
        return {**self.body, "model": model}

    def response(self, completion: Completion) -> tuple[bytes, Usage | None]:
        return completion.raw, anthropic_usage(completion.body.get("usage"))

    def stream(self) -> StreamBridge:
        return _AnthropicPassthroughStream()


# ---- OpenAI client, Anthropic backend --------------------------------------------------------------


class _OpenAIOverAnthropicStream:
    def __init__(self, json_mode: bool, include_usage: bool) -> None:
        self.translator = AnthropicToOpenAIStream(json_mode)
        self.include_usage = include_usage
        self.first_token = False

    @property
    def usage(self) -> Usage | None:
        return self.translator.usage

    def feed(self, events: list[Event]) -> bytes:
        out = []
        for event in events:
            for chunk in self.translator.feed(event.event, orjson.loads(event.data)):
                delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
                if delta.get("content") or delta.get("tool_calls"):
                    self.first_token = True
                out.append(encode(orjson.dumps(chunk)))
        return b"".join(out)

    def end(self) -> bytes:
        usage = encode(orjson.dumps(self.translator.usage_chunk())) if self.include_usage else b""
        return usage + b"data: [DONE]\n\n"


class OpenAIOverAnthropic:
    backend_path = "/messages"

    def __init__(self, body: dict[str, Any], default_max_tokens: int) -> None:
        self.body = body
        self.default_max_tokens = default_max_tokens
        self.json_mode = False

    def request(self, model: str) -> dict[str, Any]:
        out = openai_to_anthropic_request(self.body, model, self.default_max_tokens)
        self.json_mode = any(t.get("name") == JSON_TOOL for t in out.get("tools") or [])
        return out

    def response(self, completion: Completion) -> tuple[bytes, Usage | None]:
        translated = anthropic_to_openai_response(completion.body, self.json_mode)
        return orjson.dumps(translated), anthropic_usage(completion.body.get("usage"))

    def stream(self) -> StreamBridge:
        options = self.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return _OpenAIOverAnthropicStream(self.json_mode, include_usage)


# ---- Anthropic client, OpenAI-compatible backend ---------------------------------------------------


def _encode_events(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    """Named SSE events (Anthropic's and Responses' streams name each one)."""
    return b"".join(encode(orjson.dumps(data), name) for name, data in events)


class _AnthropicOverOpenAIStream:
    def __init__(self, model: str) -> None:
        self.translator = OpenAIToAnthropicStream(model)
        self.first_token = False

    @property
    def usage(self) -> Usage | None:
        return self.translator.usage

    def feed(self, events: list[Event]) -> bytes:
        out = []
        for event in events:
            translated = self.translator.feed(orjson.loads(event.data))
            self.first_token = self.first_token or any(n == "content_block_delta" for n, _ in translated)
            out.append(_encode_events(translated))
        return b"".join(out)

    def end(self) -> bytes:
        return _encode_events(self.translator.finish())


class AnthropicOverOpenAI:
    backend_path = "/chat/completions"

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.model = str(body.get("model", ""))

    def request(self, model: str) -> dict[str, Any]:
        self.model = model
        return anthropic_to_openai_request(self.body, model)

    def response(self, completion: Completion) -> tuple[bytes, Usage | None]:
        return orjson.dumps(openai_to_anthropic_response(completion.body)), openai_usage(completion.body)

    def stream(self) -> StreamBridge:
        return _AnthropicOverOpenAIStream(self.model)


# ---- OpenAI Responses client: forwarded to a backend that serves /responses, or over Chat to Anthropic ---

# The Responses stream's closing events; each carries the whole response, its usage included.
_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSE_TOKENS = frozenset(
    {"response.output_text.delta", "response.function_call_arguments.delta", "response.refusal.delta"}
)


class _ResponsesPassthroughStream:
    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.first_token = False
        self.sequence = 0  # events forwarded: OpenAI numbers them from 0, one by one

    def feed(self, events: list[Event]) -> bytes:
        self.sequence += len(events)
        for event in events:
            kind = event.event
            data: dict[str, Any] | None = None
            if kind is None:  # a server that names the event only in its data
                data = orjson.loads(event.data)
                kind = data.get("type") if isinstance(data, dict) else None
            if kind in _RESPONSE_TOKENS:
                self.first_token = True
            elif kind in _RESPONSE_ENDS:
                data = data or orjson.loads(event.data)
                self.usage = responses_usage(data.get("response") or {})
        return b"".join(encode(e.data, e.event) for e in events)

    def end(self) -> bytes:
        return b""  # Responses streams end with their last event, no [DONE]


class ResponsesPassthrough:
    backend_path = "/responses"

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def request(self, model: str) -> dict[str, Any]:
        return {**self.body, "model": model}

    def response(self, completion: Completion) -> tuple[bytes, Usage | None]:
        return completion.raw, responses_usage(completion.body)

    def stream(self) -> StreamBridge:
        return _ResponsesPassthroughStream()


class _ResponsesOverAnthropicStream:
    """Anthropic events → chat chunks → Responses events, one translator after the other."""

    def __init__(self, request: dict[str, Any], json_mode: bool) -> None:
        self.chat = AnthropicToOpenAIStream(json_mode)
        self.responses = ChatToResponsesStream(request)
        self.first_token = False

    @property
    def usage(self) -> Usage | None:
        return self.chat.usage

    @property
    def sequence(self) -> int:
        return self.responses.sequence

    def feed(self, events: list[Event]) -> bytes:
        out = []
        for event in events:
            for chunk in self.chat.feed(event.event, orjson.loads(event.data)):
                translated = self.responses.feed(chunk)
                self.first_token = self.first_token or any(n in _RESPONSE_TOKENS for n, _ in translated)
                out.append(_encode_events(translated))
        return b"".join(out)

    def end(self) -> bytes:
        return _encode_events(self.responses.finish_events(self.chat.usage))


class ResponsesOverAnthropic:
    """Responses → Chat Completions → Messages, and back: the chat bridge does the second step."""

    backend_path = "/messages"

    def __init__(self, body: dict[str, Any], default_max_tokens: int) -> None:
        self.body = body
        self.chat = OpenAIOverAnthropic(responses_to_chat_request(body), default_max_tokens)

    def request(self, model: str) -> dict[str, Any]:
        return self.chat.request(model)

    def response(self, completion: Completion) -> tuple[bytes, Usage | None]:
        usage = anthropic_usage(completion.body.get("usage"))
        chat = anthropic_to_openai_response(completion.body, self.chat.json_mode)
        return orjson.dumps(chat_to_responses_response(chat, self.body, usage)), usage

    def stream(self) -> StreamBridge:
        return _ResponsesOverAnthropicStream(self.body, self.chat.json_mode)


class _ResponsesOverChatStream:
    def __init__(self, request: dict[str, Any]) -> None:
        self.responses = ChatToResponsesStream(request)
        self.usage: Usage | None = None
        self.first_token = False

    @property
    def sequence(self) -> int:
        return self.responses.sequence

    def feed(self, events: list[Event]) -> bytes:
        out = []
        for event in events:
            chunk = orjson.loads(event.data)
            if isinstance(chunk.get("usage"), dict):
                self.usage = openai_usage(chunk)
            translated = self.responses.feed(chunk)
            self.first_token = self.first_token or any(n in _RESPONSE_TOKENS for n, _ in translated)
            out.append(_encode_events(translated))
        return b"".join(out)

    def end(self) -> bytes:
        return _encode_events(self.responses.finish_events(self.usage))


class ResponsesOverChat:
    """Responses → Chat Completions on an OpenAI-compatible backend (`responses_api: chat`), and back."""

    backend_path = "/chat/completions"

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.chat = responses_to_chat_request(body)

    def request(self, model: str) -> dict[str, Any]:
        return {**self.chat, "model": model}

    def response(self, completion: Completion) -> tuple[bytes, Usage | None]:
        usage = openai_usage(completion.body)
        return orjson.dumps(chat_to_responses_response(completion.body, self.body, usage)), usage

    def stream(self) -> StreamBridge:
        return _ResponsesOverChatStream(self.body)


def _openai_responses(body: dict[str, Any], provider: Provider) -> Bridge:
    if getattr(provider, "responses_over_chat", False):
        return ResponsesOverChat(body)
    return ResponsesPassthrough(body)


def _default_max_tokens(provider: Provider) -> int:
    return int(getattr(provider, "default_max_tokens", AnthropicProvider.default_max_tokens))


_RESPONSES: dict[str, Callable[[dict[str, Any], Provider], Bridge]] = {
    "openai": _openai_responses,
    "anthropic": lambda body, p: ResponsesOverAnthropic(body, _default_max_tokens(p)),
}


_BRIDGES: dict[tuple[str, str], Callable[[dict[str, Any], str, Provider], Bridge]] = {
    ("openai", "openai"): lambda body, path, _: OpenAIPassthrough(body, path),
    ("anthropic", "anthropic"): lambda body, _path, _p: AnthropicPassthrough(body),
    ("openai", "anthropic"): lambda body, path, p: _openai_over_anthropic(body, path, p),
    ("anthropic", "openai"): lambda body, _path, _p: AnthropicOverOpenAI(body),
}


def _openai_over_anthropic(body: dict[str, Any], path: str, provider: Provider) -> Bridge:
    if path == "/embeddings":
        raise UnsupportedRequest(
            f"backend '{provider.name}' (Anthropic) has no embeddings: name an embedding model "
            "of an OpenAI-compatible backend",
            "model",
        )
    if path != "/chat/completions":
        raise UnsupportedRequest(
            f"backend '{provider.name}' (Anthropic) serves chat completions only", "model"
        )
    return OpenAIOverAnthropic(body, _default_max_tokens(provider))


def bridge_for(client_dialect: str, path: str, provider: Provider, body: dict[str, Any]) -> Bridge:
    """`path` is the client's path in its own dialect, e.g. "/chat/completions" or "/messages"."""
    if path == "/responses":  # OpenAI's only: its own small table
        return _RESPONSES[provider.dialect](body, provider)
    return _BRIDGES[(client_dialect, provider.dialect)](body, path, provider)
