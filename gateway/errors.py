"""One exception tree, and the one place that turns any failure into OpenAI's error shape."""

from __future__ import annotations

import logging
import math

import orjson
from starlette.responses import Response

from providers.base import UpstreamError

log = logging.getLogger("crossover")


class GatewayError(Exception):
    """A failure the client should see, with OpenAI's `type`, `param` and `code`."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthenticated(GatewayError):
    status = 401
    type = "invalid_request_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_response(exc: Exception) -> Response:
    """Every error the gateway returns goes through here."""
    headers: dict[str, str] = {}
    if isinstance(exc, GatewayError):
        status, body = exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
    elif isinstance(exc, UpstreamError):
        status, body = exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
        if exc.retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    else:
        log.exception("unexpected error", exc_info=exc)
        status, body = 500, error_body("internal error in the gateway", "server_error", code="internal_error")
    return Response(body, status_code=status, media_type="application/json", headers=headers)
