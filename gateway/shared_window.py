"""The held-API-share window (gateway/online_threshold.py) shared by every worker and gateway replica.

Redis keeps one list per router (and classifier: scores of another classifier do not mix), newest
push first. Every `SYNC_SECONDS` each process pushes the requests it saw since its last sync, each
with the time it was seen, and reads the list back in the same atomic script. The threshold is
computed from the last `share_window` requests seen before `SETTLED_SECONDS` ago, by when every
process has pushed them: every gateway holds the same threshold from the same requests, so the share
holds over all of them. (Each process's own fresh requests must not count before the others' do: a
gateway that got the hard requests would raise its own threshold and send fewer of them to the API.)
While Redis is unreachable the process holds its own window again, as without Redis. If Redis lost
the list (a restart), the first process to sync writes its whole window back.
"""

from __future__ import annotations

import hashlib
import time

from gateway.online_threshold import Entry, OnlineThreshold
from gateway.redis_link import RedisLink

SYNC_SECONDS = 0.5
SETTLED_SECONDS = 2 * SYNC_SECONDS  # every process has pushed what it saw before this long ago

# KEYS: the list. ARGV: how many to keep, number of new entries n, the n new entries (oldest first),
# then this process's older entries (newest first), written only when the list is gone.
_SYNC = """
local n = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  for i = 3 + n, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
end
for i = 3, 2 + n do redis.call('LPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
redis.call('EXPIRE', KEYS[1], 86400)
return redis.call('LRANGE', KEYS[1], 0, -1)
"""

Stamped = tuple[float, float | None, bool]  # (when seen, score or None when pinned, pinned to the API)


def encode(entry: Stamped) -> str:
    seen, score, to_api = entry
    return f"{seen!r} {score!r}" if score is not None else f"{seen!r} {'A' if to_api else 'L'}"


def decode(raw: bytes) -> Stamped:
    seen, _, what = raw.partition(b" ")
    if what == b"A":
        return float(seen), None, True
    if what == b"L":
        return float(seen), None, False
    return float(seen), float(what), False


def settled(entries: list[Stamped], window: int, now: float) -> list[Entry]:
    """The last `window` requests seen before `SETTLED_SECONDS` ago, oldest first."""
    old = sorted(e for e in entries if e[0] <= now - SETTLED_SECONDS)
    return [(score, to_api) for _, score, to_api in old[-window:]]


class SharedWindow:
    def __init__(self, router: str, classifier: str, link: RedisLink) -> None:
        digest = hashlib.sha256(classifier.encode()).hexdigest()[:12]
        self.link = link
        self._key = link.key("window", router, digest)
        self._script = link.script(_SYNC)
        self._online: OnlineThreshold | None = None
        self._whole = True  # send the whole local window too, in case Redis lost the list

    async def sync(self, online: OnlineThreshold) -> bool:
        """Push what this process saw, hold what all saw; True when the threshold moved."""
        if online is not self._online:  # a reload built a new window, with the old one's history
            self._online, self._whole = online, True
        fresh, online.outbox = online.outbox or [], []
        older: list[Stamped] = []
        if self._whole:  # the local window, as requests long settled (their own times are not kept)
            long_ago = time.time() - SETTLED_SECONDS - 1
            older = [(long_ago, score, to_api) for score, to_api in online.latest(online.window)[::-1]]
        # Kept: the window, and room for the requests of the last seconds that do not count yet.
        keep = online.window * 2
        args: list[str | int | float] = [keep, len(fresh), *map(encode, fresh), *map(encode, older)]
        before = online.threshold
        answer = await self.link.run(lambda c: self._script(keys=[self._key], args=args), None)
        if answer is None:  # Redis is away: this process holds its own window, with what waited
            waiting, online.outbox = [*fresh, *online.outbox], None
            for _, score, to_api in waiting:
                if score is None:
                    online.observe_pinned("api" if to_api else "local")
                else:
                    online.observe(score)
            self._whole = True
        else:
            self._whole = False
            online.adopt(settled([decode(raw) for raw in answer], online.window, time.time()))
        return online.threshold != before
