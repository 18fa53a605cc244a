"""Streamed answers back to the client: SSE relayed event by event through the bridge to the client's
dialect, with what accounting needs (usage, first token, event count, time waiting upstream) kept in
a `Tally`. It records nothing itself: the request's owner (gateway/exchange.py) does, once."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from gateway.errors import error_frame, responses_error_frame
from providers.base import Dialect, EventStream, UpstreamError, Usage
from providers.bridges import NumberedStream, StreamBridge

log = logging.getLogger("crossover")


@dataclass(slots=True)
class Tally:
    upstream_seconds: float = 0.0  # waiting on the backend, not the gateway's overhead
    first_token_at: float | None = None  # perf_counter() of the first event carrying content
    last_event_at: float | None = None
    events: int = 0  # streamed events relayed: ~ output tokens, when no usage comes
    usage: Usage | None = None
    failed: UpstreamError | None = None  # the failure that ended a stream after its headers


async def relay_events(
    events: EventStream, bridge: StreamBridge, tally: Tally, dialect: Dialect, backend: str
) -> AsyncGenerator[bytes, None]:
    """Forward upstream events as they arrive, those of one network read in one write. An upstream
    failure after the headers ends the stream with an error event in the client's dialect, which its
    SDK raises."""
    iterator = events.__aiter__()
    try:
        while True:
            waited = time.perf_counter()
            try:
                batch = await iterator.__anext__()
            except StopAsyncIteration:
                break
            finally:
                tally.upstream_seconds += time.perf_counter() - waited
            out = bridge.feed(batch)
            tally.events += len(batch)
            tally.last_event_at = time.perf_counter()
            if tally.first_token_at is None and bridge.first_token:
                tally.first_token_at = tally.last_event_at
            if out:
                yield out
        tally.usage = bridge.usage
        yield bridge.end()
    except Exception as exc:
        if not isinstance(exc, UpstreamError):
            # An event the bridge could not read (not JSON, wrong shape): the stream still ends cleanly.
            log.exception("unreadable event from backend %r", backend)
            exc = UpstreamError(502, f"backend '{backend}' sent an unreadable event")
        tally.usage = bridge.usage
        tally.failed = exc
        if isinstance(bridge, NumberedStream):  # a Responses client: an `error` event of its own
            yield responses_error_frame(exc, bridge.sequence)
        else:
            yield error_frame(exc, dialect)
    finally:
        await events.aclose()
