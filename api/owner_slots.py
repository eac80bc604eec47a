"""Per-owner caps on long-held requests (open tails, ``?wait`` requests), across API processes.

Each kind and owner is a Redis sorted set of holder IDs scored by when their hold
expires. A holder refreshes its score while it holds (every few seconds, from the loop it
already runs) and removes itself when done; a process that dies stops refreshing, and its
entries drop out once their score passes, so a crash leaks a slot for ``HOLD_SECONDS`` at
most, never forever.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from redis import Redis

from api.errors import TooManyRequests

# How long a hold lasts without a refresh; holders refresh far more often than this.
HOLD_SECONDS = 30.0
# A refused client may retry this soon: holds end as tails close and waits answer.
RETRY_AFTER_SECONDS = 5

# Drop expired holders, then add this one if there is room: atomic across processes.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


@dataclass
class Slot:
    """One holder's place; ``refresh`` keeps it, ``release`` gives it back."""

    redis: Redis
    key: str
    holder: str = field(default_factory=lambda: uuid.uuid4().hex)
    _refreshed: float = 0.0

    def refresh(self, every: float = 5.0) -> None:
        """Push the hold's expiry on (at most once per ``every`` seconds)."""
        now = time.time()
        if now - self._refreshed < every:
            return
        self.redis.zadd(self.key, {self.holder: now + HOLD_SECONDS}, xx=True)
        self._refreshed = now

    def release(self) -> None:
        self.redis.zrem(self.key, self.holder)


def acquire(redis: Redis, kind: str, owner: str, cap: int, setting: str) -> Slot:
    """A slot of ``kind`` for ``owner``.

    Raises:
        TooManyRequests: the owner already holds ``cap`` (429 with Retry-After).
    """
    slot = Slot(redis, f"ccq:slots:{kind}:{owner}")
    now = time.time()
    taken = redis.eval(
        _ACQUIRE, 1, slot.key, now, now + HOLD_SECONDS, cap, slot.holder, int(HOLD_SECONDS) * 2
    )
    if not taken:
        raise TooManyRequests(
            f"too many open {kind} for this owner (at most {cap}, {setting})",
            RETRY_AFTER_SECONDS,
            [{"reason": f"too many {kind}", "setting": setting, "limit": cap}],
        )
    slot._refreshed = now
    return slot


@contextlib.contextmanager
def holding(redis: Redis, kind: str, owner: str, cap: int, setting: str) -> Iterator[Slot]:
    """Hold a slot for the ``with`` block; released however it ends."""
    slot = acquire(redis, kind, owner, cap, setting)
    try:
        yield slot
    finally:
        with contextlib.suppress(Exception):  # a lost Redis: the hold expires on its own
            slot.release()
