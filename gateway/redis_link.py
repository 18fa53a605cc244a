"""The gateway's one connection to Redis, where workers and gateway replicas share state.

Redis is never what keeps the gateway up. Every use goes through `RedisLink.run` with the answer
the caller would give from its own local state: while Redis is unreachable that answer is used, the
outage is said once in the log and in `crossover_redis_up`, calls stop waiting on Redis, and after
`retry_seconds` the next call tries again; the first success says it is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.config import Redis
from gateway.recorder import Recorder

T = TypeVar("T")
Client = aioredis.Redis
log = logging.getLogger("crossover")


class RedisLink:
    def __init__(self, settings: Redis, recorder: Recorder) -> None:
        self.settings = settings
        self.client: Client = aioredis.Redis.from_url(
            settings.url,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            retry_on_timeout=False,  # our callers have a local answer; waiting longer helps nobody
        )
        self._recorder = recorder
        self.up = True
        self._retry_at = 0.0
        recorder.redis(True)

    def key(self, *parts: str) -> str:
        """A key in this gateway's namespace, e.g. key("breaker", "local") -> "crossover:breaker:local"."""
        return ":".join((self.settings.key_prefix, *parts))

    def script(self, lua: str) -> AsyncScript:
        """A Lua script run atomically on the server (loaded once, then called by its hash)."""
        return self.client.register_script(lua)

    def retry_in(self) -> float:
        """Seconds until Redis is tried again (until then `run` sends nothing); 0 when up or due."""
        return max(self._retry_at - time.monotonic(), 0.0) if not self.up else 0.0

    async def run(self, call: Callable[[Client], Awaitable[T]], local: T) -> T:
        """`call`'s result, or `local` while Redis is unreachable."""
        if self.retry_in():
            return local
        try:
            result = await call(self.client)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed(exc)
            return local
        if not self.up:
            self.up = True
            self._recorder.redis(True)
            log.warning("redis is reachable again: shared state resumes")
        return result

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.settings.retry_seconds
        self._recorder.redis(False, failed=True)
        if self.up:
            self.up = False
            # The exception's text, never the URL: it may carry a password.
            log.warning("redis is unreachable (%s): using local state until it is back", type(exc).__name__)

    async def close(self) -> None:
        await self.client.aclose()
