"""OpenAI's surface: /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings, /v1/models."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from classifier import Features, extract_features
from gateway.errors import ModelNotFound, error_response
from gateway.inbound import validate_chat, validate_completion, validate_embeddings, validate_responses
from gateway.pipeline import Door, authenticate, gateway_state
from gateway.policy import may_use_model, may_use_router
from providers.base import ErrorCode
from providers.responses import responses_chat_view

chat_completions = Door("openai", "/chat/completions", validate_chat)
completions = Door("openai", "/completions", validate_completion)


def _responses_features(body: dict[str, Any]) -> Features:
    return extract_features(responses_chat_view(body))


def _embeddings_features(body: dict[str, Any]) -> Features:
    """An embedding request's input (a token id as the ~4 characters it stands for); it makes no output."""
    given = body.get("input")
    chars = 0
    for item in given if isinstance(given, list) else [given]:
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, int):
            chars += 4
        elif isinstance(item, list):
            chars += 4 * len(item)
    return Features(
        text="", total_chars=chars, turns=0, has_tools=False, response_format="text", max_tokens=0
    )


responses = Door("openai", "/responses", validate_responses, _responses_features, shadowed=False)
embeddings = Door(
    "openai", "/embeddings", validate_embeddings, _embeddings_features, scored=False, shadowed=False
)


def _model_objects(request: Request) -> list[dict[str, Any]]:
    """The models this key may ask for: the router models, then each backend's concrete ones."""
    state = gateway_state(request.scope)
    runtime = state.runtime
    _, principal = authenticate(request.headers, runtime, state.keyring)
    routers = [n for n in runtime.settings.routers if principal is None or may_use_router(principal, n)]
    data: list[dict[str, Any]] = [
        {"id": name, "object": "model", "created": 0, "owned_by": "crossover"} for name in routers
    ]
    seen = set(runtime.settings.routers)
    for backend, model in runtime.models():
        name = model.name if model.name not in seen else f"{backend}/{model.name}"
        seen.add(name)
        if principal is None or may_use_model(principal, name, backend, model.name, runtime.local_backends):
            data.append({"id": name, "object": "model", "created": 0, "owned_by": backend})
    return data


async def list_models(request: Request) -> Response:
    try:
        data = _model_objects(request)
    except Exception as exc:
        return error_response(exc)
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def retrieve_model(request: Request) -> Response:
    """`GET /v1/models/{model}`; a `backend/model` id arrives as two path segments."""
    wanted = request.path_params["model"]
    try:
        found = next((m for m in _model_objects(request) if m["id"] == wanted), None)
        if found is None:
            raise ModelNotFound(
                f"The model '{wanted[:100]}' does not exist", param="model", code=ErrorCode.MODEL_NOT_FOUND
            )
    except Exception as exc:
        return error_response(exc)
    return Response(orjson.dumps(found), media_type="application/json")
