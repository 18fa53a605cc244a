"""The embedded outcome store: one SQLite file, created (with its folder) on first use.

sqlite3 blocks, so every call runs in a thread; one connection, used by one thread at a time."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from gateway.store import MIGRATIONS, SELECT_SQL, Judged, Params, StoreError, insert_sql, judged, values


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
                migrate(db)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"outcome store {self.path}: {exc}") from exc
            self._db = db
        return self._db

    def _add(self, row: Judged) -> None:
        with self._lock:
            db = self._connect()
            try:
                db.execute(insert_sql("?"), values(row))
            except sqlite3.Error as exc:
                raise StoreError(f"outcome store {self.path}: {exc}") from exc

    def _rows(self) -> list[Judged]:
        with self._lock:
            try:
                return [judged(tuple(r)) for r in self._connect().execute(SELECT_SQL)]
            except sqlite3.Error as exc:
                raise StoreError(f"outcome store {self.path}: {exc}") from exc

    def _query(self, sql: str, params: Params) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return [tuple(r) for r in self._connect().execute(sql, params)]
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc

    def _write(self, statements: tuple[tuple[str, list[Params]], ...]) -> list[int]:
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    counts = [db.executemany(sql, rows).rowcount for sql, rows in statements]
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                return counts
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def add(self, row: Judged) -> None:
        await asyncio.to_thread(self._add, row)

    async def rows(self) -> list[Judged]:
        return await asyncio.to_thread(self._rows)

    async def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self._query, sql, params)

    async def write(self, *statements: tuple[str, list[Params]]) -> list[int]:
        return await asyncio.to_thread(self._write, statements)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)


def migrate(db: sqlite3.Connection) -> int:
    """Apply the migrations the file lacks, each in its own transaction; the version it is at now.
    `BEGIN IMMEDIATE` takes the write lock first, so two workers opening a new file migrate it once."""
    db.isolation_level = None  # explicit transactions here; a lone INSERT later commits by itself
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            (current,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            if current >= len(MIGRATIONS):
                db.execute("COMMIT")
                return int(current)
            for statement in MIGRATIONS[current]:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (current + 1,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
