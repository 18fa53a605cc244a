"""One request's way through the gateway, whatever the client's dialect:
authenticate → read and check the body → decide the route → bridge to the backend's dialect and
call it (falling back on a retryable failure) → relay the answer and record it."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from classifier import Explainer, extract_features, weightiest
from gateway.breaker import CircuitBreaker
from gateway.config import Retries, Target
from gateway.errors import ClientGone, InvalidRequest, Unauthenticated, error_code, error_response
from gateway.inbound import read_json
from gateway.relay import EventStreamResponse, Exchange, relay_events
from gateway.routing import (
    ROUTES,
    Decision,
    decide,
    direct,
    other_route,
    spilled,
    target_of,
    within_scope,
)
from gateway.rules import first_match
from gateway.runtime import Resolved, Runtime
from gateway.state import GatewayState
from providers.base import Completion, EventStream, UpstreamError, Usage
from providers.bridges import Bridge, bridge_for

log = logging.getLogger("crossover")

ROUTE_HEADER = "x-crossover-route"
EXPLAIN_HEADER = "x-crossover-explain"  # sent as "1" or "true": the answer explains its route
EXPLAIN_TERMS = 5
NO_ROUTE = ("none", "none", "none")  # labels of a request refused before routing (bad body, no such model)
# A request still waiting on its backend after this long gets a disconnect watcher.
WATCH_AFTER_SECONDS = 0.25


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def authenticate(request: Request, keys: frozenset[str]) -> str | None:
    """The gateway key the client sent, once checked; None when the gateway asks for none."""
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = request.headers.get("x-api-key", "")  # what Anthropic's SDK sends
    # Compare against every key in constant time so timing does not reveal a prefix.
    # Bytes, not str: compare_digest refuses non-ASCII strings, and a header may hold any latin-1.
    given = token.encode()
    if not token or not any(hmac.compare_digest(given, key.encode()) for key in keys):
        raise Unauthenticated(
            "Incorrect API key provided. Send the gateway key as 'Authorization: Bearer <key>' or 'x-api-key'.",
            code="invalid_api_key",
        )
    return token


async def route(
    runtime: Runtime,
    state: GatewayState,
    request: Request,
    body: dict[str, Any],
    api_key: str | None,
    record: bool = True,
) -> Decision:
    """`record=False` decides without counting the decision (token counting asks where it would go)."""
    model: str = body["model"]
    router = runtime.settings.routers.get(model)
    scope = runtime.settings.key_scopes.get(api_key) if api_key is not None else None
    if router is None:
        decision = direct(await runtime.target_for_model(model))
        return decision if scope is None else within_scope(decision, scope, None)
    forced = request.headers.get(ROUTE_HEADER)
    if forced is not None and forced not in ROUTES:
        raise InvalidRequest(
            f"Invalid value for header '{ROUTE_HEADER}': {forced!r}. Use 'local' or 'api'.",
            param=ROUTE_HEADER,
            code="invalid_value",
        )
    m = state.metrics
    started = time.perf_counter()
    features = extract_features(body) if router.rules or forced is None else None
    rule = None
    if features is not None and router.rules:
        rule = first_match(router.rules, features, request.headers, api_key)
    score = None
    if rule is None and forced is None and features is not None:
        score = runtime.classifiers[model].score(features)
        if record:
            m.at(m.classifier_seconds, model).observe(time.perf_counter() - started)
            m.at(m.score, model).observe(score)
    decision = decide(router, score, forced, rule, runtime.threshold(model))
    if scope is not None:  # first: spill-over may then only use a fallback the key may reach
        decision = within_scope(decision, scope, target_of(router, other_route(decision.route)))
    if (
        decision.fallback is not None
        and _full(runtime, state, decision.target)
        and not _full(runtime, state, decision.fallback)
    ):
        decision = spilled(decision)
    if record:
        _record(state, runtime, model, decision, score)
    return decision


def _full(runtime: Runtime, state: GatewayState, target: Target) -> bool:
    limit = runtime.settings.backends[target.backend].max_in_flight
    return limit is not None and state.meters[target.backend].running >= limit


def _record(
    state: GatewayState, runtime: Runtime, router: str, decision: Decision, score: float | None
) -> None:
    m = state.metrics
    m.at(m.decisions, router, decision.route, decision.reason).inc()
    if decision.rule is not None:
        m.at(m.rule_matches, router, decision.rule).inc()
    online = runtime.online_thresholds.get(router)
    if online is not None:
        before = online.threshold
        if score is None:
            online.observe_pinned(decision.route)
        else:
            online.observe(score)
        if online.threshold != before:
            m.at(m.threshold, router).set(online.threshold)


def explanation(runtime: Runtime, decision: Decision, body: dict[str, Any]) -> str:
    """What the `x-crossover-explain` response header says: the decision, and for a scored request
    the terms that weighed most in the classifier's logit (when the classifier can say)."""
    out: dict[str, Any] = {"route": decision.route, "reason": decision.reason}
    if decision.rule is not None:
        out["rule"] = decision.rule
    if decision.score is not None:
        out["score"] = round(decision.score, 4)
        if decision.threshold is not None:  # none when a key's scope moved the request
            out["threshold"] = round(decision.threshold, 4)
        classifier = runtime.classifiers.get(body["model"])
        if isinstance(classifier, Explainer):
            terms = weightiest(classifier, extract_features(body), EXPLAIN_TERMS)
            out["top"] = [[name[:40], round(value, 3)] for name, value in terms]
    return json.dumps(out, ensure_ascii=True, separators=(",", ":"))


@dataclass(slots=True)
class Answer:
    resolved: Resolved
    bridge: Bridge
    reply: Completion | EventStream
    upstream_seconds: float
    fell_back_from: str | None
    gpu_mark: float  # the backend meter's mark (its GPU cost share, its running count)


# Headers of a client's own API that go on to a backend speaking that API (Anthropic's beta features);
# a request translated to another dialect has no use for them.
PASSTHROUGH_HEADERS = {"anthropic": ("anthropic-beta",)}


def passthrough_headers(request: Request, dialect: str) -> dict[str, str]:
    """Each header once, its values joined by commas (a client may send several `anthropic-beta` lines)."""
    names = PASSTHROUGH_HEADERS.get(dialect, ())
    return {name: ",".join(values) for name in names if (values := request.headers.getlist(name))}


async def _call_once(
    runtime: Runtime,
    state: GatewayState,
    target: Target,
    dialect: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> tuple[Resolved, Bridge, Completion | EventStream, float]:
    """One call to one target: (resolved, bridge, reply, meter mark). Raises UpstreamError."""
    resolved = await runtime.resolve(target)
    bridge = bridge_for(dialect, path, resolved.provider, body)
    outgoing = bridge.request(resolved.model.upstream)
    provider = resolved.provider
    extra = headers if headers and provider.dialect == dialect else None
    breaker = state.breakers.get(target.backend)
    if breaker is not None and not breaker.allow():  # asked last: an allowed call always reports
        raise UpstreamError(
            503,
            f"backend '{target.backend}' is failing; its circuit is open",
            type="service_unavailable",
            code="circuit_open",
            retry_after=breaker.retry_after(),
            retryable=True,
        )
    meter = state.meters[target.backend]
    mark = meter.start()
    reply: Completion | EventStream
    try:
        if body.get("stream") is True:
            reply = await provider.stream(bridge.backend_path, outgoing, extra)
        else:
            reply = await provider.complete(bridge.backend_path, outgoing, extra)
    except BaseException as exc:
        meter.stop(mark)  # a refused (or abandoned) call is not charged GPU time
        if breaker is not None and isinstance(exc, UpstreamError):
            _record_call(state, target.backend, breaker, ok=not exc.retryable)
        raise
    if breaker is not None:
        _record_call(state, target.backend, breaker, ok=True)
    return resolved, bridge, reply, mark


# Failures not worth the same backend again: its circuit is open, a timeout (which may have taken the
# whole read timeout already), its refusal of the gateway's own key, no model discovered yet.
NOT_RETRIED = frozenset({"circuit_open", "upstream_timeout", "upstream_auth_failed", "backend_unavailable"})


def _retry_delay(retries: Retries, attempt: int, exc: UpstreamError) -> float | None:
    """Seconds to wait before retry number `attempt + 1`, or None to stop: exponential backoff with
    jitter, or the backend's own Retry-After when it gives one no longer than `max_wait`."""
    if attempt >= retries.attempts or not exc.retryable or exc.code in NOT_RETRIED:
        return None
    if exc.backend_asked and exc.retry_after is not None:
        return exc.retry_after if exc.retry_after <= retries.max_wait else None
    step = retries.backoff * 2.0**attempt
    return min(step / 2 + random.uniform(0, step / 2), retries.max_wait)


async def call(
    runtime: Runtime,
    state: GatewayState,
    decision: Decision,
    dialect: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> Answer:
    """Try the decided target (again, if its backend allows retries), then its fallback, on a
    retryable failure. `headers` go only to a backend of the client's own dialect."""
    targets = [decision.target] if decision.fallback is None else [decision.target, decision.fallback]
    upstream_seconds = 0.0  # waiting on backends (and between retries): not the gateway's overhead
    failed: str | None = None
    first_error: UpstreamError | None = None
    for index, target in enumerate(targets):
        retries = runtime.settings.backends[target.backend].retries
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                resolved, bridge, reply, mark = await _call_once(
                    runtime, state, target, dialect, path, body, headers
                )
                waited = upstream_seconds + time.perf_counter() - started
                return Answer(resolved, bridge, reply, waited, failed, mark)
            except UpstreamError as exc:
                upstream_seconds += time.perf_counter() - started
                state.metrics.at(state.metrics.upstream_errors, target.backend, error_code(exc)).inc()
                if first_error is not None:
                    # Both targets failed: say so, with the last one's status and retry hint.
                    exc.message = f"{first_error.message}; fallback: {exc.message}"
                delay = _retry_delay(retries, attempt, exc) if retries else None
                if delay is not None:
                    state.metrics.at(state.metrics.retries, target.backend).inc()
                    await asyncio.sleep(delay)
                    upstream_seconds += delay
                    attempt += 1
                    continue
                if not exc.retryable or index == len(targets) - 1:
                    raise
                failed, first_error = target.backend, exc
                state.metrics.fallbacks.labels(target.backend, targets[index + 1].backend).inc()
                break
    raise AssertionError("unreachable")


def _record_call(state: GatewayState, backend: str, breaker: CircuitBreaker, ok: bool) -> None:
    was_open = breaker.open
    breaker.record(ok)
    if breaker.open != was_open:
        state.metrics.at(state.metrics.circuit_open, backend).set(1 if breaker.open else 0)
        log.warning("circuit of backend %r %s", backend, "opened" if breaker.open else "closed")


async def _disconnected(request: Request) -> None:
    # The body has been read: what arrives next is the disconnect, if the client leaves.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(request: Request, work: Coroutine[Any, Any, Answer]) -> Answer:
    """Run the upstream call, cancelling it if the client hangs up first: a non-streamed request
    abandoned by a client timeout must not keep vLLM generating (streams watch on their own).

    The call runs in this task; a watcher is armed only once the call has taken WATCH_AFTER_SECONDS,
    so the common fast request pays a timer, not a task (a task per request cost ~40% throughput)."""
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    assert current is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request)
        gone = True
        current.cancel()

    def arm() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER_SECONDS, arm)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        current.uncancel()  # our own cancellation, for a client that left: handled here
        raise ClientGone("the client closed the connection before the answer was ready") from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


def _translated(answer: Answer, reply: Completion) -> tuple[bytes, Usage | None]:
    """The whole answer in the client's dialect; a body the bridge cannot read is the backend's fault."""
    try:
        return answer.bridge.response(reply)
    except Exception as exc:
        log.exception("translating an answer of backend %r failed", answer.resolved.backend.name)
        raise UpstreamError(
            502,
            f"backend '{answer.resolved.backend.name}' returned an answer the gateway could not read",
            code="upstream_error",
        ) from exc


def _headers(
    decision: Decision, resolved: Resolved, overhead: float, fell_back: str | None, explained: str | None
) -> dict[str, str]:
    headers = {
        "x-crossover-route": decision.route,
        "x-crossover-backend": resolved.backend.name,
        "x-crossover-model": resolved.model.name,
        "x-crossover-overhead-ms": f"{overhead * 1000:.3f}",
    }
    if decision.score is not None:
        headers["x-crossover-score"] = f"{decision.score:.4f}"
    if decision.threshold is not None:
        headers["x-crossover-threshold"] = f"{decision.threshold:.4f}"
    if decision.rule is not None:
        headers["x-crossover-rule"] = decision.rule
    if explained is not None:
        headers[EXPLAIN_HEADER] = explained
    if fell_back is not None:
        headers["x-crossover-fallback-from"] = fell_back
    return headers


async def serve(
    request: Request, dialect: str, path: str, validate: Callable[[dict[str, Any]], None]
) -> Response:
    """`dialect` is the client's ("openai" or "anthropic"); `path` its endpoint in that dialect."""
    started = time.perf_counter()
    state = gateway_state(request)
    runtime = state.acquire()
    released = False
    decision: Decision | None = None
    answer: Answer | None = None  # once set, its meter slot (and stream) is ours until handed over
    try:
        api_key = authenticate(request, runtime.settings.api_keys)
        body = await read_json(request, runtime.settings.max_body_bytes)
        validate(body)
        decision = await route(runtime, state, request, body, api_key)
        wants = request.headers.get(EXPLAIN_HEADER, "").lower() in ("1", "true")
        explained = explanation(runtime, decision, body) if wants else None
        answer = await _unless_client_leaves(
            request,
            call(runtime, state, decision, dialect, path, body, passthrough_headers(request, dialect)),
        )
        if answer.fell_back_from is not None and decision.route in ROUTES:
            # Account the request to the route that actually answered it.
            decision = replace(decision, route=other_route(decision.route), reason="fallback")
        resolved = answer.resolved
        exchange = Exchange(
            state.metrics,
            decision,
            resolved,
            body.get("stream") is True,
            started,
            answer.upstream_seconds,
            body=body,
            baseline=runtime.settings.baseline,
            meter=state.meters.get(resolved.backend.name),
            gpu_mark=answer.gpu_mark,
        )
        if isinstance(answer.reply, Completion):
            content, exchange.usage = _translated(answer, answer.reply)
            headers = _headers(
                decision, resolved, exchange.overhead(time.perf_counter()), answer.fell_back_from, explained
            )
            answer = None  # finish() frees the meter slot
            exchange.finish()
            return Response(content, media_type="application/json", headers=headers)

        events = answer.reply
        headers = _headers(
            decision, resolved, exchange.overhead(time.perf_counter()), answer.fell_back_from, explained
        )

        async def on_close(disconnected: bool) -> None:
            await events.aclose()  # idempotent; covers a stream cancelled before its first event
            if disconnected:
                exchange.status_class = "cancelled"
            exchange.finish()
            state.release(runtime)

        relay = relay_events(events, answer.bridge.stream(), exchange, dialect)
        released, answer = True, None  # from here the stream owns the lease, the slot and the upstream
        return EventStreamResponse(relay, headers, on_close)
    except Exception as exc:
        if answer is not None:  # answered, then failed here: free what the answer holds
            state.meters[answer.resolved.backend.name].stop(answer.gpu_mark)
            if not isinstance(answer.reply, Completion):
                await answer.reply.aclose()
        response = error_response(exc, dialect)
        # Refused before any backend answered: counted too, under the decision when there was one.
        where = (
            (decision.route, decision.target.backend, decision.target.model or "") if decision else NO_ROUTE
        )
        status_class = "cancelled" if isinstance(exc, ClientGone) else f"{response.status_code // 100}xx"
        state.metrics.at(state.metrics.requests, *where, status_class).inc()
        if decision is not None:
            # Which route and backend failed: an operator reading a 429 or 502 needs to know.
            response.headers["x-crossover-route"] = decision.route
            response.headers["x-crossover-backend"] = decision.target.backend
        return response
    finally:
        if not released:
            state.release(runtime)
