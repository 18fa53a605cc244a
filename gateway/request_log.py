"""The request log: one row per request, for billing and audits, written off the request path.

A request only appends its row to an in-memory queue (no I/O, no await); a background task writes
the queue to the store every `flush_seconds`, or as soon as `batch_rows` are waiting, in one
transaction. The queue is bounded: when the store falls behind or is down, new rows are dropped and
counted (`crossover_request_log_rows_total{result="dropped"}`) rather than grow memory without end.
Rows older than `retention_days` are deleted once an hour. A row holds names, numbers and the key's
id: never the prompt, the answer or the key's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import astuple, dataclass, fields

from gateway.config import RequestLog as Settings
from gateway.recorder import Recorder
from gateway.store import SqlStore, StoreError, open_store

PRUNE_EVERY_SECONDS = 3600.0
log = logging.getLogger("crossover")


@dataclass(frozen=True, slots=True)
class Row:
    at: float  # Unix time the request arrived
    request_id: str | None
    key_id: str | None
    team: str | None
    router: str | None  # the router model asked for; None for a concrete model
    route: str  # local, api, direct, or none (refused before routing)
    reason: str | None
    backend: str
    model: str
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    usd: float | None
    baseline_usd: float | None
    seconds: float
    ttft_seconds: float | None
    status: str  # 2xx, 4xx, 5xx or cancelled
    path: str | None  # the endpoint asked, e.g. /v1/messages (None in rows written before it was kept)


COLUMNS = tuple(f.name for f in fields(Row))
INSERT_SQL = f"INSERT INTO request_log ({', '.join(COLUMNS)}) VALUES ({', '.join(['?'] * len(COLUMNS))})"
SELECT_SQL = f"SELECT {', '.join(COLUMNS)} FROM request_log"


async def read_rows(store: SqlStore, since: float = 0.0) -> list[Row]:
    """The rows from `since` (Unix time) on, oldest first: the one reader of the log's format."""
    found = await store.query(f"{SELECT_SQL} WHERE at >= ? ORDER BY at", (since,))
    return [Row(*r) for r in found]


class RequestLog:
    def __init__(self, settings: Settings, recorder: Recorder) -> None:
        self.settings = settings
        self.store = open_store(settings.store)
        self._recorder = recorder
        self._queue: deque[Row] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = 0.0
        self._failing = False  # said once in the log until a write succeeds again

    def add(self, row: Row) -> None:
        """Queue a row; never waits. A full queue drops it (counted)."""
        if len(self._queue) >= self.settings.max_queue:
            self._recorder.request_log("dropped", 1)
            return
        self._queue.append(row)
        if len(self._queue) >= self.settings.batch_rows:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_seconds)
            self._wake.clear()
            await self.flush()
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY_SECONDS:
                await self.prune()

    async def flush(self) -> None:
        """Write what is queued, a batch at a time. Rows a failed write held are lost (counted), so
        a broken store cannot hold memory either."""
        while self._queue:
            count = min(len(self._queue), self.settings.batch_rows)
            batch = [astuple(self._queue.popleft()) for _ in range(count)]
            try:
                await self.store.write((INSERT_SQL, batch))
            except StoreError as exc:
                self._recorder.request_log("failed", count)
                if not self._failing:
                    self._failing = True
                    log.error("request log: rows not written (counted until it is back): %s", exc)
                return
            self._recorder.request_log("written", count)
            if self._failing:
                self._failing = False
                log.warning("request log: the store takes rows again")

    async def prune(self) -> None:
        self._pruned_at = time.monotonic()
        cutoff = time.time() - self.settings.retention_days * 86400
        try:
            (deleted,) = await self.store.write(("DELETE FROM request_log WHERE at < ?", [(cutoff,)]))
        except StoreError as exc:
            log.error("request log: pruning failed: %s", exc)
            return
        if deleted:
            log.info("request log: %d rows past retention deleted", deleted)

    async def close(self) -> None:
        """Stop, writing what is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await self.store.close()
