"""A per-session Redis lock, renewed while a run executes.

PostgreSQL says which run is next; this lock says whether some worker is executing it
right now. A run left ``running`` by a dead worker has no live lock, so a redelivery can
tell "still running elsewhere" (skip) from "orphaned" (take over).
"""

from __future__ import annotations

import contextlib
import threading
import uuid

import redis

TTL_MS = 30_000
RENEW_EVERY_SECONDS = 10.0

# Extend or release only if we still own it (compare-and-set in one round trip).
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def lock_key(session_id: uuid.UUID | str) -> str:
    return f"ccq:lock:session:{session_id}"


class SessionLock:
    """Held by one run's executor; a background thread renews it until released."""

    def __init__(self, client: redis.Redis, session_id: uuid.UUID, holder: str) -> None:
        self._client = client
        self._key = lock_key(session_id)
        self._holder = holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self._client.set(self._key, self._holder, nx=True, px=TTL_MS):
            return False
        self._thread = threading.Thread(target=self._renew, name="ccq-lock-renew", daemon=True)
        self._thread.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_EVERY_SECONDS):
            # A failed renewal is retried on the next tick; the TTL covers two misses.
            with contextlib.suppress(redis.RedisError):
                self._client.eval(_RENEW, 1, self._key, self._holder, TTL_MS)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._client.eval(_RELEASE, 1, self._key, self._holder)


def is_locked(client: redis.Redis, session_id: uuid.UUID) -> bool:
    return bool(client.exists(lock_key(session_id)))
