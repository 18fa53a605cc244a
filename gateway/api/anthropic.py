"""Anthropic's surface: POST /v1/messages and /v1/messages/count_tokens, errors in Anthropic's shape.

Requests are scored and routed like any other: to an Anthropic backend natively, or translated to an
OpenAI-compatible backend (the local vLLM) and back."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import error_response
from gateway.inbound import read_json, validate_messages
from gateway.pipeline import authenticate, gateway_state, passthrough_headers, route, serve
from providers.bridges import bridge_for


async def messages(request: Request) -> Response:
    return await serve(request, "anthropic", "/messages", validate_messages)


async def count_tokens(request: Request) -> Response:
    """Counted by the backend the request would be routed to, in that backend's own terms."""
    state = gateway_state(request)
    runtime = state.acquire()
    try:
        api_key = authenticate(request, runtime.settings.api_keys)
        body = await read_json(request, runtime.settings.max_body_bytes)
        validate_messages({"max_tokens": 1, **body})
        decision = await route(runtime, state, request, body, api_key, record=False)
        resolved = await runtime.resolve(decision.target)
        bridge = bridge_for("anthropic", "/messages", resolved.provider, body)
        native = resolved.provider.dialect == "anthropic"
        extra = passthrough_headers(request, "anthropic") if native else None
        count = await resolved.provider.count_tokens(bridge.request(resolved.model.upstream), extra)
        headers = {"x-crossover-route": decision.route, "x-crossover-backend": resolved.backend.name}
        return Response(orjson.dumps({"input_tokens": count}), media_type="application/json", headers=headers)
    except Exception as exc:
        return error_response(exc, "anthropic")
    finally:
        state.release(runtime)
