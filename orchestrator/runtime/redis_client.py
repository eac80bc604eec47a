"""The Redis client of a worker or beat process: every call ends within seconds.

The run's thread touches Redis about four times a second (event flushes, the cancel
signal, the gateway's notices) and the lock's thread renews every few seconds. A Redis
that keeps the connection open and never answers (a hung server, a dead NAT entry) must
turn into a ``redis.TimeoutError`` the caller handles, not a thread stuck in ``recv``
while the run's silence and time limits go unchecked. redis-py's own defaults would retry
a timed-out command ten times, about a minute.

This client sends no blocking reads (``XREAD BLOCK``, ``BRPOP``): those live on the API's
stream client, whose timeout is longer than its blocks. Keep it that way, or give such a
read a client of its own.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# A Redis on this host or the LAN accepts in milliseconds; longer is a Redis that is down.
CONNECT_TIMEOUT_SECONDS = 3.0
# The slowest command sent here is a small Lua script or an XADD of a batch of events; a
# reply later than this is a hung Redis. Shorter than the lock's renewal interval (a third
# of its TTL, 10 s by default), so a renewal that hangs still ends before the next one.
SOCKET_TIMEOUT_SECONDS = 5.0
# A pooled connection idle this long is PINGed before use: one that a Redis restart closed
# is replaced then, instead of failing the command that picks it up.
HEALTH_CHECK_INTERVAL_SECONDS = 15
# One retry, and only of a dropped connection (a restart): a timed-out command is not
# sent again, which would double the stall.
RETRIES = 1
RETRY_BACKOFF_CAP_SECONDS = 0.5
# The longest one call can take against a Redis that answers nothing: each attempt may
# spend the connect and the read timeouts, plus the backoff between them.
WORST_CASE_CALL_SECONDS = (RETRIES + 1) * (
    CONNECT_TIMEOUT_SECONDS + SOCKET_TIMEOUT_SECONDS
) + RETRY_BACKOFF_CAP_SECONDS


def worker_redis(url: str) -> redis.Redis:
    """A client for ``url`` whose every call returns or raises within
    :data:`WORST_CASE_CALL_SECONDS`."""
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
        retry=Retry(
            ExponentialBackoff(cap=RETRY_BACKOFF_CAP_SECONDS),
            RETRIES,
            supported_errors=(redis.ConnectionError,),
        ),
    )
