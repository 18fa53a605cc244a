"""Configuration: YAML → strict models (step 1) → runtime settings with secrets resolved (step 2).

Every problem is reported with its key path, e.g. `routers.auto.threshold: ...`, and start-up stops.
Secrets are never written in the file: `api_key: ${OPENAI_API_KEY}` names an environment variable.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from gateway.principal import NO_LIMITS, Limits, Principal
from gateway.rules import Rule
from gateway.tracing_config import TracingSettings, TracingSpec, sdk_missing, tracing_settings
from providers.http1 import breaks_head
from providers.kind import Kind, Options
from providers.registry import KINDS


class ConfigError(ValueError):
    """The config cannot be used; the message names every offending key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceSpec(_Strict):
    usd_per_million_input_tokens: Annotated[float, Field(ge=0)] = 0.0
    usd_per_million_cached_input_tokens: Annotated[float, Field(ge=0)] | None = None
    usd_per_million_output_tokens: Annotated[float, Field(ge=0)] = 0.0


class ModelSpec(_Strict):
    name: Annotated[str, Field(min_length=1)]
    upstream: str | None = None  # the backend's own name, when it differs from what clients send
    price: PriceSpec | None = None  # None: the shipped price table (gateway/prices.yaml), else free


class TimeoutSpec(_Strict):
    connect: Annotated[float, Field(gt=0)] = 5.0
    read: Annotated[float, Field(gt=0)] = 600.0  # longest silence between two bytes of an answer


class CircuitBreakerSpec(_Strict):
    failures: Annotated[int, Field(ge=1)] = 5  # retryable failures in a row that open the circuit
    cooldown_seconds: Annotated[float, Field(gt=0)] = 30.0  # refused this long, then one trial call


class RetriesSpec(_Strict):
    attempts: Annotated[int, Field(ge=1, le=10)] = 2  # tries after the first, before any fallback
    backoff_seconds: Annotated[float, Field(gt=0)] = 0.25  # doubles each time, with jitter
    max_wait_seconds: Annotated[float, Field(gt=0)] = 5.0  # a longer Retry-After: fall back instead


BaseUrl = Annotated[str, Field(pattern=r"^(https?://[^\s]+|\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\})$")]


class SpillWhenSpec(_Strict):
    """Spill-over on the backend's own queue, as its replicas' /metrics say (needs scrape_metrics)."""

    waiting_over: Annotated[int, Field(ge=0)] | None = None  # vllm:num_requests_waiting
    kv_cache_over: Annotated[float, Field(gt=0, le=1)] | None = None  # vllm:kv_cache_usage_perc, 0-1

    @model_validator(mode="after")
    def _not_empty(self) -> SpillWhenSpec:
        if self.waiting_over is None and self.kv_cache_over is None:
            raise ValueError("spill_when needs waiting_over or kv_cache_over")
        return self


class _BackendSpec(_Strict):
    """What every backend has; each kind adds its own keys (providers/registry.py)."""

    kind: str
    base_url: BaseUrl | None = None  # one server; or `replicas`, several serving the same models
    replicas: Annotated[list[BaseUrl], Field(min_length=1, max_length=64)] | None = None
    affinity: Literal["prefix"] | None = None  # same conversation prefix -> same replica (prefix cache)
    affinity_prefix_chars: Annotated[int, Field(ge=1)] = 2048
    affinity_max_load: Annotated[float, Field(ge=1)] = 1.25  # x the mean load, then the ring's next
    health_check_seconds: Annotated[float, Field(gt=0)] = 5.0  # each replica's /health probe
    spill_when: SpillWhenSpec | None = None
    api_key: str | None = None
    models: list[ModelSpec] = []
    discover_models: bool = False  # also serve whatever the backend's GET /models lists
    timeout: TimeoutSpec = TimeoutSpec()
    max_connections: Annotated[int, Field(ge=1)] = 16384  # see providers/http.py HttpConfig
    headers: dict[str, str] = {}
    # Spill-over: once this many requests of this worker run here, router requests decided for this
    # backend go to the router's other target first (when they may fall back and it is not full too).
    max_in_flight: Annotated[int, Field(ge=1)] | None = None
    circuit_breaker: CircuitBreakerSpec | None = None  # none: always call, however often it fails
    retries: RetriesSpec | None = None  # none: a retryable failure goes straight to the fallback

    @model_validator(mode="after")
    def _one_address(self) -> _BackendSpec:
        if self.replicas is not None and "base_url" in self.model_fields_set:
            raise ValueError("give base_url or replicas, not both")
        if self.replicas is None and self.base_url is None:
            raise ValueError("base_url or replicas is required")
        if self.affinity is not None and self.replicas is None:
            raise ValueError("affinity chooses among replicas: give replicas")
        if self.spill_when is not None and not getattr(self, "scrape_metrics", False):
            raise ValueError("spill_when reads the replicas' /metrics: set scrape_metrics: true")
        return self


def _spec_of(kind: Kind) -> type[_BackendSpec]:
    """The config schema of one backend kind: the common keys, and its own from providers/."""
    fields: dict[str, Any] = {"kind": (Literal[kind.name], ...)}
    if kind.base_url is not None:
        fields["base_url"] = (BaseUrl, kind.base_url)
    name = "".join(part.title() for part in kind.name.split("_")) + "Spec"
    # pydantic's stub types the bases as one model type; any models may be combined.
    bases: Any = (_BackendSpec, kind.options)
    spec: type[_BackendSpec] = create_model(name, __base__=bases, **fields)
    return spec


SPECS: dict[str, type[_BackendSpec]] = {name: _spec_of(kind) for name, kind in KINDS.items()}
if TYPE_CHECKING:
    BackendSpec = _BackendSpec
else:
    BackendSpec = Annotated[Union[tuple(SPECS.values())], Field(discriminator="kind")]  # noqa: UP007


def gpu_usd_per_hour(spec: _BackendSpec) -> float:
    """The whole deployment's GPU cost (per-GPU rate x GPUs); 0 for a kind that is not self-hosted."""
    return (getattr(spec, "gpu_usd_per_hour", None) or 0.0) * getattr(spec, "gpus", 1)


class RuleWhenSpec(_Strict):
    """Conditions of a rule (see gateway/rules.py); every one given must hold."""

    tools: bool | None = None
    # "text" also matches a request without response_format
    response_format: (
        Annotated[list[Literal["text", "json_object", "json_schema"]], Field(min_length=1)] | None
    ) = None
    context_tokens_over: Annotated[int, Field(ge=0)] | None = None  # estimated: characters / 4
    max_tokens_over: Annotated[int, Field(ge=0)] | None = None
    turns_over: Annotated[int, Field(ge=0)] | None = None
    header: Annotated[dict[str, str], Field(min_length=1)] | None = None
    api_key: Annotated[list[str], Field(min_length=1)] | None = None  # env references to server.api_keys

    @model_validator(mode="after")
    def _not_empty(self) -> RuleWhenSpec:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a rule needs at least one condition")
        return self


class RuleSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    when: RuleWhenSpec
    route: Literal["local", "api"]
    fallback: bool | None = None  # None: the router's; false keeps a pinned request where it was sent


class ShadowSpec(_Strict):
    """Shadow judging (gateway/shadow.py): after the client has its answer, a sample of a route's
    requests is also sent to the router's other target, and a judge compares the two answers."""

    sample: Annotated[float, Field(gt=0, le=1)]  # the share of eligible requests judged
    judge: str  # "backend/model" that compares the answers, typically the API model
    route: Literal["local", "api"] = "local"  # which route's answers are sampled
    max_usd_per_day: Annotated[float, Field(gt=0)] = 5.0  # the other answers and the judge, per UTC day
    max_concurrent: Annotated[int, Field(ge=1, le=64)] = 4  # shadow jobs at once; more are skipped
    timeout_seconds: Annotated[float, Field(gt=0)] = 120.0  # each shadow call (other answer, judge)
    store: str = "crossover-outcomes.sqlite"  # a file path (SQLite) or a postgresql:// URL
    store_prompts: bool = False  # also keep the prompt text with each outcome (privacy: off)
    exclude_api_keys: list[str] = []  # env references: requests with these keys never leave
    exclude_tools: bool = False  # skip requests that offer tools
    exclude_streams: bool = False  # skip streamed requests


class RouterSpec(_Strict):
    classifier: str = "learned"
    threshold: Annotated[float, Field(ge=0, le=1)] | None = None  # None: the classifier's default
    local: str  # "backend" or "backend/model"
    api: str
    fallback: bool = True  # on a retryable failure of one target, try the other
    rules: list[RuleSpec] = []
    # Hold this share of requests on the API by moving the threshold over the last `share_window`.
    target_api_share: Annotated[float, Field(ge=0, le=1)] | None = None
    share_window: Annotated[int, Field(ge=10, le=100_000)] = 1000
    shadow: ShadowSpec | None = None  # none: no shadow judging (the request path pays nothing)


class KeyScopeSpec(_Strict):
    key: str  # an env reference to one of server.api_keys
    backends: Annotated[list[str], Field(min_length=1)]  # all this key may reach


class LimitsSpec(_Strict):
    """What a key or a team may use (gateway/limits.py); absent: no limit."""

    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None  # prompt + completion tokens
    usd_per_day: Annotated[float, Field(gt=0)] | None = None  # per UTC day
    usd_per_month: Annotated[float, Field(gt=0)] | None = None  # per UTC calendar month


TeamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class KeyLimitsSpec(LimitsSpec):
    key: str  # an env reference to one of server.api_keys
    team: TeamName | None = None  # one of server.teams: its limits hold for all its keys together


class HttpLimits(_Strict):
    """Limits on what one client connection may hold, nginx's defaults. Read at start-up (a reload keeps
    the ones the gateway started with): they belong to the listening server, not to the routing."""

    max_headers: Annotated[int, Field(ge=1)] = 100
    max_header_line_bytes: Annotated[int, Field(ge=256)] = 8 * 1024  # the request line, or one header
    max_header_bytes: Annotated[int, Field(ge=256)] = 32 * 1024  # the request's whole head
    header_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0  # from connecting to the head's end
    body_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0  # longest silence inside a body
    keep_alive_seconds: Annotated[int, Field(ge=1)] = 5  # an idle connection between requests

    @model_validator(mode="after")
    def _line_within_head(self) -> HttpLimits:
        if self.max_header_line_bytes > self.max_header_bytes:
            raise ValueError("max_header_line_bytes must not exceed max_header_bytes")
        return self


class ServerSpec(_Strict):
    max_body_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    api_keys: list[str] = []  # env references; empty means no client authentication
    key_scopes: list[KeyScopeSpec] = []  # keys limited to some backends; others reach all
    key_limits: list[KeyLimitsSpec] = []  # rate limits, budgets and the team of static keys
    teams: dict[TeamName, LimitsSpec] = {}  # limits shared by a team's keys
    watch_config: bool = True  # reload when the file changes (SIGHUP always reloads)
    http: HttpLimits = HttpLimits()
    # Virtual keys and teams (gateway/keys.py): a file path (SQLite) or a postgresql:// URL; none: off.
    keys_store: str | None = None
    admin_key: str | None = None  # an env reference: guards /admin; none: the admin API answers 404


class AccountingSpec(_Strict):
    # "backend/model" every request is also priced at; default: the first router's api target.
    baseline: str | None = None
    # Operating the self-hosted side (people, hosting), for the economics report.
    ops_usd_per_month: Annotated[float, Field(ge=0)] = 0.0


class RedisSpec(_Strict):
    """Where workers and gateway replicas share state (gateway/redis_link.py); absent: each process
    keeps its own, as a single process needs."""

    url: str  # redis://[user:password@]host:port/db, usually an environment reference
    key_prefix: Annotated[str, Field(min_length=1)] = "crossover"
    timeout_ms: Annotated[int, Field(ge=10, le=10_000)] = 250  # past it, Redis counts as down for a call
    retry_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0  # while down, how often to try again


class RequestLogSpec(_Strict):
    """One row per request (gateway/request_log.py), written in batches off the request path."""

    store: str | None = None  # a file path (SQLite) or a postgresql:// URL; none: server.keys_store
    retention_days: Annotated[float, Field(gt=0)] = 90.0
    flush_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    batch_rows: Annotated[int, Field(ge=1, le=100_000)] = 500  # a full batch is written at once
    max_queue: Annotated[int, Field(ge=1, le=10_000_000)] = 50_000  # past it, rows are dropped and counted


class OnRedisDownSpec(_Strict):
    """While Redis is unreachable, limits cannot be checked across replicas: admit (open) or refuse
    with 503 (closed)."""

    rate_limits: Literal["open", "closed"] = "open"
    budgets: Literal["open", "closed"] = "closed"


class LimitsPolicySpec(_Strict):
    on_redis_down: OnRedisDownSpec = OnRedisDownSpec()
    # A request without max_tokens reserves this many output tokens (budgets, tokens per minute).
    default_max_tokens: Annotated[int, Field(ge=1)] = 1024


class ConfigFile(_Strict):
    server: ServerSpec = ServerSpec()
    request_log: RequestLogSpec | None = None
    limits: LimitsPolicySpec = LimitsPolicySpec()
    accounting: AccountingSpec = AccountingSpec()
    redis: RedisSpec | None = None
    backends: Annotated[dict[str, BackendSpec], Field(min_length=1)]
    routers: dict[str, RouterSpec] = {}
    tracing: TracingSpec | None = None  # off unless it or OTEL_EXPORTER_OTLP_ENDPOINT names a collector


# ---- step 2: runtime settings ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    input: float = 0.0  # USD per token
    cached_input: float = 0.0
    output: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    upstream: str
    price: Price


@dataclass(frozen=True, slots=True)
class Retries:
    attempts: int
    backoff: float
    max_wait: float


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    kind: str
    base_url: str
    api_key: str | None
    models: tuple[ModelEntry, ...]
    discover_models: bool
    connect_timeout: float
    read_timeout: float
    max_connections: int
    headers: Mapping[str, str]
    options: Options  # what only this kind has, e.g. anthropic_version
    gpu_usd_per_hour: float = 0.0  # the whole deployment (per-GPU rate x GPUs); 0 when not self-hosted
    scrape_metrics: bool = False
    max_in_flight: int | None = None  # spill-over limit, per worker (with Redis: across all processes)
    circuit_breaker: tuple[int, float] | None = None  # (failures, cooldown seconds)
    retries: Retries | None = None
    replicas: tuple[str, ...] = ()  # several servers of this backend (base_url is the first); () : one
    affinity: Literal["prefix"] | None = None
    affinity_prefix_chars: int = 2048
    affinity_max_load: float = 1.25
    health_check_seconds: float = 5.0
    spill_when: SpillWhen | None = None

    @property
    def replicated(self) -> bool:
        """Balanced over replicas, with their health and queues watched (gateway/replicas.py)."""
        return bool(self.replicas) or self.spill_when is not None


@dataclass(frozen=True, slots=True)
class SpillWhen:
    waiting_over: int | None
    kv_cache_over: float | None


@dataclass(frozen=True, slots=True)
class Target:
    backend: str
    model: str | None  # None: the backend's first model (discovered if need be)


@dataclass(frozen=True, slots=True)
class Shadow:
    sample: float
    judge: Target
    route: Literal["local", "api"]
    max_usd_per_day: float
    max_concurrent: int
    timeout: float
    store: str
    store_prompts: bool
    exclude_api_keys: frozenset[str]
    exclude_tools: bool
    exclude_streams: bool


@dataclass(frozen=True, slots=True)
class Router:
    name: str
    classifier: str
    threshold: float
    local: Target
    api: Target
    fallback: bool
    rules: tuple[Rule, ...] = ()
    target_api_share: float | None = None
    share_window: int = 1000
    shadow: Shadow | None = None


@dataclass(frozen=True, slots=True)
class Redis:
    url: str
    key_prefix: str
    timeout: float  # seconds
    retry_seconds: float


@dataclass(frozen=True, slots=True)
class RequestLog:
    store: str
    retention_days: float
    flush_seconds: float
    batch_rows: int
    max_queue: int


@dataclass(frozen=True, slots=True)
class LimitsPolicy:
    rate_limits_open: bool = True  # while Redis is down
    budgets_open: bool = False
    default_max_tokens: int = 1024


@dataclass(frozen=True, slots=True)
class Settings:
    backends: Mapping[str, Backend]
    routers: Mapping[str, Router]
    max_body_bytes: int
    api_keys: frozenset[str]
    watch_config: bool
    source: Path | None  # the file it came from; None for the embedded default
    baseline: ModelEntry | None = None  # what every request would have cost on the API alone
    ops_usd_per_month: float = 0.0
    key_scopes: Mapping[str, frozenset[str]] = field(default_factory=dict)  # key -> backends it may reach
    http: HttpLimits = field(default_factory=HttpLimits)
    redis: Redis | None = None
    tracing: TracingSettings | None = None
    unset: tuple[str, ...] = ()  # variables the file names that are not set (offline tools only)
    keys_store: str | None = None  # virtual keys and teams; None: only the static keys
    admin_key: str | None = None
    request_log: RequestLog | None = None
    principals: Mapping[str, Principal] = field(default_factory=dict)  # each of api_keys: who it is
    limits: LimitsPolicy = field(default_factory=LimitsPolicy)


_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?\}$")


def _resolve(value: str, path: str, env: Mapping[str, str]) -> str:
    match = _ENV_REF.match(value)
    if not match:
        return value
    name, default = match.group(1), match.group(2)
    if name in env:
        return env[name]
    if default is not None:
        return default
    if isinstance(env, _Env):
        env.missing.append(f"{path}: environment variable {name} is not set")
        return ""
    raise ConfigError(f"{path}: environment variable {name} is not set")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's token: what a header name may be


class _Env(dict[str, str]):
    """The environment, noting every variable the file needs and does not find, so that one error names
    them all (and offline tools, which need no secrets, can go on without them)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(env)
        self.missing: list[str] = []


def _secret(value: str, path: str, env: Mapping[str, str]) -> str:
    if not _ENV_REF.match(value):
        raise ConfigError(
            f"{path}: secrets are not written in the file; use an environment reference like ${{NAME}}"
        )
    return _resolve(value, path, env)


def _header_safe(value: str, path: str) -> str:
    """A text sent in a backend request's head: a line break would split the request, so it is refused
    here, by its path (never its value: it may be a key). A secret mounted from a file often ends with
    one."""
    if breaks_head(value):
        raise ConfigError(
            f"{path}: holds a line break or NUL, which an HTTP header cannot carry "
            "(a secret read from a file often ends with a newline)"
        )
    return value


def _header_name(name: str, path: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ConfigError(f"{path}: {name!r} is not an HTTP header name")
    return name


def _target(spec: str, path: str, backends: Mapping[str, Backend]) -> Target:
    backend, _, model = spec.partition("/")
    if backend not in backends:
        known = ", ".join(sorted(backends))
        raise ConfigError(f"{path}: {spec!r} names no backend (backends: {known})")
    entry = backends[backend]
    if model and not entry.discover_models and model not in {m.name for m in entry.models}:
        raise ConfigError(f"{path}: backend {backend!r} declares no model {model!r}")
    if not model and not entry.models and not entry.discover_models:
        raise ConfigError(f"{path}: backend {backend!r} has no models; name one or set discover_models")
    return Target(backend, model or None)


def _per_token(usd_per_million: float | None) -> float:
    return 0.0 if usd_per_million is None else usd_per_million / 1_000_000


@cache
def price_table() -> dict[str, PriceSpec]:
    raw = yaml.safe_load((Path(__file__).parent / "prices.yaml").read_text(encoding="utf-8"))
    return {name: PriceSpec.model_validate(entry) for name, entry in raw.items()}


def _price(model: ModelSpec) -> Price:
    spec = model.price or price_table().get(model.upstream or model.name) or PriceSpec()
    cached = spec.usd_per_million_cached_input_tokens
    return Price(
        _per_token(spec.usd_per_million_input_tokens),
        _per_token(spec.usd_per_million_input_tokens if cached is None else cached),
        _per_token(spec.usd_per_million_output_tokens),
    )


def build(
    spec: ConfigFile, env: Mapping[str, str], source: Path | None = None, *, require_env: bool = True
) -> Settings:
    """Runtime settings. `require_env=False` (offline tools) builds even with variables unset."""
    noted = _Env(env)
    try:
        settings = _build(spec, noted, source)
    except ConfigError:
        if noted.missing and require_env:  # an error caused by an unset variable's empty value
            raise _unset(noted.missing) from None
        raise
    if noted.missing:
        if require_env:
            raise _unset(noted.missing)
        settings = replace(settings, unset=tuple(noted.missing))
    return settings


def _unset(missing: list[str]) -> ConfigError:
    return ConfigError("; ".join(missing))


def _build(spec: ConfigFile, env: Mapping[str, str], source: Path | None) -> Settings:
    backends: dict[str, Backend] = {}
    for name, b in spec.backends.items():
        if "/" in name:
            raise ConfigError(f"backends.{name}: a backend name cannot contain '/'")
        path = f"backends.{name}"
        models = tuple(ModelEntry(m.name, m.upstream or m.name, _price(m)) for m in b.models)
        own = KINDS[b.kind].options
        urls = (
            [_resolve(u, f"{path}.replicas[{i}]", env).rstrip("/") for i, u in enumerate(b.replicas)]
            if b.replicas is not None
            else [_resolve(b.base_url or "", f"{path}.base_url", env).rstrip("/")]
        )
        if len(set(urls)) != len(urls):
            raise ConfigError(f"{path}.replicas: each replica's URL must differ")
        backends[name] = Backend(
            name=name,
            kind=b.kind,
            base_url=urls[0],
            api_key=_header_safe(_secret(b.api_key, f"{path}.api_key", env), f"{path}.api_key") or None
            if b.api_key
            else None,
            models=models,
            discover_models=b.discover_models,
            connect_timeout=b.timeout.connect,
            read_timeout=b.timeout.read,
            max_connections=b.max_connections,
            headers={
                _header_name(k, f"{path}.headers"): _header_safe(
                    _resolve(v, f"{path}.headers.{k}", env), f"{path}.headers.{k}"
                )
                for k, v in b.headers.items()
            },
            options=own.model_validate(b.model_dump(include=set(own.model_fields))),
            gpu_usd_per_hour=gpu_usd_per_hour(b),
            scrape_metrics=getattr(b, "scrape_metrics", False),
            max_in_flight=b.max_in_flight,
            circuit_breaker=(
                (b.circuit_breaker.failures, b.circuit_breaker.cooldown_seconds)
                if b.circuit_breaker
                else None
            ),
            retries=(
                Retries(b.retries.attempts, b.retries.backoff_seconds, b.retries.max_wait_seconds)
                if b.retries
                else None
            ),
            replicas=tuple(urls) if b.replicas is not None else (),
            affinity=b.affinity,
            affinity_prefix_chars=b.affinity_prefix_chars,
            affinity_max_load=b.affinity_max_load,
            health_check_seconds=b.health_check_seconds,
            spill_when=(
                SpillWhen(b.spill_when.waiting_over, b.spill_when.kv_cache_over) if b.spill_when else None
            ),
        )
    keys = frozenset(_secret(k, f"server.api_keys[{i}]", env) for i, k in enumerate(spec.server.api_keys))
    routers: dict[str, Router] = {}
    for name, r in spec.routers.items():
        path = f"routers.{name}"
        threshold = _threshold(r, f"{path}.classifier")
        routers[name] = Router(
            name=name,
            classifier=r.classifier,
            threshold=threshold,
            local=_target(r.local, f"{path}.local", backends),
            api=_target(r.api, f"{path}.api", backends),
            fallback=r.fallback,
            rules=tuple(_rule(rule, f"{path}.rules[{i}]", keys, env) for i, rule in enumerate(r.rules)),
            target_api_share=r.target_api_share,
            share_window=r.share_window,
            shadow=_shadow(r.shadow, f"{path}.shadow", backends, keys, env) if r.shadow else None,
        )
        names = [rule.name for rule in r.rules]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}.rules: rule names must be unique")
    baseline = _baseline(spec, routers, backends)
    scopes = _key_scopes(spec.server.key_scopes, keys, backends, env)
    store = spec.server.keys_store
    keys_store = _resolve(store, "server.keys_store", env) or None if store is not None else None
    return Settings(
        backends=backends,
        routers=routers,
        max_body_bytes=spec.server.max_body_bytes,
        api_keys=frozenset(k for k in keys if k),
        watch_config=spec.server.watch_config,
        source=source,
        baseline=baseline,
        ops_usd_per_month=spec.accounting.ops_usd_per_month,
        key_scopes=scopes,
        http=spec.server.http,
        redis=_redis(spec.redis, env) if spec.redis is not None else None,
        tracing=_tracing(spec.tracing, env),
        keys_store=keys_store,
        admin_key=_admin_key(spec.server.admin_key, keys, env),
        request_log=_request_log(spec.request_log, keys_store, env),
        principals=_principals(spec.server, keys, scopes, env),
        limits=LimitsPolicy(
            rate_limits_open=spec.limits.on_redis_down.rate_limits == "open",
            budgets_open=spec.limits.on_redis_down.budgets == "open",
            default_max_tokens=spec.limits.default_max_tokens,
        ),
    )


def _admin_key(value: str | None, keys: frozenset[str], env: Mapping[str, str]) -> str | None:
    if value is None:
        return None
    key = _secret(value, "server.admin_key", env)
    if not key:
        return None
    if key in keys:
        raise ConfigError("server.admin_key: must differ from every one of server.api_keys")
    return key


def _request_log(
    spec: RequestLogSpec | None, keys_store: str | None, env: Mapping[str, str]
) -> RequestLog | None:
    if spec is None:
        return None
    store = _resolve(spec.store, "request_log.store", env) if spec.store is not None else keys_store
    if not store:
        raise ConfigError(
            "request_log.store: give a file path or postgresql:// URL (or set server.keys_store)"
        )
    return RequestLog(store, spec.retention_days, spec.flush_seconds, spec.batch_rows, spec.max_queue)


def _limits(spec: LimitsSpec) -> Limits:
    return Limits(spec.requests_per_minute, spec.tokens_per_minute, spec.usd_per_day, spec.usd_per_month)


def static_key_id(key: str) -> str:
    """A static key's id: stable across restarts and replicas, safe to log, not the key. 32 bits of its
    hash: enough to tell a config's few keys apart, too few to help test guesses of a weak key offline."""
    return "static-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _principals(
    server: ServerSpec, keys: frozenset[str], scopes: Mapping[str, frozenset[str]], env: Mapping[str, str]
) -> dict[str, Principal]:
    """Who each static key is: the backends its `key_scopes` entry allows, the team and limits of its
    `key_limits` entry."""
    limited: dict[str, Principal] = {}
    for i, entry in enumerate(server.key_limits):
        path = f"server.key_limits[{i}]"
        key = _secret(entry.key, f"{path}.key", env)
        if not key or key not in keys:
            raise ConfigError(f"{path}.key: must be one of server.api_keys")
        if key in limited:
            raise ConfigError(f"{path}.key: this key already has limits")
        if entry.team is not None and entry.team not in server.teams:
            raise ConfigError(f"{path}.team: {entry.team!r} is not one of server.teams")
        team = server.teams[entry.team] if entry.team is not None else None
        limited[key] = Principal(
            key_id=static_key_id(key),
            team=entry.team,
            key_limits=_limits(entry),
            team_limits=_limits(team) if team is not None else NO_LIMITS,
        )
    return {
        key: replace(limited.get(key) or Principal(key_id=static_key_id(key)), backends=scopes.get(key))
        for key in keys
        if key
    }


def _redis(spec: RedisSpec, env: Mapping[str, str]) -> Redis:
    url = _resolve(spec.url, "redis.url", env)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url: expected a redis://, rediss:// or unix:// URL")
    return Redis(url, spec.key_prefix, spec.timeout_ms / 1000, spec.retry_seconds)


def _tracing(spec: TracingSpec | None, env: Mapping[str, str]) -> TracingSettings | None:
    settings = tracing_settings(spec, env)
    if settings is not None and (why := sdk_missing()) is not None:
        raise ConfigError(f"tracing: {why}")
    return settings


def _key_scopes(
    specs: list[KeyScopeSpec], keys: frozenset[str], backends: Mapping[str, Backend], env: Mapping[str, str]
) -> dict[str, frozenset[str]]:
    scopes: dict[str, frozenset[str]] = {}
    for i, scope in enumerate(specs):
        path = f"server.key_scopes[{i}]"
        key = _secret(scope.key, f"{path}.key", env)
        if not key or key not in keys:
            raise ConfigError(f"{path}.key: must be one of server.api_keys")
        for j, name in enumerate(scope.backends):
            if name not in backends:
                raise ConfigError(f"{path}.backends[{j}]: {name!r} names no backend")
        scopes[key] = frozenset(scope.backends)
    return scopes


def _threshold(router: RouterSpec, path: str) -> float:
    """The router's threshold; without one in the file, its classifier's own default (see
    `classifier.default_threshold`: the registered ones only read a small file)."""
    from classifier import classifier_factory, default_threshold

    try:
        factory = classifier_factory(router.classifier)
        return router.threshold if router.threshold is not None else default_threshold(factory)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except Exception as exc:  # a user's classifier failing to build
        raise ConfigError(f"{path}: cannot build {router.classifier!r}: {exc!r}") from None


def _shadow(
    spec: ShadowSpec, path: str, backends: Mapping[str, Backend], keys: frozenset[str], env: Mapping[str, str]
) -> Shadow:
    excluded = frozenset(
        _secret(k, f"{path}.exclude_api_keys[{i}]", env) for i, k in enumerate(spec.exclude_api_keys)
    )
    if not excluded - {""} <= keys:
        raise ConfigError(f"{path}.exclude_api_keys: every key must also be one of server.api_keys")
    return Shadow(
        sample=spec.sample,
        judge=_target(spec.judge, f"{path}.judge", backends),
        route=spec.route,
        max_usd_per_day=spec.max_usd_per_day,
        max_concurrent=spec.max_concurrent,
        timeout=spec.timeout_seconds,
        store=_resolve(spec.store, f"{path}.store", env),
        store_prompts=spec.store_prompts,
        exclude_api_keys=excluded - {""},
        exclude_tools=spec.exclude_tools,
        exclude_streams=spec.exclude_streams,
    )


def _rule(spec: RuleSpec, path: str, keys: frozenset[str], env: Mapping[str, str]) -> Rule:
    when = spec.when
    api_keys = None
    if when.api_key is not None:
        resolved = (_secret(k, f"{path}.when.api_key[{i}]", env) for i, k in enumerate(when.api_key))
        api_keys = frozenset(k for k in resolved if k)
        if not api_keys <= keys:
            raise ConfigError(f"{path}.when.api_key: every key must also be one of server.api_keys")
    return Rule(
        name=spec.name,
        route=spec.route,
        fallback=spec.fallback,
        tools=when.tools,
        response_format=frozenset(when.response_format) if when.response_format is not None else None,
        context_tokens_over=when.context_tokens_over,
        max_tokens_over=when.max_tokens_over,
        turns_over=when.turns_over,
        headers=tuple((k.lower(), v) for k, v in when.header.items()) if when.header is not None else None,
        api_keys=api_keys,
    )


def _baseline(
    spec: ConfigFile, routers: Mapping[str, Router], backends: Mapping[str, Backend]
) -> ModelEntry | None:
    if spec.accounting.baseline is not None:
        target = _target(spec.accounting.baseline, "accounting.baseline", backends)
    elif routers:
        target = next(iter(routers.values())).api
    else:
        return None
    entries = backends[target.backend].models
    return next((m for m in entries if target.model in (None, m.name)), None)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse(data: Any) -> ConfigFile:
    if not isinstance(data, dict):
        raise ConfigError("(top level): the config must be a mapping")
    try:
        return ConfigFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            # Drop pydantic's internal steps (validators, the union's tag) from the key path.
            loc = tuple(
                p
                for p in err["loc"]
                if not (isinstance(p, str) and (p.startswith("function-") or p in KINDS))
            )
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "kind")
            problems.append(
                f"{_key_path(loc)}: {err['msg']}".replace("Extra inputs are not permitted", "unknown key")
            )
        raise ConfigError("; ".join(problems)) from None


def load(path: str | Path, env: Mapping[str, str] | None = None, *, require_env: bool = True) -> Settings:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return build(parse(data), os.environ if env is None else env, source=path, require_env=require_env)


def embedded_default(env: Mapping[str, str] | None = None) -> Settings:
    """What `crossover serve` runs without a file: a local vLLM, OpenAI, and the router model `auto`."""
    env = os.environ if env is None else env
    local_model = env.get("CROSSOVER_LOCAL_MODEL")
    api_model = env.get("CROSSOVER_API_MODEL", "gpt-4o")
    spec = ConfigFile.model_validate(
        {
            "backends": {
                "local": {
                    "kind": "openai_compatible",
                    "base_url": "${CROSSOVER_LOCAL_BASE_URL:-http://127.0.0.1:8000/v1}",
                    "models": [{"name": local_model}] if local_model else [],
                    "discover_models": not local_model,
                },
                "openai": {
                    "kind": "openai_compatible",
                    "base_url": "${OPENAI_BASE_URL:-https://api.openai.com/v1}",
                    "api_key": "${OPENAI_API_KEY:-}",
                    "models": [{"name": api_model}],
                },
            },
            "routers": {
                "auto": {
                    "local": "local",
                    "api": f"openai/{api_model}",
                    # What open models still do worst goes to the API without asking the classifier.
                    "rules": [
                        {"name": "tools", "when": {"tools": True}, "route": "api"},
                        {"name": "strict-json", "when": {"response_format": ["json_schema"]}, "route": "api"},
                        {"name": "long-context", "when": {"context_tokens_over": 24_000}, "route": "api"},
                    ],
                }
            },
            "server": {"watch_config": False},
        }
    )
    return build(spec, env)
