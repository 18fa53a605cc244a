"""What one client connection may hold: uvicorn's httptools protocol plus bounds on the request's head
and timeouts on reading it, the way nginx bounds them.

uvicorn bounds neither the number nor the size of headers (httptools buffers a header until it ends), and
waits for a request's head or a stalled body forever; only the wait between two requests has a timeout.
The per-header check is O(1); a connection has at most one timer, armed when a request is still
incomplete after a read (most requests arrive whole in one) and at connecting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.config import HttpLimits
from gateway.errors import InvalidRequest, error_response
from gateway.inbound import BODY_TIMED_OUT
from providers.base import ErrorCode

# After refusing a request, keep reading (and dropping) what the client still sends for a moment before
# closing: closing with unread bytes makes the kernel send a reset, which can destroy the refusal in flight.
LINGER_SECONDS = 2.0

log = logging.getLogger("crossover")


class GatewayConfig(uvicorn.Config):
    """uvicorn's Config carrying the limits to every worker (a spawned worker receives it pickled)."""

    def __init__(self, app: Callable[[], object], *, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(
            app, http=LimitedHttpToolsProtocol, timeout_keep_alive=limits.keep_alive_seconds, **kwargs
        )
        self.limits = limits


class _Refused(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _too_large(what: str) -> _Refused:
    return _Refused(
        431, f"Request header fields too large: {what}.", ErrorCode.REQUEST_HEADER_FIELDS_TOO_LARGE
    )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits = config.limits if isinstance(config, GatewayConfig) else HttpLimits()
        # Plain attributes for the per-header check, which runs for every header of every request.
        self._max_headers, self._max_line = limits.max_headers, limits.max_header_line_bytes
        self._max_head = limits.max_header_bytes
        self.url = b""
        self._in_head = True  # between a request's first byte (or the connection) and its head's end
        self._head_bytes = 0  # bytes received while in the head: bounds a head that never ends
        self._headers = 0
        self._header_bytes = 0
        self._began = False  # a request's first byte arrived (else a timeout closes without an answer)
        self._in_body = False
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    # ---- timers: one per connection --------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self._began:
            self.transport.close()  # a connection that never said anything gets no answer, like nginx
        else:
            self._refuse(_Refused(408, "Request header read timed out.", ErrorCode.REQUEST_TIMEOUT))

    def _body_timed_out(self) -> None:
        self._timer = None
        silence = self.loop.time() - self._last_read
        if self.flow.read_paused:  # the app has not taken the last chunk yet: the silence is ours
            self._last_read = self.loop.time()
            self._arm(self.limits.body_timeout_seconds, self._body_timed_out)
        elif silence < self.limits.body_timeout_seconds:
            self._arm(self.limits.body_timeout_seconds - silence, self._body_timed_out)
        elif self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # answered without reading the body (a 404, say): nothing to add
        else:
            if self.cycle is not None:
                # The app waits for the rest of the body: end its wait now, saying why, so it counts a
                # 408 (gateway/inbound.py) rather than a client that left.
                cast(dict[str, Any], self.cycle.scope)[BODY_TIMED_OUT] = True  # not in uvicorn's TypedDict
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self._refuse(_Refused(408, "Request body read timed out.", ErrorCode.REQUEST_TIMEOUT))

    # ---- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_seconds, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        elif self._in_body and self._timer is not None:
            self._last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _Refused):
                raise
            self._refuse(error.__context__)
            return
        except httptools.HttpParserError:
            self._refuse(_Refused(400, "Invalid HTTP request received.", "invalid_http_request"))
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(_too_large(f"the request's head exceeds {self.limits.max_header_bytes} bytes"))
        elif self._timer is None:
            # Armed only for a request still incomplete after a read: most arrive whole in one.
            if self._in_head:
                self._arm(self.limits.header_timeout_seconds, self._head_timed_out)
            elif self._in_body:
                self._last_read = self.loop.time()
                self._arm(self.limits.body_timeout_seconds, self._body_timed_out)

    # ---- parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers = self._header_bytes = 0
        self._began = self._in_head = True

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_line_bytes:
            raise _Refused(414, "Request URL too long.", ErrorCode.URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self._headers += 1
        self._header_bytes += size
        if self._headers > self._max_headers or size > self._max_line or self._header_bytes > self._max_head:
            raise self._header_refusal(size)
        # uvicorn's on_header, inlined: this runs for every header.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def _header_refusal(self, size: int) -> _Refused:
        if self._headers > self._max_headers:
            return _too_large(f"more than {self._max_headers} headers")
        if size > self._max_line:
            return _too_large(f"a header exceeds {self._max_line} bytes")
        return _too_large(f"the headers exceed {self._max_head} bytes")

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body, self._head_bytes = False, True, 0
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._began = self._in_body = False
        self._disarm()
        super().on_message_complete()

    # ---- refusing ----------------------------------------------------------------------------------------

    def _refuse(self, refusal: _Refused) -> None:
        """Answer in the API's error shape, stop reading requests, and close after a short linger."""
        self._disarm()
        self._refused = True
        log.warning("refused a request from %s: %s", self.client and self.client[0], refusal.message)
        if self._in_head and self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request behind one still being answered: that answer goes out first, then the
            # connection closes (writing the refusal now would put it in the earlier request's place).
            self.cycle.keep_alive = False
            return
        error = InvalidRequest(refusal.message, code=refusal.code)
        error.status = refusal.status
        body = error_response(error, "anthropic" if self.url.startswith(b"/v1/messages") else "openai").body
        head = [STATUS_LINE[refusal.status]]
        head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
