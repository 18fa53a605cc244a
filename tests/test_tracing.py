"""OpenTelemetry traces, exported over OTLP/HTTP to a real receiver on loopback that decodes the
protobuf payloads: the request's span continues the client's trace, each upstream attempt (retries,
then the fallback) is its child, and each attempt's `traceparent` reached the upstream."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.conftest import SIM_KEY
from tests.servers import Server, start_gateway

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass
class Received:
    span: Span
    service: str

    @property
    def attributes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kv in self.span.attributes:
            which = kv.value.WhichOneof("value")
            out[kv.key] = getattr(kv.value, which) if which else None
        return out

    @property
    def id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent(self) -> str:
        return self.span.parent_span_id.hex()


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Received] = []
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.spans)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        export = ExportTraceServiceRequest()
        export.ParseFromString(raw)
        for resource_spans in export.resource_spans:
            service = next(
                kv.value.string_value for kv in resource_spans.resource.attributes if kv.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(Received(span, service) for span in scope_spans.spans)
        self.server.paths.append(self.path)
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def traced_config(sim: Server, collector: str) -> dict[str, Any]:
    backend = {"kind": "openai_compatible", "base_url": sim.url + "/v1", "api_key": "${SIM_OPENAI_KEY}"}
    return {
        "backends": {
            "local": {
                **backend,
                "models": [{"name": "gpt-4o-mini"}],
                "retries": {"attempts": 1, "backoff_seconds": 0.01, "max_wait_seconds": 1},
            },
            "openai": {**backend, "models": [{"name": "gpt-4o"}]},
        },
        "routers": {"auto": {"local": "local", "api": "openai", "classifier": "heuristic", "threshold": 0.5}},
        "tracing": {"otlp_endpoint": collector, "service_name": "crossover-test"},
    }


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, openai_sim: Server, receiver: Receiver
) -> Iterator[Server]:
    server = start_gateway(
        tmp_path_factory.mktemp("traced"),
        traced_config(openai_sim, receiver.url),
        env={"SIM_OPENAI_KEY": SIM_KEY, "OTEL_BSP_SCHEDULE_DELAY": "50"},
    )
    yield server
    server.stop()


def test_a_request_span_continues_the_clients_trace_with_a_child_span_per_attempt(
    traced: Server, openai_sim: Server, receiver: Receiver
) -> None:
    httpx.delete(openai_sim.url + "/_sim/traced")
    # The local target fails twice (its retry too), then the fallback answers.
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"status": 503}, {"status": 503}])
    response = httpx.post(
        traced.url + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "x-request-id": "trace-me-1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-crossover-fallback-from"] == "local"
    assert response.headers["x-request-id"] == "trace-me-1"

    spans = receiver.wait_for(4)
    assert receiver.paths[0] == "/v1/traces"
    ours = [s for s in spans if s.span.trace_id.hex() == CLIENT_TRACE]
    assert len(ours) == 4, [s.span.name for s in spans]
    [request] = [s for s in ours if s.span.kind == Span.SPAN_KIND_SERVER]
    attempts = sorted(
        (s for s in ours if s.span.kind == Span.SPAN_KIND_CLIENT), key=lambda s: s.span.start_time_unix_nano
    )
    assert request.service == "crossover-test"
    assert request.parent == CLIENT_SPAN  # continued from the client's traceparent
    assert request.span.name == "chat auto"
    a = request.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "auto"
    assert (a["gen_ai.response.model"], a["gen_ai.system"]) == ("gpt-4o", "openai")
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert (a["crossover.route"], a["crossover.backend"], a["crossover.request_id"]) == (
        "api",
        "openai",
        "trace-me-1",
    )
    assert a["crossover.reason"] and 0 <= a["crossover.score"] <= 1
    assert a["http.response.status_code"] == 200

    assert [s.parent for s in attempts] == [request.id] * 3
    assert [s.span.name for s in attempts] == ["chat gpt-4o-mini", "chat gpt-4o-mini", "chat gpt-4o"]
    described = [
        (
            s.attributes["crossover.backend"],
            s.attributes["crossover.attempt"],
            s.attributes["crossover.fallback"],
        )
        for s in attempts
    ]
    assert described == [("local", 0, False), ("local", 1, False), ("openai", 0, True)]
    assert [s.span.status.code for s in attempts] == [
        Status.STATUS_CODE_ERROR,
        Status.STATUS_CODE_ERROR,
        Status.STATUS_CODE_UNSET,
    ]
    assert attempts[0].attributes["http.response.status_code"] == 503
    assert attempts[2].attributes["gen_ai.system"] == "openai"
    assert attempts[2].attributes["gen_ai.usage.output_tokens"] == a["gen_ai.usage.output_tokens"]

    # What the upstream saw: each attempt's own traceparent, and the request id on every attempt.
    seen = httpx.get(openai_sim.url + "/_sim/traced").json()
    assert [h["x-request-id"] for h in seen] == ["trace-me-1"] * 3
    assert [h["traceparent"] for h in seen] == [f"00-{CLIENT_TRACE}-{s.id}-01" for s in attempts]


def test_a_request_without_a_traceparent_starts_a_trace_and_a_streamed_one_ends_with_its_stream(
    traced: Server, receiver: Receiver
) -> None:
    before = len(receiver.spans)
    with httpx.stream(
        "POST",
        traced.url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        text = "".join(response.iter_text())
    assert "[DONE]" in text
    spans = receiver.wait_for(before + 2)[before:]
    [request] = [s for s in spans if s.span.kind == Span.SPAN_KIND_SERVER]
    [attempt] = [s for s in spans if s.span.kind == Span.SPAN_KIND_CLIENT]
    assert request.parent == "" and attempt.parent == request.id
    assert request.attributes["crossover.request_id"] == request_id
    assert request.attributes["crossover.route"] == "direct"
    # The attempt lasts as long as its stream, which ends before the request does.
    assert attempt.span.end_time_unix_nano <= request.span.end_time_unix_nano
    assert request.attributes["gen_ai.usage.output_tokens"] > 0


def test_tracing_is_off_unless_the_file_or_the_standard_environment_names_a_collector() -> None:
    from gateway.tracing_config import TracingSettings, TracingSpec, tracing_settings

    assert tracing_settings(None, {}) is None
    assert tracing_settings(TracingSpec(sample_ratio=0.5), {}) is None
    assert tracing_settings(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == TracingSettings(
        "http://c:4318/v1/traces", "crossover", 1.0
    )
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom", "OTEL_SERVICE_NAME": "gw"}
    assert tracing_settings(None, env) == TracingSettings("http://c:4318/custom", "gw", 1.0)
    spec = TracingSpec(otlp_endpoint="http://file:4318/v1/traces", service_name="edge", sample_ratio=0.1)
    assert tracing_settings(spec, env) == TracingSettings("http://file:4318/v1/traces", "edge", 0.1)
