"""Upstream failures, normalised once at the transport boundary into UpstreamError."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from time import time

import orjson

from providers.base import ErrorCode, UpstreamError
from providers.http1 import ConnectFailed

_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*]{6,}")

# Upstream `type`s passed on to the client; any other value becomes the gateway's default, so an
# upstream string (which might echo a key) never reaches a client or a log through this field.
_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "insufficient_quota",
        "requests",
        "tokens",
        "request_too_large",
        "overloaded_error",
        "api_error",
        "server_error",
    }
)
# An upstream `code` is kept only as a short lowercase identifier (`context_length_exceeded`):
# no hyphen, so no `sk-…` shape fits, and a configured secret in it is refused too.
_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")
_MAX_PARAM = 120
_MAX_MESSAGE = 2000


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove anything that looks like a provider key: ours verbatim, and sk-… shapes."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


def _safe_type(value: str | None, default: str) -> str:
    return value if value in _TYPES else default


def _safe_code(value: str | None, secrets: Iterable[str]) -> str | None:
    if value is None or not _CODE.fullmatch(value) or any(s and s in value for s in secrets):
        return None
    return value


def _safe_text(value: str | None, limit: int, secrets: Iterable[str]) -> str | None:
    """Redacted, then bounded: a long echo cannot carry a key past the cut either, as redaction
    runs on the whole text first."""
    if not value:
        return None
    text = redact(value, secrets)
    return text if len(text) <= limit else text[:limit] + "…"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """OpenAI sends `retry-after-ms` and `retry-after`; the latter may be seconds or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


def _upstream_fields(raw: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, type, param, code) from OpenAI's error shape, vLLM's older flat shape, or Anthropic's."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None, None, None
    if not isinstance(body, dict):
        return None, None, None, None
    err = body.get("error", body)
    if isinstance(err, str):
        return err, None, None, None
    if not isinstance(err, dict):
        return None, None, None, None

    def text(key: str) -> str | None:
        value = err.get(key)
        return None if value is None else str(value)

    return text("message"), text("type"), text("param"), text("code")


def error_from_response(
    backend: str, status: int, headers: Mapping[str, str], raw: bytes, secrets: Iterable[str] = ()
) -> UpstreamError:
    secrets = tuple(secrets)
    message, type_, param, code = _upstream_fields(raw)
    # Every upstream field is normalised here, before anything reads it: an upstream may echo the
    # gateway's key in any of them.
    message = _safe_text(message, _MAX_MESSAGE, secrets)
    param = _safe_text(param, _MAX_PARAM, secrets)
    code = _safe_code(code, secrets)
    retry_after = retry_after_seconds(headers)
    if status in (401, 403):
        # The client's own credentials were fine; the gateway's were not. Never echo the upstream
        # text here: OpenAI's 401 message quotes part of the key.
        return UpstreamError(
            502,
            f"backend '{backend}' rejected the gateway's credentials (HTTP {status})",
            code=ErrorCode.UPSTREAM_AUTH_FAILED,
            retryable=True,
        )
    if status == 429:
        return UpstreamError(
            429,
            message or f"backend '{backend}' is rate limiting requests",
            type=_safe_type(type_, "rate_limit_error"),
            code=code or ErrorCode.RATE_LIMIT_EXCEEDED,
            retry_after=retry_after,
            retryable=True,
            backend_asked=retry_after is not None,
        )
    if status in (503, 529):
        return UpstreamError(
            503,
            f"backend '{backend}' is overloaded" + (f": {message}" if message else ""),
            type="service_unavailable",
            code=ErrorCode.BACKEND_OVERLOADED,
            retry_after=retry_after if retry_after is not None else 1.0,
            retryable=True,
            backend_asked=retry_after is not None,
        )
    if status in (408, 504):
        return UpstreamError(
            504,
            f"backend '{backend}' timed out",
            type="timeout",
            code=ErrorCode.UPSTREAM_TIMEOUT,
            retryable=True,
        )
    if status >= 500:
        return UpstreamError(
            502,
            f"backend '{backend}' failed (HTTP {status})" + (f": {message}" if message else ""),
            code=ErrorCode.UPSTREAM_ERROR,
            retryable=True,
        )
    # 4xx: the request itself was refused upstream; the client should see why.
    return UpstreamError(
        400 if status == 422 else status,
        message or f"backend '{backend}' refused the request (HTTP {status})",
        type=_safe_type(type_, "invalid_request_error"),
        code=code,
        param=param,
    )


def error_from_transport(backend: str, exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamError(
            504,
            f"backend '{backend}' timed out",
            type="timeout",
            code=ErrorCode.UPSTREAM_TIMEOUT,
            retryable=True,
        )
    if isinstance(exc, ConnectFailed):
        return UpstreamError(
            503,
            f"backend '{backend}' is unreachable",
            type="service_unavailable",
            code=ErrorCode.BACKEND_UNREACHABLE,
            retry_after=1.0,
            retryable=True,
        )
    return UpstreamError(
        502,
        f"backend '{backend}' closed the connection unexpectedly",
        code=ErrorCode.UPSTREAM_ERROR,
        retryable=True,
    )
