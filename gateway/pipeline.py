"""One request's way through the gateway, whatever the client's dialect:
authenticate → read and check the body → decide the route → call the decided backend (retrying,
falling back) → answer, whole or streamed. The `Exchange` owns everything the request holds and
records it; routing, resilience and relaying each live in their own module."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from classifier import Explainer, Features, extract_features, weightiest
from gateway import policy
from gateway.config import Router
from gateway.errors import Unauthenticated
from gateway.exchange import Exchange
from gateway.keyring import Keyring, find_static
from gateway.principal import Principal
from gateway.relay import relay_events
from gateway.resilience import Answer, Call, Plan
from gateway.routing import ROUTE_HEADER, Ask, Decision, direct, forced_route, placed, plan_route
from gateway.runtime import Runtime
from gateway.state import GatewayState
from providers.base import Completion, Dialect, ErrorCode, UpstreamError, Usage

EXPLAIN_HEADER = "x-crossover-explain"  # sent as "1" or "true": the answer explains its route
EXPLAIN_TERMS = 5
# Headers of a client's own API that go on to a backend speaking that API (Anthropic's beta features);
# a request translated to another dialect has no use for them.
log = logging.getLogger("crossover")

PASSTHROUGH_HEADERS: dict[Dialect, tuple[str, ...]] = {"anthropic": ("anthropic-beta",)}


def gateway_state(scope: Scope) -> GatewayState:
    state: GatewayState = scope["app"].state.gateway
    return state


@dataclass(frozen=True, slots=True)
class Door:
    """A front door: the ASGI endpoint of one path of one dialect."""

    dialect: Dialect
    path: str  # the endpoint in the client's dialect, e.g. "/chat/completions"
    validate: Callable[[dict[str, Any]], None]
    # The body measured: what a router's classifier reads of it, and what rate limits and a cut
    # stream's usage count (its prompt's characters and output cap).
    features: Callable[[dict[str, Any]], Features] = extract_features
    # False: a router does not score the body (embeddings) but places it on its local target (or the
    # route header's).
    scored: bool = True
    shadowed: bool = True  # whether shadow judging may sample it (it reads chat answers only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = gateway_state(scope)
        async with Exchange(state, scope, receive, send, self.dialect, features=self.features) as ex:
            api_key = ex.authenticated(*authenticate(ex.headers_in, ex.runtime, ex.state.keyring))
            body = await ex.read_json()
            self.validate(body)
            scoring = self.features if self.scored else None
            decision = ex.decided(await route(ex, body, api_key, scoring), self.shadowed)
            # After routing: a budget reserves at the decided model's prices.
            await ex.admit()
            explained = explanation(ex, decision) if _wants_explanation(ex.headers_in) else None
            headers = passthrough_headers(ex.request, self.dialect)
            answer = await ex.call(Plan.of(decision, Call(self.dialect, self.path, body, headers, ex.stream)))
            if isinstance(answer.reply, Completion):
                content, usage = _translated(answer, answer.reply)
                await ex.respond(content, ex.headers(explained), usage)
            else:
                backend = answer.resolved.backend.name
                relay = relay_events(answer.reply, answer.bridge.stream(), ex.tally, self.dialect, backend)
                await ex.respond_stream(relay, ex.headers(explained))


def authenticate(
    headers: Mapping[str, str], runtime: Runtime, keyring: Keyring | None
) -> tuple[str | None, Principal | None]:
    """The gateway key the client sent, once checked, and who it is; (None, None) when the gateway
    asks for no key."""
    static = runtime.settings.principals
    if not static and keyring is None:
        return None, None
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = headers.get("x-api-key", "")  # what Anthropic's SDK sends
    principal = None
    if token:
        principal = keyring.find(token) if keyring is not None else None
        if principal is None:
            principal = find_static(token, static)
    if principal is None:
        raise Unauthenticated(
            "Incorrect API key provided. Send the gateway key as 'Authorization: Bearer <key>' or 'x-api-key'.",
            code=ErrorCode.INVALID_API_KEY,
        )
    return token, principal


async def route(
    ex: Exchange,
    body: dict[str, Any],
    api_key: str | None,
    features: Callable[[dict[str, Any]], Features] | None = extract_features,
) -> Decision:
    """The decision for this request (see gateway/routing.py), counted unless the exchange only asks."""
    runtime, state, model = ex.runtime, ex.state, body["model"]
    principal, scope = ex.principal, ex.scope
    router = runtime.settings.routers.get(model)
    if router is None:
        target = await runtime.target_for_model(model)
        if principal is not None:
            if principal.local_only and target.backend not in runtime.local_backends and ex.record:
                state.recorder.policy_enforced("local_only", "model")
            policy.check_model(principal, model, target, runtime.local_backends)
        return direct(target, scope)
    if principal is not None:
        policy.check_router(principal, model)
    headers = ex.headers_in
    if features is None:
        decision = placed(router, forced_route(headers.get(ROUTE_HEADER)), scope)
        if ex.record:
            state.recorder.decided(model, decision, None)
        return decision
    started = time.perf_counter()
    ask = Ask(
        features=features(body),
        forced=forced_route(headers.get(ROUTE_HEADER)),
        headers=headers,
        api_key=api_key,
        scope=scope,
        full=lambda target: state.full(runtime.settings, target),
    )
    decision = plan_route(router, ask, runtime.classifiers[model].score, runtime.threshold(model))
    if principal is not None and principal.local_only and ex.record:
        _count_local_only(ex, router, decision)
    if ex.record:
        state.recorder.decided(model, decision, time.perf_counter() - started)
        moved = runtime.observe(model, decision)
        if moved is not None:
            state.recorder.threshold(model, moved)
    return decision


def _count_local_only(ex: Exchange, router: Router, decision: Decision) -> None:
    """What `local_only` changed in this decision: a route to the API moved, an API fallback withheld."""
    local, recorder = ex.runtime.local_backends, ex.state.recorder
    if decision.reason == "scope":
        recorder.policy_enforced("local_only", "route")
    if router.fallback and decision.fallback is None and router.api.backend not in local:
        recorder.policy_enforced("local_only", "fallback")


def _wants_explanation(headers: Mapping[str, str]) -> bool:
    return headers.get(EXPLAIN_HEADER, "").lower() in ("1", "true")


def explanation(ex: Exchange, decision: Decision) -> str:
    """What the `x-crossover-explain` response header says: the decision, and for a scored request
    the terms that weighed most in the classifier's logit (when the classifier can say)."""
    out: dict[str, Any] = {"route": decision.route, "reason": decision.reason}
    if decision.rule is not None:
        out["rule"] = decision.rule
    if decision.score is not None:
        out["score"] = round(decision.score, 4)
        if decision.threshold is not None:  # none when a key's scope moved the request
            out["threshold"] = round(decision.threshold, 4)
        classifier = ex.runtime.classifiers.get(ex.body["model"])
        if isinstance(classifier, Explainer):
            terms = weightiest(classifier, ex.measured(), EXPLAIN_TERMS)
            out["top"] = [[name[:40], round(value, 3)] for name, value in terms]
    return json.dumps(out, ensure_ascii=True, separators=(",", ":"))


def passthrough_headers(request: Request, dialect: Dialect) -> dict[str, str]:
    """Each header once, its values joined by commas (a client may send several `anthropic-beta` lines)."""
    names = PASSTHROUGH_HEADERS.get(dialect, ())
    return {name: ",".join(values) for name in names if (values := request.headers.getlist(name))}


def _translated(answer: Answer, reply: Completion) -> tuple[bytes, Usage | None]:
    """The whole answer in the client's dialect; a body the bridge cannot read is the backend's fault."""
    try:
        return answer.bridge.response(reply)
    except Exception as exc:
        backend = answer.resolved.backend.name
        log.exception("translating an answer of backend %r failed", backend)
        raise UpstreamError(
            502,
            f"backend '{backend}' returned an answer the gateway could not read",
            code=ErrorCode.UPSTREAM_ERROR,
        ) from exc
