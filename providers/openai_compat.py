"""Any backend that speaks OpenAI's HTTP API: vLLM, SGLang, TGI, Ollama, OpenAI itself.

They differ only in configuration (base URL, key, model names), so one class serves all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field

from providers.base import Completion, Dialect, Headers, UnsupportedRequest, UpstreamError, Usage
from providers.errors import error_from_response
from providers.http import HttpClient, HttpConfig, SSEStream
from providers.kind import Kind, Options
from providers.sse import Event

# vLLM and others add keys with null values that OpenAI's contract types strictly (`annotations`,
# `function_call`, `prompt_tokens_details`, ...) or does not know (`stop_reason`, `token_ids`, ...).
# Nulls are dropped on the raw bytes, without a parse: `,"` and `{"` cannot occur unescaped inside
# a JSON string, so these patterns only ever match real keys. Nulls that OpenAI itself sends stay.
# The key's letters are possessive (`++`): a key is followed by `"`, never a letter, so giving letters
# back cannot make a match; not trying saves a fifth of the scan of every answer.
_KEPT_NULLS = rb'(?!(?:content|refusal|logprobs|finish_reason)")'
_NULL_AFTER_COMMA = re.compile(rb',"' + _KEPT_NULLS + rb'[A-Za-z_]++":null(?=[,}])')
_NULL_FIRST = re.compile(rb'\{"' + _KEPT_NULLS + rb'[A-Za-z_]++":null(,|(?=\}))')


def strip_disallowed_nulls(data: bytes) -> bytes:
    """Remove null-valued keys that OpenAI's schema does not allow to be null."""
    if b":null" not in data:
        return data
    data = _NULL_AFTER_COMMA.sub(b"", data)
    return _NULL_FIRST.sub(b"{", data)


# Only chat and completion objects are trimmed: a Response object's nulls are part of its contract
# (`error`, `incomplete_details`, `instructions` are required and null when unset).
TRIMMED_PATHS = frozenset({"/chat/completions", "/completions"})

ENGINE_METRICS = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")


def openai_usage(body: dict[str, Any]) -> Usage | None:
    """OpenAI's `usage` object, from a response or a stream's final chunk (or an embeddings list)."""
    return usage_from(body.get("usage"), "prompt_tokens", "completion_tokens", "prompt_tokens_details")


def usage_from(usage: Any, given: str, made: str, details_key: str) -> Usage | None:
    """A usage object by its key names: Chat's `prompt_tokens`, or Responses' `input_tokens`."""
    if not isinstance(usage, dict):
        return None
    details = usage.get(details_key)
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt, completion = usage.get(given), usage.get(made)
    return Usage(  # positional: keywords cost ~0.3 us more a call
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
        cached if isinstance(cached, int) else 0,
    )


def _stream_transform(backend: str, secrets: tuple[str, ...], trim: bool) -> Callable[[Event], Event | None]:
    def transform(event: Event) -> Event | None:
        data = event.data
        if data == b"[DONE]":
            return None
        if data.startswith(b'{"error"') or data.startswith(b'{"object":"error"'):
            # vLLM and OpenAI report a failure after the stream began as an error object in a data line.
            raise error_from_response(backend, 500, {}, data, secrets)
        return Event(strip_disallowed_nulls(data), event.event) if trim else event

    return transform


class OpenAICompatProvider:
    dialect: Dialect = "openai"
    responses_over_chat = False  # serve /responses through the backend's /chat/completions

    def __init__(self, config: HttpConfig, api_key: str | None = None) -> None:
        headers = dict(config.headers)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        secrets = (*config.secrets, api_key) if api_key else config.secrets
        self.name = config.name
        self.http = HttpClient(replace(config, headers=headers, secrets=secrets))

    async def complete(self, path: str, body: dict[str, Any], headers: Headers = None) -> Completion:
        started = time.perf_counter()
        status, raw = await self.http.call("POST", self.http.base + path, body, headers=headers)
        if status == 404:
            raise self.http.error(404, {}, raw)
        if path in TRIMMED_PATHS:
            raw = strip_disallowed_nulls(raw)
        return Completion(self.http.parse(raw), raw, time.perf_counter() - started)

    async def stream(self, path: str, body: dict[str, Any], headers: Headers = None) -> SSEStream:
        resp = await self.http.open_stream(self.http.base + path, body, headers)
        return SSEStream(
            self.name, resp, _stream_transform(self.name, self.http.config.secrets, path in TRIMMED_PATHS)
        )

    async def list_models(self) -> list[str]:
        return await self.http.model_ids()

    async def count_tokens(self, body: dict[str, Any], headers: Headers = None) -> int:
        """vLLM (and SGLang) answer `POST /tokenize` beside `/v1`; other servers cannot count."""
        root = self.http.base.removesuffix("/v1")
        payload = {k: body[k] for k in ("model", "messages", "prompt", "tools") if k in body}
        status, raw = await self.http.call("POST", root + "/tokenize", payload, headers=headers)
        if status == 404:
            raise UnsupportedRequest(f"backend '{self.name}' cannot count tokens (it has no /tokenize)")
        try:
            return int(orjson.loads(raw)["count"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UpstreamError(502, f"backend '{self.name}' returned an unreadable token count") from None

    async def health(self) -> bool:
        """vLLM's (and SGLang's) `GET /health` beside `/v1`: 200 while its engine serves. A server
        without one (404) is healthy when it lists its models."""
        status, _ = await self.http.call(
            "GET", self.http.base.removesuffix("/v1") + "/health", limit_seconds=5
        )
        if status == 404:
            await self.http.model_ids()
        return status < 300 or status == 404

    async def engine_state(self) -> dict[str, float]:
        """vLLM's own queue state from its Prometheus endpoint beside `/v1`, summed over engines."""
        status, raw = await self.http.call(
            "GET", self.http.base.removesuffix("/v1") + "/metrics", limit_seconds=5
        )
        if status == 404:
            raise UnsupportedRequest(f"backend '{self.name}' exports no /metrics")
        state = dict.fromkeys(ENGINE_METRICS, 0.0)
        for line in raw.decode("utf-8", "replace").splitlines():
            name = line.partition("{")[0].partition(" ")[0]
            if name in state:
                try:
                    state[name] += float(line.rsplit(" ", 1)[1])
                except (IndexError, ValueError):
                    continue
        return state

    async def close(self) -> None:
        await self.http.close()


class OpenAICompatibleOptions(Options):
    gpu_usd_per_hour: Annotated[float, Field(ge=0)] | None = None  # per GPU; self-hosted deployments
    gpus: Annotated[int, Field(ge=1)] = 1
    scrape_metrics: bool = False  # read vLLM's queue and KV-cache state from its /metrics every 5 s
    # "chat": the gateway translates /v1/responses to Chat Completions for this backend (servers without
    # /v1/responses, or whose Responses API ignores tool_choice, as vLLM's does without a tool parser).
    responses_api: Literal["native", "chat"] = "native"


def _build(http: HttpConfig, api_key: str | None, options: OpenAICompatibleOptions) -> OpenAICompatProvider:
    provider = OpenAICompatProvider(http, api_key)
    provider.responses_over_chat = options.responses_api == "chat"
    return provider


# vLLM, OpenAI, TGI, SGLang, Ollama: one kind, differing only in configuration.
KIND = Kind("openai_compatible", OpenAICompatibleOptions, _build)
