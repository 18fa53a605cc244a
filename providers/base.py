"""The small protocol every backend kind implements, and the one error it raises."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal, Protocol

from providers.sse import Event

# The wire formats a client or a backend speaks.
Dialect = Literal["openai", "anthropic"]


class ErrorCode(StrEnum):
    """Every error `code` the gateway itself gives, declared once. A backend's own codes are passed on
    only after normalisation (providers/errors.py) and never become one of these."""

    # A client's request the gateway refuses.
    BACKEND_NOT_ALLOWED = "backend_not_allowed"
    DATA_MUST_STAY_LOCAL = "data_must_stay_local"  # a local_only key or team asked for an external API
    EMPTY_ARRAY = "empty_array"
    INTEGER_BELOW_MIN_VALUE = "integer_below_min_value"
    INSUFFICIENT_QUOTA = "insufficient_quota"  # a key's or team's budget is spent
    INVALID_API_KEY = "invalid_api_key"
    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    LIMITS_UNAVAILABLE = "limits_unavailable"  # Redis is down and the limits must hold (closed)
    METHOD_NOT_ALLOWED = "method_not_allowed"
    MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    MODEL_NOT_FOUND = "model_not_found"
    NESTING_TOO_DEEP = "nesting_too_deep"
    REQUEST_HEADER_FIELDS_TOO_LARGE = "request_header_fields_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    REQUEST_TOO_LARGE = "request_too_large"
    ROUTER_NOT_ALLOWED = "router_not_allowed"
    UNKNOWN_URL = "unknown_url"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    URI_TOO_LONG = "uri_too_long"
    # An upstream failure. Only these (and "rejected" or "other") label crossover_upstream_errors_total,
    # and the retry policy (gateway/resilience.py) reads them.
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_AUTH_FAILED = "upstream_auth_failed"
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    BACKEND_OVERLOADED = "backend_overloaded"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    BACKEND_UNREACHABLE = "backend_unreachable"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    CIRCUIT_OPEN = "circuit_open"


UPSTREAM_FAILURES = frozenset(
    {
        ErrorCode.UPSTREAM_ERROR,
        ErrorCode.UPSTREAM_AUTH_FAILED,
        ErrorCode.RATE_LIMIT_EXCEEDED,
        ErrorCode.BACKEND_OVERLOADED,
        ErrorCode.UPSTREAM_TIMEOUT,
        ErrorCode.BACKEND_UNREACHABLE,
        ErrorCode.BACKEND_UNAVAILABLE,
        ErrorCode.CIRCUIT_OPEN,
    }
)


class UpstreamError(Exception):
    """A backend call failed. `status` and `type` are what the client should be shown.

    Built only from normalised upstream data: the upstream body is never echoed raw,
    so a key the backend might reflect back cannot reach the client.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "upstream_error",  # an OpenAI error type, not a code
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
        backend_asked: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after  # for the client's Retry-After header
        # True when retry_after is the backend's own Retry-After, not the gateway's default hint.
        self.backend_asked = backend_asked
        # True where another backend may well succeed: connection failures, 5xx, 429.
        self.retryable = retryable


class UnsupportedRequest(Exception):
    """The request asks for something the target backend cannot express (e.g. `n > 1` on Anthropic)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# Read-only through `Final` (mypy), not frozen: built for every answer, and a frozen __init__ (each
# field through object.__setattr__) costs ~3x a plain one. Hashable as before.
@dataclass(slots=True, unsafe_hash=True)
class Usage:
    input: Final[int]  # prompt tokens, cached ones included (OpenAI's `prompt_tokens`)
    output: Final[int]
    cached: Final[int] = 0  # input tokens read from a prompt cache


@dataclass(slots=True)
class Completion:
    """A whole (non-streamed) upstream answer, already parsed."""

    body: dict[str, Any]
    raw: bytes  # the same answer as bytes, forwarded as-is unless the gateway must change it
    upstream_seconds: float


class EventStream(Protocol):
    """An open upstream stream. Yields, per network read, the SSE events that arrived in it, so a
    burst is relayed in one write and a trickle event by event.

    OpenAI's terminating `[DONE]` is consumed, not yielded. `aclose` drops the connection, which is
    how a disconnecting client cancels generation upstream.
    """

    def __aiter__(self) -> AsyncIterator[list[Event]]: ...

    async def aclose(self) -> None: ...


Headers = Mapping[str, str] | None


class Provider(Protocol):
    """`dialect` names the wire format of `complete` and `stream` bodies and paths:
    "openai" (`/chat/completions`, `/completions`) or "anthropic" (`/messages`)."""

    name: str
    dialect: Dialect

    # `headers`: per-request headers a client sent for this backend's own API (e.g. `anthropic-beta`),
    # added to the backend's configured ones.
    async def complete(self, path: str, body: dict[str, Any], headers: Headers = None) -> Completion: ...

    async def stream(self, path: str, body: dict[str, Any], headers: Headers = None) -> EventStream:
        """Open the stream; raises UpstreamError before the first event if the backend refuses."""
        ...

    async def list_models(self) -> list[str]: ...

    async def count_tokens(self, body: dict[str, Any], headers: Headers = None) -> int:
        """Input tokens of a request in the provider's dialect; UnsupportedRequest if it cannot tell."""
        ...

    async def close(self) -> None: ...
