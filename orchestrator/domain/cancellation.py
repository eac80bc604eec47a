"""Cancel signals: a Redis key the executor polls cheaply between output reads.

The run row's ``cancel_requested`` flag is the durable record; the key is the fast path
(the executor checks it every quarter second while the CLI runs).
"""

from __future__ import annotations

import uuid

import redis

# Long enough for any run to notice; the flag in PostgreSQL covers the rest.
SIGNAL_TTL_SECONDS = 24 * 3600


def cancel_key(run_id: uuid.UUID | str) -> str:
    return f"ccq:cancel:run:{run_id}"


def signal_cancel(client: redis.Redis, run_id: uuid.UUID) -> None:
    client.set(cancel_key(run_id), "1", ex=SIGNAL_TTL_SECONDS)


def cancel_signalled(client: redis.Redis, run_id: uuid.UUID) -> bool:
    return bool(client.exists(cancel_key(run_id)))
