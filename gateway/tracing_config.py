"""The `tracing:` section of the config, and where traces go when it is absent but the standard
OpenTelemetry environment names an endpoint. Kept apart from gateway/tracing.py, which imports the SDK."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SERVICE = "crossover"
TRACES_PATH = "/v1/traces"


class TracingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The collector's OTLP/HTTP base URL (as OTEL_EXPORTER_OTLP_ENDPOINT), or its full /v1/traces URL.
    otlp_endpoint: str | None = None
    service_name: str | None = None
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0


@dataclass(frozen=True, slots=True)
class TracingSettings:
    traces_url: str
    service_name: str
    sample_ratio: float


def traces_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def tracing_settings(spec: TracingSpec | None, env: Mapping[str, str]) -> TracingSettings | None:
    """None (off) unless the config or the environment names an endpoint; the file wins over the env."""
    endpoint = spec.otlp_endpoint if spec is not None else None
    if endpoint:
        url = traces_url(endpoint)
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        url = traces_url(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    else:
        return None
    name = (
        (spec.service_name if spec is not None else None) or env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE
    )
    return TracingSettings(url, name, spec.sample_ratio if spec is not None else 1.0)


def sdk_missing() -> str | None:
    """Why tracing cannot start here, or None when the `tracing` extra is installed."""
    from importlib.util import find_spec

    for module in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"tracing is configured but {module} is not installed: pip install 'crossover[tracing]'"
    return None
