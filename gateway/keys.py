"""Virtual keys and teams, kept in the store (gateway/store/): create, list, rotate, revoke.

A key's text is `sk-cx-` and 43 URL-safe characters from `secrets` (256 bits); the store keeps only
its SHA-256. A fast hash is right here, unlike for passwords: with 256 bits of entropy nobody can
search the key space, so a slow hash (bcrypt, argon2) would only add milliseconds to every request.
The text is returned once, by `create_key` and `rotate_key`, and never stored or logged.

Every write also bumps `key_changes.version`, so a gateway notices any change with one tiny query
(gateway/keyring.py). The CLI (`crossover keys|teams`) and the admin API (`/admin`) both call here.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.principal import NO_LIMITS, Limits, Principal
from gateway.store import Params, SqlStore

KEY_PREFIX = "sk-cx-"
KEY_TEXT = re.compile(r"^sk-cx-[A-Za-z0-9_-]{43}$")
TEAM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # also a metric label: short and plain
_BUMP = ("UPDATE key_changes SET version = version + 1", [()])


class KeyStoreError(ValueError):
    """A request to the key store that cannot be done (unknown team or key, a bad name); the
    message says why and is safe to show."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What may be reached; None: anything."""

    routers: frozenset[str] | None = None
    backends: frozenset[str] | None = None
    models: frozenset[str] | None = None

    def to_json(self) -> str:
        return json.dumps({k: sorted(v) if v is not None else None for k, v in self._items()})

    def _items(self) -> list[tuple[str, frozenset[str] | None]]:
        return [("routers", self.routers), ("backends", self.backends), ("models", self.models)]

    @classmethod
    def from_json(cls, text: str) -> Scope:
        data = json.loads(text)
        return cls(*(frozenset(data[k]) if data.get(k) is not None else None for k in cls.__slots__))

    def public(self) -> dict[str, list[str] | None]:
        return {k: sorted(v) if v is not None else None for k, v in self._items()}


def limits_json(limits: Limits) -> str:
    return json.dumps(asdict(limits))


def limits_of(text: str) -> Limits:
    data = json.loads(text)
    return Limits(**{k: data.get(k) for k in Limits.__slots__})


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    scope: Scope = field(default_factory=Scope)
    local_only: bool = False
    limits: Limits = NO_LIMITS
    created: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.scope.public(),
            "local_only": self.local_only,
            "limits": asdict(self.limits),
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class Key:
    """A key as stored: its id and settings, never its text."""

    id: str
    team: str
    name: str
    scope: Scope = field(default_factory=Scope)
    local_only: bool = False
    limits: Limits = NO_LIMITS
    created: float = 0.0
    revoked_at: float | None = None
    expires_at: float | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team": self.team,
            "name": self.name,
            **self.scope.public(),
            "local_only": self.local_only,
            "limits": asdict(self.limits),
            "created": self.created,
            "revoked_at": self.revoked_at,
            "expires_at": self.expires_at,
        }


def key_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_key_text() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _narrower(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """What both allow."""
    if a is None:
        return b
    return a if b is None else a & b


def principal_of(key: Key, team: Team) -> Principal:
    """Who a request with this key is: the key's and its team's scopes both hold, and either one's
    `local_only` keeps the data local."""
    return Principal(
        key_id=key.id,
        team=team.name,
        routers=_narrower(key.scope.routers, team.scope.routers),
        backends=_narrower(key.scope.backends, team.scope.backends),
        models=_narrower(key.scope.models, team.scope.models),
        local_only=key.local_only or team.local_only,
        key_limits=key.limits,
        team_limits=team.limits,
    )


_TEAM_COLUMNS = "name, scope, local_only, limits, created"
_KEY_COLUMNS = "id, team, name, scope, local_only, limits, created, revoked_at, expires_at"


def _team(row: tuple[Any, ...]) -> Team:
    name, scope, local_only, limits, created = row
    return Team(name, Scope.from_json(scope), bool(local_only), limits_of(limits), float(created))


def _key(row: tuple[Any, ...]) -> Key:
    id_, team, name, scope, local_only, limits, created, revoked_at, expires_at = row
    return Key(
        id_, team, name, Scope.from_json(scope), bool(local_only), limits_of(limits), float(created),
        revoked_at, expires_at,
    )  # fmt: skip


class Keys:
    """Keys and teams in one store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # ---- teams ----

    async def teams(self) -> list[Team]:
        rows = await self.store.query(f"SELECT {_TEAM_COLUMNS} FROM teams ORDER BY name")
        return [_team(r) for r in rows]

    async def team(self, name: str) -> Team:
        rows = await self.store.query(f"SELECT {_TEAM_COLUMNS} FROM teams WHERE name = ?", (name,))
        if not rows:
            raise KeyStoreError(f"no team named {name!r}")
        return _team(rows[0])

    async def create_team(self, team: Team) -> Team:
        if not TEAM_NAME.match(team.name):
            raise KeyStoreError("a team name is 1 to 64 letters, digits, '_', '.' or '-'")
        if await self.store.query("SELECT name FROM teams WHERE name = ?", (team.name,)):
            raise KeyStoreError(f"team {team.name!r} exists already")
        created = Team(team.name, team.scope, team.local_only, team.limits, time.time())
        await self.store.write(
            (f"INSERT INTO teams ({_TEAM_COLUMNS}) VALUES (?, ?, ?, ?, ?)", [_team_params(created)]), _BUMP
        )
        return created

    async def update_team(self, team: Team) -> Team:
        await self.team(team.name)
        params = (team.scope.to_json(), int(team.local_only), limits_json(team.limits), team.name)
        sql = "UPDATE teams SET scope = ?, local_only = ?, limits = ? WHERE name = ?"
        await self.store.write((sql, [params]), _BUMP)
        return await self.team(team.name)

    # ---- keys ----

    async def keys(self, team: str | None = None) -> list[Key]:
        where, params = ("WHERE team = ?", (team,)) if team is not None else ("", ())
        rows = await self.store.query(f"SELECT {_KEY_COLUMNS} FROM keys {where} ORDER BY created, id", params)
        return [_key(r) for r in rows]

    async def key(self, key_id: str) -> Key:
        rows = await self.store.query(f"SELECT {_KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,))
        if not rows:
            raise KeyStoreError(f"no key with id {key_id!r}")
        return _key(rows[0])

    async def create_key(self, key: Key) -> tuple[Key, str]:
        """The key as stored, and its text: shown once, never kept."""
        await self.team(key.team)
        text = new_key_text()
        created = Key(
            "key_" + secrets.token_hex(8), key.team, key.name, key.scope, key.local_only, key.limits,
            time.time(), None, key.expires_at,
        )  # fmt: skip
        params = (created.id, key_hash(text), *_key_params(created))
        sql = f"INSERT INTO keys (id, hash, {_KEY_COLUMNS[4:]}) VALUES ({', '.join(['?'] * 10)})"
        await self.store.write((sql, [params]), _BUMP)
        return created, text

    async def rotate_key(self, key_id: str) -> tuple[Key, str]:
        """A new text for the key: the old one stops working, everything else stays."""
        key = await self.key(key_id)
        if key.revoked_at is not None:
            raise KeyStoreError(f"key {key_id!r} is revoked")
        text = new_key_text()
        await self.store.write(("UPDATE keys SET hash = ? WHERE id = ?", [(key_hash(text), key_id)]), _BUMP)
        return key, text

    async def revoke_key(self, key_id: str) -> Key:
        key = await self.key(key_id)
        if key.revoked_at is None:
            sql = "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
            await self.store.write((sql, [(time.time(), key_id)]), _BUMP)
        return await self.key(key_id)

    # ---- what gateways read ----

    async def version(self) -> int:
        rows = await self.store.query("SELECT version FROM key_changes")
        return int(rows[0][0]) if rows else 0

    async def principals(self) -> dict[str, tuple[Principal, float | None]]:
        """Every usable key by its hash: who it is, and when it expires (None: never)."""
        teams = {t.name: t for t in await self.teams()}
        rows = await self.store.query(f"SELECT hash, {_KEY_COLUMNS} FROM keys WHERE revoked_at IS NULL")
        found: dict[str, tuple[Principal, float | None]] = {}
        for row in rows:
            key = _key(row[1:])
            found[row[0]] = (principal_of(key, teams[key.team]), key.expires_at)
        return found


def _team_params(team: Team) -> Params:
    return (team.name, team.scope.to_json(), int(team.local_only), limits_json(team.limits), team.created)


def _key_params(key: Key) -> Params:
    return (
        key.team, key.name, key.scope.to_json(), int(key.local_only), limits_json(key.limits), key.created,
        key.revoked_at, key.expires_at,
    )  # fmt: skip
