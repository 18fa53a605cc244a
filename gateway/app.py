"""create_app(settings): the HTTP layer. The lifespan builds providers, classifiers and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api import admin, anthropic, openai
from gateway.config import Settings
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, error_response
from gateway.metrics import Metrics
from gateway.runtime import Runtime
from gateway.state import GatewayState

WATCH_INTERVAL_SECONDS = 1.0


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


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    error: GatewayError
    if exc.status_code == 405:
        error = MethodNotAllowed(f"Method not allowed ({where}).", code="method_not_allowed")
    elif exc.status_code == 404:
        error = NotFound(f"Invalid URL ({where}).", code="unknown_url")
    else:
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
    return error_response(error)


def create_app(
    settings: Settings,
    *,
    loader: Callable[[], Settings] | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """`loader` re-reads the config on reload (SIGHUP, or a file change when watching is on)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        await runtime.start()
        state = GatewayState(runtime, metrics or Metrics(), loader)
        app.state.gateway = state
        tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        if loader is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, lambda: tasks.append(loop.create_task(_reload(state))))
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

    # Plain Starlette, not FastAPI: nothing here uses its dependency injection or models, and its
    # per-request middleware (telemetry checks that read os.environ) cost ~10% of CPU under load.
    routes = [
        Route("/v1/chat/completions", openai.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai.completions, methods=["POST"]),
        Route("/v1/messages", anthropic.messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", anthropic.count_tokens, methods=["POST"]),
        Route("/v1/models", openai.list_models, methods=["GET"]),
        Route("/healthz", admin.healthz, methods=["GET"]),
        Route("/readyz", admin.readyz, methods=["GET"]),
        Route("/metrics", admin.metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})
    return app


async def _reload(state: GatewayState) -> None:
    await state.reload()
