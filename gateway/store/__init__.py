"""The outcome store: one row per shadow-judged request (gateway/shadow.py), behind one small interface.

`open_store(url)` picks the implementation: a file path (or `sqlite:///path`) is SQLite, embedded and
the default; a `postgresql://` URL is PostgreSQL, for several gateway replicas writing one table. Both
apply the same versioned migrations (`MIGRATIONS`, recorded in `schema_version`) on first use, so a
store written by an older gateway is brought up to date, never rewritten.

This module is the one reader of the store's format: the export, calibration and the gateway all go
through `OutcomeStore`.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Any, Protocol

# Ordered: migration N (1-based) brings a store from version N-1 to N. Never edit a released one;
# add the next. Plain SQL that SQLite and PostgreSQL both read (`DOUBLE PRECISION` is REAL to SQLite).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE outcomes (
            id TEXT PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            router TEXT NOT NULL,
            classifier TEXT NOT NULL,
            classifier_version TEXT,
            score DOUBLE PRECISION,
            threshold DOUBLE PRECISION,
            route TEXT NOT NULL,
            local_model TEXT NOT NULL,
            api_model TEXT NOT NULL,
            verdict TEXT NOT NULL,
            verdict_local_first TEXT NOT NULL,
            verdict_api_first TEXT NOT NULL,
            judge TEXT NOT NULL,
            local_usd DOUBLE PRECISION NOT NULL,
            api_usd DOUBLE PRECISION NOT NULL,
            judge_usd DOUBLE PRECISION NOT NULL,
            local_input_tokens BIGINT NOT NULL,
            local_output_tokens BIGINT NOT NULL,
            api_input_tokens BIGINT NOT NULL,
            api_output_tokens BIGINT NOT NULL,
            prompt_sha256 TEXT NOT NULL,
            prompt TEXT
        )""",
        "CREATE INDEX outcomes_at ON outcomes (at)",
    ),
    # the request's cues (classifier/cues.py) as a JSON object: what retraining needs when the prompt
    # itself is not kept
    ("ALTER TABLE outcomes ADD COLUMN features TEXT",),
    # Virtual keys and teams (gateway/keys.py): scope and limits as JSON objects; a key is kept as the
    # SHA-256 of its text, never the text. `key_changes` counts writes, so gateways notice them cheaply.
    (
        """CREATE TABLE teams (
            name TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            local_only INTEGER NOT NULL,
            limits TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE keys (
            id TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            team TEXT NOT NULL REFERENCES teams (name),
            name TEXT NOT NULL,
            scope TEXT NOT NULL,
            local_only INTEGER NOT NULL,
            limits TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION,
            expires_at DOUBLE PRECISION
        )""",
        "CREATE TABLE key_changes (version BIGINT NOT NULL)",
        "INSERT INTO key_changes (version) VALUES (0)",
    ),
    # The request log (gateway/request_log.py): one row per request, no prompt text, no key text.
    (
        """CREATE TABLE request_log (
            at DOUBLE PRECISION NOT NULL,
            request_id TEXT,
            key_id TEXT,
            team TEXT,
            router TEXT,
            route TEXT NOT NULL,
            reason TEXT,
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            input_tokens BIGINT,
            output_tokens BIGINT,
            cached_tokens BIGINT,
            usd DOUBLE PRECISION,
            baseline_usd DOUBLE PRECISION,
            seconds DOUBLE PRECISION,
            ttft_seconds DOUBLE PRECISION,
            status TEXT NOT NULL
        )""",
        "CREATE INDEX request_log_at ON request_log (at)",
        "CREATE INDEX request_log_team ON request_log (team, at)",
    ),
    # the endpoint each request asked (chat, messages, responses, embeddings)
    ("ALTER TABLE request_log ADD COLUMN path TEXT",),
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Judged:
    """One judged request. `verdict` combines the two orders; the judge's own verdict in each order is
    kept beside it. `prompt` (the request's messages as JSON) only with `shadow.store_prompts`;
    `features` (the request's cues as a JSON object, counts and lengths, no text) always."""

    id: str
    at: float  # Unix time
    router: str
    classifier: str
    classifier_version: str | None
    score: float | None
    threshold: float | None
    route: str  # the route that answered the client
    local_model: str
    api_model: str
    verdict: str
    verdict_local_first: str
    verdict_api_first: str
    judge: str
    local_usd: float
    api_usd: float
    judge_usd: float
    local_input_tokens: int
    local_output_tokens: int
    api_input_tokens: int
    api_output_tokens: int
    prompt_sha256: str
    prompt: str | None = None
    features: str | None = None


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Judged))


def insert_sql(placeholder: str) -> str:
    return f"INSERT INTO outcomes ({', '.join(COLUMNS)}) VALUES ({', '.join([placeholder] * len(COLUMNS))})"


SELECT_SQL = f"SELECT {', '.join(COLUMNS)} FROM outcomes ORDER BY at, id"


def values(row: Judged) -> tuple[Any, ...]:
    return astuple(row)


def judged(values: tuple[Any, ...]) -> Judged:
    return Judged(*values)


class StoreError(Exception):
    """The store cannot be opened, migrated, written or read."""


class OutcomeStore(Protocol):
    async def add(self, row: Judged) -> None: ...

    async def rows(self) -> list[Judged]: ...

    async def close(self) -> None: ...


Params = tuple[Any, ...]


class SqlStore(OutcomeStore, Protocol):
    """The same store, for the other tables (keys and teams, the request log): SQL written with `?`
    placeholders, which PostgreSQL's implementation turns into its own. `write` runs its statements
    in one transaction, each with every parameter row given for it."""

    async def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]: ...

    async def write(self, *statements: tuple[str, list[Params]]) -> list[int]: ...


def open_store(url: str) -> SqlStore:
    """The store at `url`; nothing is opened or created until it is first used."""
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url)
    from gateway.store.sqlite import SqliteStore

    return SqliteStore(url.removeprefix("sqlite://"))
