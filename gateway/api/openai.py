"""OpenAI's surface: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from classifier import extract_features
from gateway.accounting import usage_from
from gateway.errors import InvalidRequest, Unauthenticated, error_response
from gateway.inbound import read_json, validate_chat, validate_completion
from gateway.relay import EventStreamResponse, Exchange, relay_events
from gateway.routing import ROUTES, Decision, decide, direct
from gateway.runtime import Resolved, Runtime
from gateway.state import GatewayState
from providers.base import Completion, EventStream, UpstreamError

ROUTE_HEADER = "x-crossover-route"


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def authenticate(request: Request, keys: frozenset[str]) -> None:
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        token = request.headers.get("x-api-key", "")
    # Compare against every key in constant time so timing does not reveal a prefix.
    if not token or not any(hmac.compare_digest(token, key) for key in keys):
        raise Unauthenticated(
            "Incorrect API key provided. Send the gateway key as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )


async def _decide(runtime: Runtime, state: GatewayState, request: Request, body: dict[str, Any]) -> Decision:
    model: str = body["model"]
    router = runtime.settings.routers.get(model)
    if router is None:
        return direct(await runtime.target_for_model(model))
    forced = request.headers.get(ROUTE_HEADER)
    if forced is not None and forced not in ROUTES:
        raise InvalidRequest(
            f"Invalid value for header '{ROUTE_HEADER}': {forced!r}. Use 'local' or 'api'.",
            param=ROUTE_HEADER,
            code="invalid_value",
        )
    score = None
    if forced is None:
        started = time.perf_counter()
        score = runtime.classifiers[model].score(extract_features(body))
        state.metrics.classifier_seconds.labels(model).observe(time.perf_counter() - started)
        state.metrics.score.labels(model).observe(score)
    decision = decide(router, score, forced)
    state.metrics.decisions.labels(model, decision.route, decision.reason).inc()
    return decision


def _headers(
    decision: Decision, resolved: Resolved, overhead: float, fell_back: str | None
) -> dict[str, str]:
    headers = {
        "x-crossover-route": decision.route,
        "x-crossover-backend": resolved.backend.name,
        "x-crossover-model": resolved.model.name,
        "x-crossover-overhead-ms": f"{overhead * 1000:.3f}",
    }
    if decision.score is not None:
        headers["x-crossover-score"] = f"{decision.score:.4f}"
    if decision.threshold is not None:
        headers["x-crossover-threshold"] = f"{decision.threshold:.4f}"
    if fell_back is not None:
        headers["x-crossover-fallback-from"] = fell_back
    return headers


async def _call(
    runtime: Runtime, state: GatewayState, decision: Decision, path: str, body: dict[str, Any], stream: bool
) -> tuple[Resolved, Completion | EventStream, float, str | None]:
    """Try the decided target, then its fallback on a retryable failure.
    Returns what answered, the answer, the time spent upstream, and the backend fallen back from."""
    targets = [decision.target] if decision.fallback is None else [decision.target, decision.fallback]
    upstream_seconds = 0.0
    failed: str | None = None
    for attempt, target in enumerate(targets):
        started = time.perf_counter()
        try:
            resolved = await runtime.resolve(target)
            outgoing = {**body, "model": resolved.model.upstream}
            answer: Completion | EventStream
            if stream:
                options = body.get("stream_options") or {}
                outgoing["stream_options"] = {**options, "include_usage": True}
                answer = await resolved.provider.stream(path, outgoing)
            else:
                answer = await resolved.provider.complete(path, outgoing)
            return resolved, answer, upstream_seconds + time.perf_counter() - started, failed
        except UpstreamError as exc:
            upstream_seconds += time.perf_counter() - started
            state.metrics.upstream_errors.labels(target.backend, exc.code or exc.type).inc()
            if not exc.retryable or attempt == len(targets) - 1:
                raise
            failed = target.backend
            state.metrics.fallbacks.labels(target.backend, targets[attempt + 1].backend).inc()
    raise AssertionError("unreachable")


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


async def _serve(request: Request, path: str, validate: Callable[[dict[str, Any]], None]) -> Response:
    started = time.perf_counter()
    state = _state(request)
    runtime = state.acquire()
    released = False
    try:
        authenticate(request, runtime.settings.api_keys)
        body = await read_json(request, runtime.settings.max_body_bytes)
        validate(body)
        decision = await _decide(runtime, state, request, body)
        stream = body.get("stream") is True
        try:
            resolved, answer, upstream, fell_back = await _call(runtime, state, decision, path, body, stream)
        except UpstreamError as exc:
            state.metrics.requests.labels(
                decision.route,
                decision.target.backend,
                decision.target.model or "",
                _status_class(exc.status),
            ).inc()
            raise
        if fell_back is not None and decision.route in ROUTES:
            # Account the request to the route that actually answered it.
            decision = replace(
                decision, route="local" if decision.route == "api" else "api", reason="fallback"
            )
        exchange = Exchange(state.metrics, decision, resolved, stream, started, upstream)
        if isinstance(answer, Completion):
            exchange.usage = usage_from(answer.body)
            headers = _headers(decision, resolved, exchange.overhead(time.perf_counter()), fell_back)
            exchange.finish()
            return Response(answer.raw, media_type="application/json", headers=headers)

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        headers = _headers(decision, resolved, exchange.overhead(time.perf_counter()), fell_back)

        async def on_close(disconnected: bool) -> None:
            await answer.aclose()  # idempotent; covers a stream cancelled before its first event
            if disconnected:
                exchange.status_class = "cancelled"
            exchange.finish()
            state.release(runtime)

        released = True  # from here the stream owns the runtime lease
        return EventStreamResponse(relay_events(answer, exchange, include_usage), headers, on_close)
    except Exception as exc:
        return error_response(exc)
    finally:
        if not released:
            state.release(runtime)


async def chat_completions(request: Request) -> Response:
    return await _serve(request, "/chat/completions", validate_chat)


async def completions(request: Request) -> Response:
    return await _serve(request, "/completions", validate_completion)


async def list_models(request: Request) -> Response:
    state = _state(request)
    runtime = state.runtime
    try:
        authenticate(request, runtime.settings.api_keys)
    except Exception as exc:
        return error_response(exc)
    data: list[dict[str, Any]] = [
        {"id": name, "object": "model", "created": 0, "owned_by": "crossover"}
        for name in runtime.settings.routers
    ]
    seen = set(runtime.settings.routers)
    for backend, model in runtime.models():
        name = model.name if model.name not in seen else f"{backend}/{model.name}"
        seen.add(name)
        data.append({"id": name, "object": "model", "created": 0, "owned_by": backend})
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")
