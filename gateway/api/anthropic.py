"""Anthropic's surface: POST /v1/messages and /v1/messages/count_tokens, errors in Anthropic's shape.

Requests are scored and routed like any other: to an Anthropic backend natively, or translated to an
OpenAI-compatible backend (the local vLLM) and back."""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from gateway.exchange import Exchange
from gateway.inbound import validate_messages
from gateway.pipeline import Door, authenticate, gateway_state, passthrough_headers, route
from providers.bridges import bridge_for

messages = Door("anthropic", "/messages", validate_messages)


class CountTokens:
    """Counted by the backend the request would be routed to, in that backend's own terms; it only
    asks, so nothing is recorded. (A class: Starlette serves a callable object as a raw ASGI app.)"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with Exchange(gateway_state(scope), scope, receive, send, "anthropic", record=False) as ex:
            api_key = ex.authenticated(*authenticate(ex.headers_in, ex.runtime, ex.state.keyring))
            body = await ex.read_json()
            validate_messages({"max_tokens": 1, **body})
            decision = await route(ex, body, api_key)
            resolved = await ex.runtime.resolve(decision.target)
            bridge = bridge_for("anthropic", "/messages", resolved.provider, body)
            native = resolved.provider.dialect == "anthropic"
            extra = passthrough_headers(ex.request, "anthropic") if native else None
            count = await resolved.provider.count_tokens(bridge.request(resolved.model.upstream), extra)
            headers = {"x-crossover-route": decision.route, "x-crossover-backend": resolved.backend.name}
            await ex.respond(orjson.dumps({"input_tokens": count}), headers)


count_tokens = CountTokens()
