"""OpenTelemetry traces, when configured (`tracing:` in the config, or OTEL_EXPORTER_OTLP_ENDPOINT):
a span per request with the GenAI semantic conventions' attributes, a child span per upstream attempt
(so retries and fallbacks show), and W3C `traceparent` sent upstream and continued from the client.

The SDK is the optional `tracing` extra and is imported only here, only when tracing is on; when it is
off the gateway holds None and a request pays one `is None` check. No global tracer provider and no
context attached to the task: spans are parented explicitly, so nothing leaks between requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.tracing_config import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from gateway.config import Target
    from gateway.routing import Decision
    from providers.base import Usage

# gen_ai.operation.name by the client's endpoint (a path of either dialect).
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/messages/count_tokens": "count_tokens",
}


def open_tracing(settings: TracingSettings | None) -> Tracing | None:
    return None if settings is None else Tracing(settings)


class Tracing:
    def __init__(self, settings: TracingSettings) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        # Batched in the SDK's own thread: the request path only appends a finished span to a queue.
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.traces_url)))
        self.tracer: Tracer = self.provider.get_tracer("crossover")
        self.propagator = TraceContextTextMapPropagator()

    def request(self, path: str, headers: Mapping[str, str], request_id: str) -> RequestSpan:
        """The span of one request, a child of the client's `traceparent` when it sent one."""
        from opentelemetry.trace import SpanKind

        parent = self.propagator.extract(headers) if "traceparent" in headers else None
        operation = OPERATIONS.get(path, "chat")
        span = self.tracer.start_span(
            operation,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "crossover.request_id": request_id,
                "http.route": path,
            },
        )
        return RequestSpan(self, span, operation)

    def close(self) -> None:
        self.provider.shutdown()  # exports what is still queued


class Attempt:
    """One call to one backend. `headers` carry its `traceparent` upstream."""

    __slots__ = ("headers", "span")

    def __init__(self, span: Span, headers: dict[str, str]) -> None:
        self.span = span
        self.headers = headers

    def failed(self, exc: BaseException) -> None:
        from opentelemetry.trace import StatusCode

        status = getattr(exc, "status", None)
        if isinstance(status, int):
            self.span.set_attribute("http.response.status_code", status)
        code = getattr(exc, "code", None)
        self.span.set_attribute("error.type", str(code) if code else type(exc).__name__)
        self.span.set_status(StatusCode.ERROR, str(getattr(exc, "message", "")) or type(exc).__name__)
        self.span.end()


class RequestSpan:
    __slots__ = ("_answering", "_tracing", "operation", "span")

    def __init__(self, tracing: Tracing, span: Span, operation: str) -> None:
        self._tracing = tracing
        self.span = span
        self.operation = operation
        self._answering: Attempt | None = None  # the attempt that answered: open while it streams

    def attempt(self, target: Target, model: str, system: str, number: int, fallback: bool) -> Attempt:
        from opentelemetry.trace import SpanKind, set_span_in_context

        span = self._tracing.tracer.start_span(
            f"{self.operation} {model}",
            context=set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": self.operation,
                "gen_ai.system": system,
                "gen_ai.request.model": model,
                "crossover.backend": target.backend,
                "crossover.attempt": number,
                "crossover.fallback": fallback,
            },
        )
        headers: dict[str, str] = {}
        self._tracing.propagator.inject(headers, context=set_span_in_context(span))
        return Attempt(span, headers)

    def answered_by(self, attempt: Attempt) -> None:
        self._answering = attempt

    def finish(
        self,
        *,
        model: str | None,
        decision: Decision | None,
        backend: str | None,
        response_model: str | None,
        system: str | None,
        usage: Usage | None,
        cost: float,
        status: int,
        error: BaseException | None,
    ) -> None:
        from opentelemetry.trace import StatusCode

        span = self.span
        attributes: dict[str, Any] = {"http.response.status_code": status, "crossover.cost_usd": cost}
        if model is not None:
            span.update_name(f"{self.operation} {model}")
            attributes["gen_ai.request.model"] = model
        if decision is not None:
            attributes["crossover.route"] = decision.route
            attributes["crossover.reason"] = decision.reason
            if decision.score is not None:
                attributes["crossover.score"] = decision.score
        if backend is not None:
            attributes["crossover.backend"] = backend
        if response_model is not None:
            attributes["gen_ai.response.model"] = response_model
        if system is not None:
            attributes["gen_ai.system"] = system
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input
            attributes["gen_ai.usage.output_tokens"] = usage.output
        answering = self._answering
        if answering is not None:
            if response_model is not None:
                answering.span.set_attribute("gen_ai.response.model", response_model)
            if usage is not None:
                answering.span.set_attribute("gen_ai.usage.input_tokens", usage.input)
                answering.span.set_attribute("gen_ai.usage.output_tokens", usage.output)
            answering.span.end()
        span.set_attributes(attributes)
        if status >= 500 or error is not None:
            span.set_attribute("error.type", str(status) if error is None else type(error).__name__)
            span.set_status(StatusCode.ERROR)
        span.end()
