"""The held-API-share window (gateway/online_threshold.py) shared by every worker and gateway replica.

Redis keeps one list per router (and classifier: scores of another classifier do not mix), newest
first, trimmed to `share_window`. Every `SYNC_SECONDS` each process pushes the requests it saw since
its last push and reads the whole list back in the same atomic script, then holds that list (plus
what it saw during the round trip) as its window: every gateway computes the threshold from the same
recent requests, so the share holds over all of them, not per process. Between syncs the local window
moves with each request as without Redis. If Redis lost the list (a restart), the first process to
sync writes its whole window back.
"""

from __future__ import annotations

import hashlib

from gateway.online_threshold import Entry, OnlineThreshold
from gateway.redis_link import RedisLink

# KEYS: the list. ARGV: window, number of new entries n, the n new entries (oldest first), then this
# process's older entries (newest first), written only when the list is gone.
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


def encode(entry: Entry) -> str:
    score, to_api = entry
    return repr(score) if score is not None else ("A" if to_api else "L")


def decode(raw: bytes) -> Entry:
    if raw == b"A":
        return None, True
    if raw == b"L":
        return None, False
    return float(raw), False


class SharedWindow:
    def __init__(self, router: str, classifier: str, link: RedisLink) -> None:
        digest = hashlib.sha256(classifier.encode()).hexdigest()[:12]
        self.link = link
        self._key = link.key("window", router, digest)
        self._script = link.script(_SYNC)
        self._online: OnlineThreshold | None = None
        self._pushed = 0  # `observed` of the window at the last push
        self._whole = True  # send the whole local window, in case Redis lost the list

    async def sync(self, online: OnlineThreshold) -> bool:
        """Push what this process saw, hold what all saw; True when the threshold moved."""
        if online is not self._online:  # a reload built a new window, with the old one's history
            self._online, self._pushed, self._whole = online, online.observed, True
        fresh = online.latest(online.observed - self._pushed)
        older = online.latest(online.window)[: -len(fresh) or None][::-1] if self._whole else []
        self._pushed = online.observed
        args: list[str | int | float] = [online.window, len(fresh), *map(encode, fresh), *map(encode, older)]
        answer = await self.link.run(lambda c: self._script(keys=[self._key], args=args), None)
        if answer is None:
            self._whole = True  # what Redis holds after an outage is unknown
            return False
        self._whole = False
        shared = [decode(raw) for raw in reversed(answer)]
        before = online.threshold
        online.adopt(shared + online.latest(online.observed - self._pushed))
        return online.threshold != before
