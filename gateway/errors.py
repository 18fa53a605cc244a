"""One exception tree, and the one place that turns any failure into OpenAI's error shape."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from types import MappingProxyType

import orjson
from starlette.responses import Response

from providers.base import UPSTREAM_FAILURES, ErrorCode, UnsupportedRequest, UpstreamError
from providers.sse import encode

log = logging.getLogger("crossover")


class GatewayError(Exception):
    """A failure the client should see, with OpenAI's `type`, `param` and `code`."""

    status = 500
    type = "server_error"
    headers: Mapping[str, str] = MappingProxyType({})  # response headers it comes with (a 429's limits)

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


class PermissionDenied(GatewayError):
    status = 403
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


class ClientGone(GatewayError):
    """The client hung up before the answer was ready; nobody reads this response."""

    status = 499  # nginx's "client closed request"
    type = "client_closed_request"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"


def error_code(exc: UpstreamError) -> str:
    """A bounded label for an upstream failure."""
    if (
        exc.code is not None and exc.code in UPSTREAM_FAILURES
    ):  # an upstream's own string never becomes a label
        return exc.code
    return "rejected" if exc.status < 500 and exc.status != 429 else "other"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    414: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
}


def _fields(exc: Exception) -> tuple[int, str, str, str | None, str | None, float | None]:
    """(status, message, type, param, code, retry_after) for any exception."""
    if isinstance(exc, GatewayError):
        return exc.status, exc.message, exc.type, exc.param, exc.code, None
    if isinstance(exc, UpstreamError):
        return exc.status, exc.message, exc.type, exc.param, exc.code, exc.retry_after
    if isinstance(exc, UnsupportedRequest):
        return 400, exc.message, "invalid_request_error", exc.param, ErrorCode.UNSUPPORTED_PARAMETER, None
    log.exception("unexpected error", exc_info=exc)
    return 500, "internal error in the gateway", "server_error", None, "internal_error", None


def _encode(
    dialect: str, status: int, message: str, type_: str, param: str | None, code: str | None
) -> bytes:
    if dialect == "anthropic":
        # Anthropic's shape: {"type": "error", "error": {"type", "message"}}; its types follow the status.
        kind = _ANTHROPIC_TYPES.get(status) or (
            "overloaded_error" if code == ErrorCode.BACKEND_OVERLOADED else "api_error"
        )
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return error_body(message, type_, param, code)


def error_response(exc: Exception, dialect: str = "openai") -> Response:
    """Every error the gateway returns goes through here: OpenAI's shape, or Anthropic's at /v1/messages."""
    status, message, type_, param, code, retry_after = _fields(exc)
    headers = {"retry-after": str(max(1, math.ceil(retry_after)))} if retry_after is not None else {}
    if isinstance(exc, GatewayError):
        headers.update(exc.headers)
    body = _encode(dialect, status, message, type_, param, code)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def responses_error_frame(exc: Exception, sequence: int) -> bytes:
    """The error as a Responses stream's `error` event: OpenAI's ResponseErrorEvent (code, message and
    param at the top, numbered after the events sent), with the same fields under `error` as well:
    that is what OpenAI's API sends, and the Python SDK raises only on it (the flat shape it yields)."""
    _, message, type_, param, code, _ = _fields(exc)
    error = {"type": type_, "code": code, "message": message, "param": param}
    event = {"type": "error", "code": code, "message": message, "param": param, "sequence_number": sequence}
    return encode(orjson.dumps({**event, "error": error}), "error")


def error_frame(exc: Exception, dialect: str) -> bytes:
    """The same error as a final SSE event, for a stream whose headers are already sent."""
    status, message, type_, param, code, _ = _fields(exc)
    body = _encode(dialect, status, message, type_, param, code)
    return encode(body, "error" if dialect == "anthropic" else None)
