"""Any backend that speaks OpenAI's HTTP API: vLLM, SGLang, TGI, Ollama, OpenAI itself.

They differ only in configuration (base URL, key, model names), so one class serves all.
Transport is aiohttp: on this machine its client forwarded several times more requests per
second than httpx's (see bench/README.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from providers.base import Completion, UpstreamError
from providers.errors import error_from_response, error_from_transport
from providers.sse import SSEDecoder

# vLLM and others add keys with null values that OpenAI's contract types strictly (`annotations`,
# `function_call`, `prompt_tokens_details`, ...) or does not know (`stop_reason`, `token_ids`, ...).
# Nulls are dropped on the raw bytes, without a parse: `,"` and `{"` cannot occur unescaped inside
# a JSON string, so these patterns only ever match real keys. Nulls that OpenAI itself sends stay.
_KEPT_NULLS = rb"(?!(?:content|refusal|logprobs|finish_reason)\")"
_NULL_AFTER_COMMA = re.compile(rb',"' + _KEPT_NULLS + rb'[A-Za-z_]+":null(?=[,}])')
_NULL_FIRST = re.compile(rb'\{"' + _KEPT_NULLS + rb'[A-Za-z_]+":null(,|(?=\}))')


def strip_disallowed_nulls(data: bytes) -> bytes:
    """Remove null-valued keys that OpenAI's schema does not allow to be null."""
    if b":null" not in data:
        return data
    data = _NULL_AFTER_COMMA.sub(b"", data)
    return _NULL_FIRST.sub(b"{", data)


@dataclass(frozen=True, slots=True)
class OpenAICompatConfig:
    name: str
    base_url: str
    api_key: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    max_connections: int = 256
    headers: Mapping[str, str] = field(default_factory=dict)


class OpenAICompatProvider:
    def __init__(self, config: OpenAICompatConfig) -> None:
        self.name = config.name
        self._config = config
        self._base = config.base_url.rstrip("/")
        headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._headers = headers
        self._secrets = (config.api_key,) if config.api_key else ()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Built lazily, inside the running loop, and reused for every call (one pool per backend).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._config.max_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self._config.connect_timeout, sock_read=self._config.read_timeout
                ),
                headers=self._headers,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def complete(self, path: str, body: dict[str, Any]) -> Completion:
        started = time.perf_counter()
        try:
            async with self._client().post(self._base + path, data=orjson.dumps(body)) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise error_from_transport(self.name, exc) from None
        if status >= 400:
            raise error_from_response(self.name, status, headers, raw, self._secrets)
        raw = strip_disallowed_nulls(raw)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                502, f"backend '{self.name}' returned a body that is not JSON", retryable=True
            ) from None
        if not isinstance(parsed, dict):
            raise UpstreamError(502, f"backend '{self.name}' returned an unexpected body", retryable=True)
        return Completion(parsed, raw, time.perf_counter() - started)

    async def stream(self, path: str, body: dict[str, Any]) -> _AiohttpEventStream:
        try:
            resp = await self._client().post(self._base + path, data=orjson.dumps(body))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise error_from_transport(self.name, exc) from None
        if resp.status >= 400 or not resp.content_type.startswith("text/event-stream"):
            try:
                raw = await resp.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise error_from_transport(self.name, exc) from None
            finally:
                resp.release()
            status = resp.status if resp.status >= 400 else 502
            raise error_from_response(self.name, status, resp.headers, raw, self._secrets)
        return _AiohttpEventStream(self.name, resp)

    async def list_models(self) -> list[str]:
        try:
            async with self._client().get(
                self._base + "/models", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise error_from_response(self.name, resp.status, resp.headers, raw, self._secrets)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise error_from_transport(self.name, exc) from None
        try:
            return [str(m["id"]) for m in orjson.loads(raw)["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UpstreamError(502, f"backend '{self.name}' returned an unreadable model list") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpEventStream:
    __slots__ = ("_backend", "_done", "_resp")

    def __init__(self, backend: str, resp: aiohttp.ClientResponse) -> None:
        self._backend = backend
        self._resp = resp
        self._done = False

    async def __aiter__(self) -> AsyncIterator[list[bytes]]:
        decoder = SSEDecoder()
        try:
            async for chunk in self._resp.content.iter_any():
                batch = []
                for event in decoder.feed(chunk):
                    if event.data == b"[DONE]":
                        self._done = True
                        break
                    batch.append(strip_disallowed_nulls(event.data))
                if batch:
                    yield batch
                if self._done:
                    return
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise error_from_transport(self._backend, exc) from None
        self._done = True  # the upstream ended without [DONE]; treat the end of body as the end

    async def aclose(self) -> None:
        if self._done:
            self._resp.release()
        else:
            # Dropping the connection is what tells vLLM to abort generation and free its KV cache.
            self._resp.close()
