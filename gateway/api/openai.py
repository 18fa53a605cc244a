"""OpenAI's surface: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import error_response
from gateway.inbound import validate_chat, validate_completion
from gateway.pipeline import authenticate, gateway_state, serve


async def chat_completions(request: Request) -> Response:
    return await serve(request, "openai", "/chat/completions", validate_chat)


async def completions(request: Request) -> Response:
    return await serve(request, "openai", "/completions", validate_completion)


async def list_models(request: Request) -> Response:
    runtime = gateway_state(request).runtime
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
