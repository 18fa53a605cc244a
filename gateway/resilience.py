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
from typing import TYPE_CHECKING, Any

from gateway.breaker import CircuitBreaker
from gateway.config import Retries, Target
from gateway.replicas import Replica
from gateway.routing import Decision
from gateway.runtime import Resolved, Runtime
from gateway.shared_meter import Slot, release
from gateway.state import GatewayState
from providers.base import Completion, Dialect, ErrorCode, EventStream, Provider, UpstreamError
from providers.bridges import Bridge, bridge_for

if TYPE_CHECKING:
    from gateway.tracing import Attempt, RequestSpan

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
    sent: Mapping[str, str] | None = None  # headers for any backend (the request id)
    span: RequestSpan | None = None  # when tracing: each attempt becomes its child span

    def headers(self, attempt: Attempt | None) -> Mapping[str, str] | None:
        """What goes to any backend on this attempt: the request id, and its `traceparent` when tracing."""
        if attempt is None:
            return self.sent
        return {**self.sent, **attempt.headers} if self.sent else attempt.headers

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
    replica: Replica | None = None  # the replica answering, on a backend with replicas: a slot there too


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
    runtime: Runtime,
    state: GatewayState,
    target: Target,
    call: Call,
    avoid: set[int],
    sent: Mapping[str, str] | None,
) -> tuple[Resolved, Bridge, Completion | EventStream, float | Slot, Replica | None]:
    """One call to one target: (resolved, bridge, reply, meter mark, replica). Raises UpstreamError.
    On a backend with replicas, a replica that cannot be reached (the request never got there) or
    whose circuit is open passes the call to the next; `avoid` holds the replicas this request
    already tried, so a retry goes elsewhere first. `sent`: headers of this attempt (its trace)."""
    resolved = await runtime.resolve(target)
    provider = resolved.provider
    bridge = bridge_for(call.dialect, call.path, provider, call.body)
    outgoing = bridge.request(resolved.model.upstream)
    extra = call.headers if call.headers and provider.dialect == call.dialect else None
    if sent:
        extra = {**extra, **sent} if extra else sent
    replicas = runtime.replicas.get(target.backend)
    if replicas is None:
        reply, mark = await _send(
            state, target.backend, target.backend, provider, bridge, outgoing, extra, call
        )
        return resolved, bridge, reply, mark, None
    last: UpstreamError | None = None
    while True:
        replica = replicas.choose(outgoing, frozenset(avoid))
        if replica.index in avoid:
            if last is not None:
                raise last  # every live replica failed this call
            avoid.clear()  # a retry after backoff: any replica again, the least loaded first
        avoid.add(replica.index)
        replica.load.in_flight += 1
        try:
            reply, mark = await _send(
                state, target.backend, replica.circuit, replica.provider, bridge, outgoing, extra, call
            )
        except UpstreamError as exc:
            replica.load.in_flight -= 1
            if exc.code == ErrorCode.BACKEND_UNREACHABLE:
                replicas.mark(replica, False, state.recorder, " (a connection to it failed)")
            elif exc.code != ErrorCode.CIRCUIT_OPEN:
                raise
            if last is not None:  # the last one is counted by the caller
                state.recorder.upstream_failed(target.backend, last)
            last = exc
            continue
        except BaseException:
            replica.load.in_flight -= 1
            raise
        if last is not None:
            state.recorder.upstream_failed(target.backend, last)
        return resolved, bridge, reply, mark, replica


async def _send(
    state: GatewayState,
    backend: str,
    circuit: str,
    provider: Provider,
    bridge: Bridge,
    outgoing: dict[str, Any],
    extra: Mapping[str, str] | None,
    call: Call,
) -> tuple[Completion | EventStream, float | Slot]:
    """The call itself, behind the circuit named `circuit` (the backend's, or one replica's)."""
    breaker = state.breakers.get(circuit)
    if breaker is not None and not breaker.allow():  # asked last: an allowed call always reports
        raise UpstreamError(
            503,
            f"backend '{backend}' is failing; its circuit is open",
            type="service_unavailable",
            code=ErrorCode.CIRCUIT_OPEN,
            retry_after=breaker.retry_after(),
            retryable=True,
        )
    meter = state.meters[backend]
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
            _report(state, circuit, breaker, ok=not exc.retryable)
        raise
    if breaker is not None:
        _report(state, circuit, breaker, ok=True)
    return reply, mark


def _report(state: GatewayState, circuit: str, breaker: CircuitBreaker, ok: bool) -> None:
    """To the breaker the call was made behind (a reload meanwhile may have dropped it: no matter)."""
    was_open = breaker.open
    breaker.record(ok)
    if breaker.open != was_open:
        state.recorder.circuit(circuit, breaker.open)


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
        avoid: set[int] = set()  # replicas of this target already tried
        while True:
            started = time.perf_counter()
            trying = None
            if plan.span is not None:
                system = runtime.providers[target.backend].dialect
                model = runtime.model_name(target) or target.backend
                trying = plan.span.attempt(target, model, system, attempt, index > 0)
            try:
                resolved, bridge, reply, mark, replica = await _call_once(
                    runtime, state, target, plan.call, avoid, plan.headers(trying)
                )
            except BaseException as exc:
                if trying is not None:
                    trying.failed(exc)
                if not isinstance(exc, UpstreamError):
                    raise
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
            if trying is not None:
                assert plan.span is not None
                plan.span.answered_by(trying)  # ends with the request: a stream is still flowing
            waited = upstream_seconds + time.perf_counter() - started
            return Answer(resolved, bridge, reply, waited, failed, mark, replica)
    raise AssertionError("a plan has at least one target")
