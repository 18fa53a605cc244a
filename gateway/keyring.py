"""Who a gateway key is: the static keys of the config, and the virtual keys of the store.

Authenticating never reads the database. Each gateway process keeps every usable virtual key in
memory, by hash, and asks the store every `REFRESH_SECONDS` whether anything changed (one row:
`key_changes.version`); only then does it read the keys again. So:
- a revoked, rotated or new key takes effect on every gateway within REFRESH_SECONDS plus one query
  (well within 1 s), with or without Redis;
- a wrong key is answered from memory too: an attacker trying keys costs the database nothing
  (a cache of misses would still let each new guess through to it);
- while the store is unreachable the last keys read keep working (and revocations wait), said once
  in the log.
Memory is the cost: about half a kilobyte per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Mapping

from gateway.keys import KEY_TEXT, Keys, key_hash
from gateway.principal import Principal
from gateway.store import StoreError, open_store

REFRESH_SECONDS = 0.25
log = logging.getLogger("crossover")


def find_static(token: str, principals: Mapping[str, Principal]) -> Principal | None:
    # Compare against every key in constant time so timing does not reveal a prefix.
    # Bytes, not str: compare_digest refuses non-ASCII strings, and a header may hold any latin-1.
    given = token.encode()
    for key, principal in principals.items():
        if hmac.compare_digest(given, key.encode()):
            return principal
    return None


class Keyring:
    """The virtual keys of one store, refreshed in the background."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.keys = Keys(open_store(url))
        self._by_hash: dict[str, tuple[Principal, float | None]] = {}
        self._version: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def find(self, token: str) -> Principal | None:
        if not KEY_TEXT.match(token):  # not one of ours: no hashing, no lookup
            return None
        entry = self._by_hash.get(key_hash(token))
        if entry is None:
            return None
        principal, expires_at = entry
        return principal if expires_at is None or time.time() < expires_at else None

    def teams(self) -> set[str]:
        return {p.team for p, _ in self._by_hash.values() if p.team is not None}

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def refresh(self) -> None:
        try:
            version = await self.keys.version()
            if version != self._version:
                self._by_hash = await self.keys.principals()
                self._version = version
        except StoreError as exc:
            if not self._failing:
                self._failing = True
                log.error("keys store unreachable, the keys read last stay in force: %s", exc)
            return
        if self._failing:
            self._failing = False
            log.warning("keys store reachable again")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self.refresh()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.keys.store.close()
