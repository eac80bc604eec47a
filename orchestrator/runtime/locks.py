"""Redis locks held by a named holder: the per-session run lock, and the compare-and-set
steps any holder-keyed lock uses (a webhook's "sending" key, for one).

PostgreSQL says which run is next; this lock says whether some worker is executing it
right now. A run left ``running`` by a dead worker has no live lock (and no live lease,
``orchestrator.runtime.leases``), so a redelivery can tell "still running elsewhere"
(look again later) from "lost" (settled by ``orchestrator.runtime.lost_runs``).
"""

from __future__ import annotations

import contextlib
import threading
import uuid

import redis

# The default; a run's executor holds it for as long as its lease (CCQ_RUN_LEASE_SECONDS).
TTL_MS = 30_000

# Extend or release only if we still own it (compare-and-set in one round trip).
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
# Take the key if it is free or already ours (a redelivery of the same task).
_TAKE_UNLESS_HELD = (
    "local v = redis.call('get', KEYS[1]) "
    "if (not v) or v == ARGV[1] then "
    "redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end return 0"
)


def take_unless_held(client: redis.Redis, key: str, holder: str, ttl_seconds: int) -> bool:
    """Hold ``key`` for ``holder`` unless another holder has it; whether we hold it."""
    return bool(client.eval(_TAKE_UNLESS_HELD, 1, key, holder, ttl_seconds))


def release_if_held(client: redis.Redis, key: str, holder: str) -> None:
    """Delete ``key`` only if ``holder`` still holds it (never another's, after expiry)."""
    client.eval(_RELEASE, 1, key, holder)


def lock_key(session_id: uuid.UUID | str) -> str:
    return f"ccq:lock:session:{session_id}"


class SessionLock:
    """Held by one run's executor; a background thread renews it until released."""

    def __init__(
        self, client: redis.Redis, session_id: uuid.UUID, holder: str, ttl_ms: int = TTL_MS
    ) -> None:
        self._client = client
        self._ttl_ms = ttl_ms
        self._key = lock_key(session_id)
        self._holder = holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self._client.set(self._key, self._holder, nx=True, px=self._ttl_ms):
            return False
        self._thread = threading.Thread(target=self._renew, name="ccq-lock-renew", daemon=True)
        self._thread.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl_ms / 3000):
            # A failed renewal is retried on the next tick; the TTL covers two misses.
            with contextlib.suppress(redis.RedisError):
                self._client.eval(_RENEW, 1, self._key, self._holder, self._ttl_ms)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        release_if_held(self._client, self._key, self._holder)


def lock_ttl_ms(client: redis.Redis, session_id: uuid.UUID) -> int:
    """Milliseconds the session's lock has left; 0 if it is free."""
    return max(0, int(client.pttl(lock_key(session_id))))
