"""Answers back to the client: whole bodies, or SSE relayed event by event with usage captured.

An `Exchange` follows one request from arrival to its last byte and records it in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from classifier import extract_features
from classifier.features import estimate_tokens
from gateway.accounting import BackendMeter, cost_usd
from gateway.config import ModelEntry
from gateway.errors import error_code, error_frame
from gateway.metrics import Metrics
from gateway.routing import Decision
from gateway.runtime import Resolved
from providers.base import EventStream, UpstreamError, Usage
from providers.bridges import StreamBridge

log = logging.getLogger("crossover")


@dataclass(slots=True)
class Exchange:
    metrics: Metrics
    decision: Decision
    resolved: Resolved
    stream: bool
    started: float
    upstream_seconds: float = 0.0
    body: dict[str, Any] = field(default_factory=dict)  # the client's request, for usage estimates
    baseline: ModelEntry | None = None
    meter: BackendMeter | None = None
    gpu_mark: float | None = None
    first_token_at: float | None = None
    last_event_at: float | None = None
    events: int = 0  # streamed events relayed: ~ output tokens, when no usage comes
    usage: Usage | None = None
    status_class: str = "2xx"

    def overhead(self, now: float) -> float:
        return max(now - self.started - self.upstream_seconds, 0.0)

    def _estimate_usage(self) -> Usage:
        """No usage came (a stream cut short): count prompt characters, and one token per event."""
        self.metrics.at(self.metrics.estimated_usage, self.decision.route, self.resolved.backend.name).inc()
        return Usage(input=estimate_tokens(extract_features(self.body).total_chars), output=self.events)

    def finish(self) -> None:
        now = time.perf_counter()
        m, route = self.metrics, self.decision.route
        backend, model = self.resolved.backend.name, self.resolved.model.name
        stream = "true" if self.stream else "false"
        m.at(m.requests, route, backend, model, self.status_class).inc()
        m.at(m.latency, route, backend, stream).observe(now - self.started)
        m.at(m.overhead, route, stream).observe(self.overhead(now))
        if self.first_token_at is not None:
            m.at(m.ttft, route, backend).observe(self.first_token_at - self.started)
            if self.last_event_at is not None and self.events > 1:
                gap = (self.last_event_at - self.first_token_at) / (self.events - 1)
                m.at(m.inter_token, route, backend).observe(gap)
        u = self.usage
        if u is None and self.stream:
            u = self._estimate_usage()
        cost = 0.0
        if self.meter is not None and self.gpu_mark is not None:
            cost += self.meter.stop(self.gpu_mark)
        if u is not None:
            m.at(m.tokens, route, backend, model, "input").inc(u.input)
            m.at(m.tokens, route, backend, model, "output").inc(u.output)
            if u.cached:
                m.at(m.tokens, route, backend, model, "cached").inc(u.cached)
            cost += cost_usd(u, self.resolved.model.price)
            if self.baseline is not None:
                m.at(m.baseline_cost, route, backend, model).inc(cost_usd(u, self.baseline.price))
        m.at(m.cost, route, backend, model).inc(cost)


async def relay_events(
    events: EventStream, bridge: StreamBridge, exchange: Exchange, dialect: str
) -> AsyncGenerator[bytes, None]:
    """Forward upstream events as they arrive, those of one network read in one write, through the
    bridge to the client's dialect. An upstream failure after the headers ends the stream with an
    error event in the client's dialect, which its SDK raises."""
    iterator = events.__aiter__()
    try:
        while True:
            waited = time.perf_counter()
            try:
                batch = await iterator.__anext__()
            except StopAsyncIteration:
                break
            finally:
                exchange.upstream_seconds += time.perf_counter() - waited
            out = bridge.feed(batch)
            exchange.events += len(batch)
            exchange.last_event_at = time.perf_counter()
            if exchange.first_token_at is None and bridge.first_token:
                exchange.first_token_at = exchange.last_event_at
            if out:
                yield out
        exchange.usage = bridge.usage
        yield bridge.end()
    except Exception as exc:
        if not isinstance(exc, UpstreamError):
            # An event the bridge could not read (not JSON, wrong shape): the stream still ends cleanly.
            log.exception("unreadable event from backend %r", exchange.resolved.backend.name)
            exc = UpstreamError(502, f"backend '{exchange.resolved.backend.name}' sent an unreadable event")
        exchange.usage = bridge.usage
        exchange.status_class = "5xx"
        exchange.metrics.at(
            exchange.metrics.upstream_errors, exchange.resolved.backend.name, error_code(exc)
        ).inc()
        yield error_frame(exc, dialect)
    finally:
        await events.aclose()


class EventStreamResponse(Response):
    """An SSE response that stops the moment the client goes away.

    It listens for `http.disconnect` while streaming, so an abandoned request is cancelled even
    while the upstream is silent (a long prefill), and the upstream connection is dropped at once.
    """

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: dict[str, str],
        on_close: Callable[[bool], Awaitable[None]],
    ) -> None:
        # Deliberately not Response.__init__: the body is a generator and the headers are sent in __call__.
        self.status_code = 200
        self.events = body
        self.extra_headers = headers
        self.on_close = on_close  # called once, however the stream ends, with True if disconnected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies such as nginx must not buffer the stream
        ]
        raw_headers += [(k.encode(), v.encode()) for k, v in self.extra_headers.items()]
        streamer = asyncio.current_task()
        assert streamer is not None
        disconnected = delivered = False

        async def watch() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            # Servers also report a disconnect once the response is complete: not a cancellation.
            if not delivered:
                disconnected = True
                streamer.cancel()

        # Plain asyncio rather than an anyio task group: this runs once per stream, and the task
        # group's bookkeeping was ~15% of the gateway's CPU time on short streams.
        watcher = asyncio.create_task(watch())
        try:
            async with aclosing(self.events) as body:
                await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                delivered = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not disconnected:
                raise
            streamer.uncancel()  # our own cancellation, for a client that left: handled here
        except OSError:
            disconnected = not delivered  # the client went away while we were writing
        finally:
            watcher.cancel()
            await self.on_close(disconnected)
