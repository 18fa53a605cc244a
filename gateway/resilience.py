"""Getting an answer from a decided target: its circuit breaker first, retries on the same backend
with jittered backoff (or the backend's own short Retry-After), then the fallback target.

What to try is one small value, a `Plan`; what was tried last is reported through `on_try`, so the
request's owner can name the backend that failed."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import Retries, Target
from gateway.routing import Decision
from gateway.runtime import Resolved, Runtime
from gateway.shared_meter import Slot, release
from gateway.state import GatewayState
from providers.base import Completion, Dialect, ErrorCode, EventStream, UpstreamError
from providers.bridges import Bridge, bridge_for

# Failures not worth the same backend again: its circuit is open, a timeout (which may have taken the
# whole read timeout already), its refusal of the gateway's own key, no model discovered yet.
NOT_RETRIED = frozenset(
    {
        ErrorCode.CIRCUIT_OPEN,
        ErrorCode.UPSTREAM_TIMEOUT,
        ErrorCode.UPSTREAM_AUTH_FAILED,
        ErrorCode.BACKEND_UNAVAILABLE,
    }
)


@dataclass(slots=True)
class Call:
    """What is sent, whatever the target: the client's dialect and endpoint, its body, and headers of
    the client's own API (`anthropic-beta`), which go only to a backend of that same dialect."""

    dialect: Dialect
    path: str
    body: dict[str, Any]
    headers: Mapping[str, str]
    stream: bool


@dataclass(slots=True)
class Plan:
    targets: tuple[Target, ...]  # the decided target, then its fallback if it has one
    call: Call

    @classmethod
    def of(cls, decision: Decision, call: Call) -> Plan:
        fallback = () if decision.fallback is None else (decision.fallback,)
        return cls((decision.target, *fallback), call)


@dataclass(slots=True)
class Answer:
    resolved: Resolved
    bridge: Bridge
    reply: Completion | EventStream
    upstream_seconds: float  # waiting on backends and between retries: not the gateway's overhead
    fell_back_from: str | None  # the backend that failed first, when the fallback answered
    gpu_mark: float | Slot  # the backend meter's mark: the answer holds a slot on it until it is done


def retry_delay(retries: Retries, attempt: int, exc: UpstreamError) -> float | None:
    """Seconds to wait before retry number `attempt + 1`, or None to stop: exponential backoff with
    jitter, or the backend's own Retry-After when it gives one no longer than `max_wait`."""
    if attempt >= retries.attempts or not exc.retryable or exc.code in NOT_RETRIED:
        return None
    if exc.backend_asked and exc.retry_after is not None:
        return exc.retry_after if exc.retry_after <= retries.max_wait else None
    step = retries.backoff * 2.0**attempt
    return min(step / 2 + random.uniform(0, step / 2), retries.max_wait)


async def _call_once(
    runtime: Runtime, state: GatewayState, target: Target, call: Call
) -> tuple[Resolved, Bridge, Completion | EventStream, float | Slot]:
    """One call to one target: (resolved, bridge, reply, meter mark). Raises UpstreamError."""
    resolved = await runtime.resolve(target)
    provider = resolved.provider
    bridge = bridge_for(call.dialect, call.path, provider, call.body)
    outgoing = bridge.request(resolved.model.upstream)
    extra = call.headers if call.headers and provider.dialect == call.dialect else None
    breaker = state.breakers.get(target.backend)
    if breaker is not None and not breaker.allow():  # asked last: an allowed call always reports
        raise UpstreamError(
            503,
            f"backend '{target.backend}' is failing; its circuit is open",
            type="service_unavailable",
            code=ErrorCode.CIRCUIT_OPEN,
            retry_after=breaker.retry_after(),
            retryable=True,
        )
    meter = state.meters[target.backend]
    mark = meter.start()
    reply: Completion | EventStream
    try:
        if call.stream:
            reply = await provider.stream(bridge.backend_path, outgoing, extra)
        else:
            reply = await provider.complete(bridge.backend_path, outgoing, extra)
    except BaseException as exc:
        release(meter, mark)  # a refused (or abandoned) call is not charged GPU time
        if breaker is not None and isinstance(exc, UpstreamError):
            _report(state, target.backend, ok=not exc.retryable)
        raise
    if breaker is not None:
        _report(state, target.backend, ok=True)
    return resolved, bridge, reply, mark


def _report(state: GatewayState, backend: str, ok: bool) -> None:
    breaker = state.breakers[backend]
    was_open = breaker.open
    breaker.record(ok)
    if breaker.open != was_open:
        state.recorder.circuit(backend, breaker.open)


async def answer(
    runtime: Runtime, state: GatewayState, plan: Plan, on_try: Callable[[Target], None]
) -> Answer:
    """The first answer of the plan's targets, each tried again while its backend allows retries.
    Raises the last UpstreamError when none answers."""
    upstream_seconds = 0.0
    failed: str | None = None
    first_error: UpstreamError | None = None
    last = len(plan.targets) - 1
    for index, target in enumerate(plan.targets):
        on_try(target)
        retries = runtime.settings.backends[target.backend].retries
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                resolved, bridge, reply, mark = await _call_once(runtime, state, target, plan.call)
            except UpstreamError as exc:
                upstream_seconds += time.perf_counter() - started
                state.recorder.upstream_failed(target.backend, exc)
                if first_error is not None:
                    # Both targets failed: say so, with the last one's status and retry hint.
                    exc.message = f"{first_error.message}; fallback: {exc.message}"
                delay = retry_delay(retries, attempt, exc) if retries else None
                if delay is not None:
                    state.recorder.retried(target.backend)
                    await asyncio.sleep(delay)
                    upstream_seconds += delay
                    attempt += 1
                    continue
                if not exc.retryable or index == last:
                    raise
                failed, first_error = target.backend, exc
                state.recorder.fell_back(target.backend, plan.targets[index + 1].backend)
                break
            waited = upstream_seconds + time.perf_counter() - started
            return Answer(resolved, bridge, reply, waited, failed, mark)
    raise AssertionError("a plan has at least one target")
