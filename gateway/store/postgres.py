"""The outcome store in PostgreSQL, for several gateway replicas writing one table.

One connection per gateway worker, opened on first use and again after it breaks; writes are few (one
per judged request), so a pool would buy nothing. Migrations run under an advisory lock, so replicas
starting together apply each one once."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from gateway.store import MIGRATIONS, SELECT_SQL, Judged, Params, StoreError, insert_sql, judged, values

_MIGRATION_LOCK = 0x63726F73  # any constant shared by every replica ("cros")


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._db: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        if self._db is None or self._db.closed or self._db.broken:
            db = await psycopg.AsyncConnection.connect(self.url, connect_timeout=10)
            try:
                await migrate(db)
            except BaseException:
                await db.close()
                raise
            self._db = db
        return self._db

    async def add(self, row: Judged) -> None:
        async with self._lock:
            try:
                db = await self._connect()
                async with db.transaction():
                    await db.execute(insert_sql("%s"), values(row))
            except psycopg.Error as exc:
                raise StoreError(f"outcome store (PostgreSQL): {exc}") from exc

    async def rows(self) -> list[Judged]:
        async with self._lock:
            try:
                db = await self._connect()
                async with db.cursor() as cursor:
                    await cursor.execute(SELECT_SQL)
                    found = [judged(tuple(r)) for r in await cursor.fetchall()]
                await db.commit()
                return found
            except psycopg.Error as exc:
                raise StoreError(f"outcome store (PostgreSQL): {exc}") from exc

    async def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            try:
                db = await self._connect()
                async with db.cursor() as cursor:
                    await cursor.execute(_pg(sql), params)
                    found = [tuple(r) for r in await cursor.fetchall()]
                await db.commit()
                return found
            except psycopg.Error as exc:
                raise StoreError(f"store (PostgreSQL): {exc}") from exc

    async def write(self, *statements: tuple[str, list[Params]]) -> list[int]:
        async with self._lock:
            try:
                db = await self._connect()
                counts = []
                async with db.transaction(), db.cursor() as cursor:
                    for sql, rows in statements:
                        await cursor.executemany(_pg(sql), rows)
                        counts.append(cursor.rowcount)
                return counts
            except psycopg.Error as exc:
                raise StoreError(f"store (PostgreSQL): {exc}") from exc

    async def close(self) -> None:
        async with self._lock:
            if self._db is not None:
                await self._db.close()
                self._db = None


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


async def migrate(db: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
    """Apply the migrations the database lacks, in one transaction; the version it is at now."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        cursor = await db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        found = await cursor.fetchone()
        current = int(found[0]) if found is not None else 0  # type: ignore[call-overload]
        for version in range(current, len(MIGRATIONS)):
            for statement in MIGRATIONS[version]:
                await db.execute(statement)
            await db.execute("INSERT INTO schema_version (version) VALUES (%s)", (version + 1,))
    return max(current, len(MIGRATIONS))
