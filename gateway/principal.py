"""Who a request is from: the gateway key it authenticated with, and that key's team.

Authentication turns a key (static in the config, or a virtual key in the store) into a `Principal`;
everything after reads the principal, never the key itself."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Limits:
    """What a key or a team may use; None: no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str  # stable and safe to log or label: never the key's text
    team: str | None = None
    routers: frozenset[str] | None = None  # routers it may use; None: any
    backends: frozenset[str] | None = None  # backends it may reach; None: any
    models: frozenset[str] | None = None  # concrete models it may ask for; None: any
    local_only: bool = False  # its data never goes to an external API (route, fallback, shadow)
    key_limits: Limits = field(default=NO_LIMITS)
    team_limits: Limits = field(default=NO_LIMITS)
    # Worked out once, not per request (comparing Limits, hashing all fields: ~1 us a request).
    limited: bool = field(default=False, init=False, repr=False, compare=False)  # has any limits
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "limited", self.key_limits != NO_LIMITS or self.team_limits != NO_LIMITS)
        fields = (self.key_id, self.team, self.routers, self.backends, self.models, self.local_only)
        object.__setattr__(self, "_hash", hash((*fields, self.key_limits, self.team_limits)))

    def __hash__(self) -> int:
        return self._hash
