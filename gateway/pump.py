"""One sender per piece of shared state: what a process tells Redis arrives in the order it happened.

Callers `kick` the pump instead of sending themselves; the pump runs `flush` in its own task, one at a
time, and a kick during a flush earns exactly one more flush, which then carries everything since.
Under load that batches many requests' changes into one round trip, and the hot path never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("crossover")


class Pump:
    def __init__(self, flush: Callable[[], Awaitable[None]]) -> None:
        self._flush = flush
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def kick(self) -> None:
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._flush()
                except Exception:  # a bug here must not stop the next flush (Redis errors never reach it)
                    log.exception("sending shared state to redis failed")
                if not self._again:
                    return
        finally:
            self._task = None

    async def drained(self) -> None:
        """Wait until everything asked so far was sent."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
