"""create_app(settings): the HTTP layer. The lifespan builds providers, classifiers and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api import admin, anthropic, dashboard, keys_admin, openai
from gateway.config import Settings
from gateway.dashboard import snapshot
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, error_response
from gateway.metric_buffer import FOLD_SECONDS
from gateway.metrics import Metrics
from gateway.request_id import REQUEST_ID_HEADER, request_id
from gateway.runtime import Runtime
from gateway.state import GatewayState
from gateway.tracing import open_tracing
from providers.base import ErrorCode, UnsupportedRequest, UpstreamError
from providers.http import HttpClient
from providers.openai_compat import OpenAICompatProvider

WATCH_INTERVAL_SECONDS = 1.0
HOUSEKEEPING_SECONDS = 5.0
REPLICA_TICK_SECONDS = 0.25  # how often to look for a replica set whose probe is due

log = logging.getLogger("crossover")


async def _watch(path: Path, state: GatewayState) -> None:
    """Reload when the config file's modification time or size changes."""

    def stamp() -> tuple[float, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime, st.st_size

    seen = stamp()
    while True:
        await asyncio.sleep(WATCH_INTERVAL_SECONDS)
        now = stamp()
        if now is not None and now != seen:
            seen = now
            await state.reload()


async def _probe_replicas(state: GatewayState) -> None:
    """Probe each replicated backend of the current runtime at its `health_check_seconds`
    (gateway/replicas.py); its GPU cost follows the live replicas."""
    while True:
        await asyncio.sleep(REPLICA_TICK_SECONDS)
        now = time.monotonic()
        due = [s for s in state.runtime.replicas.values() if s.next_probe <= now]
        for result in await asyncio.gather(*(s.probe(state.recorder) for s in due), return_exceptions=True):
            if isinstance(result, Exception):  # a bug must not stop the probes: no replica would come back
                log.error("probing replicas failed: %r", result)
        for replicas in due:
            state.live_replicas(replicas.backend.name, sum(r.load.up for r in replicas.replicas))


async def _fold_metrics(metrics: Metrics) -> None:
    """The request path's buffered metric writes into the metrics every second (gateway/metric_buffer.py):
    what bounds the age of this worker's values in another worker's /metrics."""
    while True:
        await asyncio.sleep(FOLD_SECONDS)
        metrics.fold()


async def _housekeeping(state: GatewayState) -> None:
    """Every few seconds: idle GPU cost and connection-pool waits into counters, pool and vLLM queue
    state into gauges, and a snapshot for the dashboard's last hour (kept at most every 30 s), so
    the hour is full when someone first opens the page."""
    history = dashboard.history_of(state)
    while True:
        await asyncio.sleep(HOUSEKEEPING_SECONDS)
        history.record(snapshot(state.metrics.render(), time.monotonic()))
        for name, meter in state.meters.items():
            if meter.usd_per_hour > 0:
                state.recorder.gpu_idle(name, meter.take_idle())
        runtime = state.runtime
        for name, provider in runtime.providers.items():
            http = getattr(provider, "http", None)
            if isinstance(http, HttpClient):  # both backend kinds; the protocol does not promise it
                state.recorder.pool(name, http.pool_waits.take(), http.pool_waits.queued)
        for name, backend in runtime.settings.backends.items():
            provider = runtime.providers[name]
            if backend.replicated:  # scraped per replica (gateway/replicas.py)
                continue
            if not backend.scrape_metrics or not isinstance(provider, OpenAICompatProvider):
                continue
            try:
                engine = await provider.engine_state()
            except (UpstreamError, UnsupportedRequest) as exc:
                log.debug("scraping backend %r failed: %s", name, exc)
                continue
            state.recorder.engine(
                name,
                engine["vllm:num_requests_waiting"],
                engine["vllm:num_requests_running"],
                engine["vllm:kv_cache_usage_perc"],
            )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    error: GatewayError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"Method not allowed ({where}).", code=ErrorCode.METHOD_NOT_ALLOWED)
    elif exc.status_code == 404:
        error = NotFound(f"Invalid URL ({where}).", code=ErrorCode.UNKNOWN_URL)
    else:
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
    # Anthropic's clients get Anthropic's shape under its paths; a 405 says what is allowed.
    dialect = "anthropic" if request.url.path.startswith("/v1/messages") else "openai"
    response = error_response(error, dialect)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


class Gateway(Starlette):
    """Starlette, with the front doors' POSTs handed to them directly. A door answers every failure
    itself (its Exchange), so Starlette's error middleware and router have nothing to add there, and
    skipping them saved ~7% of a request's CPU (py-spy, bench/crossover.yaml). Everything else, and
    a door's path with another method (405), goes through Starlette as usual."""

    def __init__(self, doors: dict[str, ASGIApp], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.doors = doors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            door = self.doors.get(scope["path"])
            if door is not None:
                scope["app"] = self
                await door(scope, receive, send)
                return
        if scope["type"] == "http":
            send = _with_request_id(scope, send)
        await super().__call__(scope, receive, send)


def _with_request_id(scope: Scope, send: Send) -> Send:
    """Every response carries an `x-request-id` (the doors' Exchange sets their own)."""
    given = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"}
    header = (REQUEST_ID_HEADER.encode(), request_id(given).encode())

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return sending


def create_app(
    settings: Settings,
    *,
    loader: Callable[[], Settings] | None = None,
    metrics: Metrics | None = None,
    workers: int = 1,
) -> Gateway:
    """`loader` re-reads the config on reload (SIGHUP, or a file change when watching is on);
    `workers`: how many processes serve (each meters its requests at that share of a GPU's cost)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        await runtime.start()
        state = GatewayState(runtime, metrics or Metrics(), loader, workers=workers)
        app.state.gateway = state
        state.tracing = open_tracing(settings.tracing)
        await state.start()
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = [
            loop.create_task(_housekeeping(state)),
            loop.create_task(_fold_metrics(state.metrics)),
            loop.create_task(_probe_replicas(state)),
        ]
        if loader is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, state.schedule_reload)
            if settings.watch_config and settings.source is not None:
                tasks.append(loop.create_task(_watch(settings.source, state)))
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()
            await state.close()
            state.metrics.fold()  # the last requests' writes, before the worker's metrics file is all that stays
            if state.tracing is not None:
                await asyncio.to_thread(state.tracing.close)  # a last export, which may wait on the network

    # Plain Starlette, not FastAPI: nothing here uses its dependency injection or models, and its
    # per-request middleware (telemetry checks that read os.environ) cost ~10% of CPU under load.
    doors: dict[str, ASGIApp] = {
        "/v1/chat/completions": openai.chat_completions,
        "/v1/completions": openai.completions,
        "/v1/responses": openai.responses,
        "/v1/embeddings": openai.embeddings,
        "/v1/messages": anthropic.messages,
        "/v1/messages/count_tokens": anthropic.count_tokens,
    }
    routes = [
        *(Route(path, door, methods=["POST"]) for path, door in doors.items()),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai.retrieve_model, methods=["GET"]),
        Route("/healthz", admin.healthz, methods=["GET"]),
        Route("/readyz", admin.readyz, methods=["GET"]),
        Route("/metrics", admin.metrics, methods=["GET"]),
        Route("/dashboard", dashboard.page, methods=["GET"]),
        Route("/dashboard/summary.json", dashboard.summary_json, methods=["GET"]),
        Route("/admin/teams", keys_admin.list_teams, methods=["GET"]),
        Route("/admin/teams", keys_admin.create_team, methods=["POST"]),
        Route("/admin/teams/{name}", keys_admin.update_team, methods=["PATCH"]),
        Route("/admin/keys", keys_admin.list_keys, methods=["GET"]),
        Route("/admin/keys", keys_admin.create_key, methods=["POST"]),
        Route("/admin/keys/{id}", keys_admin.revoke_key, methods=["DELETE"]),
        Route("/admin/keys/{id}/rotate", keys_admin.rotate_key, methods=["POST"]),
    ]
    app = Gateway(doors, routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    # No redirect from `/path/` to `/path`: Starlette builds its Location from the client's Host header
    # (a forged Host became the redirect's target), and an API client does not follow a 307 for a POST
    # anyway. A trailing slash is an unknown URL: 404 in the API's shape.
    app.router.redirect_slashes = False
    return app
