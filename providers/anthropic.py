"""Anthropic's Messages API as a backend: transport only. Translation lives in
providers/openai_over_anthropic.py (OpenAI clients) and is not needed for Anthropic clients."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any

import orjson
from pydantic import Field

from providers.base import Completion, Dialect, Headers, UpstreamError, Usage
from providers.http import HttpClient, HttpConfig, SSEStream
from providers.kind import Kind, Options
from providers.sse import Event

DEFAULT_VERSION = "2023-06-01"


def anthropic_usage(usage: Any) -> Usage | None:
    """Anthropic counts cache reads and writes apart from `input_tokens`; OpenAI's prompt_tokens
    (and so ours) include both."""
    if not isinstance(usage, dict):
        return None

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) else 0

    cached = count("cache_read_input_tokens")
    return Usage(
        input=count("input_tokens") + count("cache_creation_input_tokens") + cached,
        output=count("output_tokens"),
        cached=cached,
    )


class AnthropicProvider:
    dialect: Dialect = "anthropic"
    default_max_tokens = 4096  # for translated OpenAI requests that set no max_tokens

    def __init__(self, config: HttpConfig, api_key: str | None, version: str = DEFAULT_VERSION) -> None:
        headers = {**config.headers, "anthropic-version": version}
        if api_key:
            headers["x-api-key"] = api_key
        secrets = (*config.secrets, api_key) if api_key else config.secrets
        self.name = config.name
        self.http = HttpClient(replace(config, headers=headers, secrets=secrets))

    def _event(self, event: Event) -> Event:
        if event.event == "error":
            # A failure after the stream began (e.g. overloaded): surfaces like any upstream error.
            raise self.http.error(_stream_error_status(event.data), {}, event.data)
        return event

    async def complete(self, path: str, body: dict[str, Any], headers: Headers = None) -> Completion:
        started = time.perf_counter()
        parsed, raw = await self.http.post_json(self.http.base + path, body, headers)
        return Completion(parsed, raw, time.perf_counter() - started)

    async def stream(self, path: str, body: dict[str, Any], headers: Headers = None) -> SSEStream:
        resp = await self.http.open_stream(self.http.base + path, body, headers)
        return SSEStream(self.name, resp, self._event)

    async def list_models(self) -> list[str]:
        return await self.http.model_ids()

    async def count_tokens(self, body: dict[str, Any], headers: Headers = None) -> int:
        payload = {
            k: v
            for k, v in body.items()
            if k
            not in ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata")
        }
        parsed, _ = await self.http.post_json(self.http.base + "/messages/count_tokens", payload, headers)
        count = parsed.get("input_tokens")
        if not isinstance(count, int):
            raise UpstreamError(502, f"backend '{self.name}' returned an unreadable token count")
        return count

    async def close(self) -> None:
        await self.http.close()


_STREAM_ERROR_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "invalid_request_error": 400,
    "timeout_error": 504,
}


def _stream_error_status(data: bytes) -> int:
    try:
        kind = orjson.loads(data)["error"]["type"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return 500
    return _STREAM_ERROR_STATUS.get(kind, 500)


class AnthropicOptions(Options):
    anthropic_version: str = DEFAULT_VERSION
    default_max_tokens: Annotated[int, Field(ge=1)] = 4096  # for OpenAI requests that set none


def _build(http: HttpConfig, api_key: str | None, options: AnthropicOptions) -> AnthropicProvider:
    provider = AnthropicProvider(http, api_key, options.anthropic_version)
    provider.default_max_tokens = options.default_max_tokens
    return provider


KIND = Kind("anthropic", AnthropicOptions, _build, base_url="https://api.anthropic.com/v1")
