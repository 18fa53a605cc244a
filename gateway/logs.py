"""The gateway's logging: plain lines by default, or one JSON object per line (`--log-format json`),
and the one line each request leaves when it ends.

The request line is one logger call with one lazy argument: nothing is formatted unless a handler
writes it, and `--log-level warning` silences it."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import orjson

LogFormat = Literal["plain", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "json")
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"
requests_log = logging.getLogger("crossover.request")


class RequestLine:
    """What one request came to; no prompt text and no keys, by construction (none are passed in)."""

    __slots__ = (
        "backend",
        "cost_usd",
        "id",
        "input_tokens",
        "latency_ms",
        "model",
        "output_tokens",
        "path",
        "reason",
        "route",
        "status",
    )

    def __init__(
        self,
        id: str,
        path: str,
        route: str,
        reason: str,
        backend: str,
        model: str,
        status: int,
        input_tokens: int | None,
        output_tokens: int | None,
        cost_usd: float,
        latency_ms: float,
    ) -> None:
        self.id, self.path, self.route, self.reason = id, path, route, reason
        self.backend, self.model, self.status = backend, model, status
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.cost_usd, self.latency_ms = cost_usd, latency_ms

    def fields(self) -> dict[str, Any]:
        return {
            "request_id": self.id,
            "path": self.path,
            "route": self.route,
            "reason": self.reason,
            "backend": self.backend,
            "model": self.model,
            "status": self.status,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "latency_ms": round(self.latency_ms, 3),
        }

    def __str__(self) -> str:
        return (
            f"request id={self.id} path={self.path} route={self.route} reason={self.reason} "
            f"backend={self.backend} model={self.model} status={self.status} "
            f"input_tokens={self.input_tokens} output_tokens={self.output_tokens} "
            f"cost_usd={self.cost_usd:.8f} latency_ms={self.latency_ms:.3f}"
        )


class _Clock:
    """The timestamp's text up to the second, formatted once a second rather than once a line."""

    __slots__ = ("_second", "_text", "_utc")

    def __init__(self, utc: bool) -> None:
        self._utc = utc
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            moment = time.gmtime(second) if self._utc else time.localtime(second)
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", moment)
        return self._text


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(PLAIN)
        self._clock = _Clock(utc=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self._clock(record.created)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock(utc=True)

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": f"{self._clock(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        args = record.args
        if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], RequestLine):
            out["message"] = "request"
            out.update(args[0].fields())
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


_MARK = "_crossover_handler"


def configure(log_format: LogFormat, level: str = "info") -> None:
    """The root handler in the chosen format (idempotent: workers call it again in their own process);
    the request line follows `--log-level`."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    # What no format here shows, and each record would otherwise look up (measured: about a third of
    # a request line's cost): the calling frame, thread, process and task.
    logging._srcfile = None  # the documented way to skip findCaller
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root.setLevel(logging.INFO)
    requests_log.setLevel(level.upper())


def log_request(line: RequestLine) -> None:
    requests_log.info("%s", line)
