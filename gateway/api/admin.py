"""Operational endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from gateway.state import GatewayState
from providers.base import UpstreamError

READY_TIMEOUT_SECONDS = 3.0


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    """Ready when every router has a target that answers its model list (with no routers: every
    backend). The body names each backend's state; 503 when not ready."""
    state: GatewayState = request.app.state.gateway
    providers = state.runtime.providers

    async def probe(name: str) -> tuple[str, str]:
        try:
            await asyncio.wait_for(providers[name].list_models(), READY_TIMEOUT_SECONDS)
        except UpstreamError as exc:
            return name, exc.message
        except TimeoutError:
            return name, "timed out"
        return name, "ok"

    # A backend with replicas is as ready as its health probes say: ready while any replica is up.
    replicas = {name: s.states() for name, s in state.runtime.replicas.items()}
    results = dict(await asyncio.gather(*(probe(n) for n in providers if n not in replicas)))
    for name, states in replicas.items():
        results[name] = "ok" if "up" in states.values() else "no replica is up"
    routers = state.runtime.settings.routers.values()
    if routers:
        # With fallback, a router serves while either target answers: one API blip must not take
        # every replica out of a load balancer.
        ready = all(results[r.local.backend] == "ok" or results[r.api.backend] == "ok" for r in routers)
    else:
        ready = all(v == "ok" for v in results.values())
    answer: dict[str, object] = {"status": "ready" if ready else "not ready", "backends": results}
    if replicas:
        answer["replicas"] = replicas  # per replicated backend: each replica's health probe, up or down
    body = orjson.dumps(answer)
    return Response(body, status_code=200 if ready else 503, media_type="application/json")


async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    if state.shared is not None:  # the GPU cost up to now, metered once for the whole deployment
        await state.shared.settle()
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
