"""What the gateway has to say about a run, on its way into the run's events.

A run's events are numbered and written by one process, the worker running it. The
gateway (which sees the run's model calls wait, get refused or meet an unpriced model)
therefore never writes events itself: it pushes a notice onto a short Redis list per
run, and the worker drains that list on every tick of its CLI loop and once more before
it records the run, emitting each notice as an event (``ccq.gateway.<kind>``).

The list is capped and expires, so a run nobody drains (its worker died) leaves nothing
behind for long.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import redis
import redis.asyncio

EVENT_PREFIX = "ccq.gateway."
MAX_NOTICES = 100  # per run, undrained; older ones are dropped first
NOTICE_TTL_SECONDS = 3600


def notices_key(run_id: uuid.UUID | str) -> str:
    return f"ccq:run:{run_id}:gateway-notices"


def encode(kind: str, data: dict[str, Any]) -> str:
    return json.dumps({"kind": kind, "data": data}, separators=(",", ":"))


async def push(
    client: redis.asyncio.Redis, run_id: uuid.UUID | str, kind: str, data: dict[str, Any]
) -> None:
    """Queue one notice for the run's worker (the gateway's side)."""
    key = notices_key(run_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.rpush(key, encode(kind, data))
        pipe.ltrim(key, -MAX_NOTICES, -1)
        pipe.expire(key, NOTICE_TTL_SECONDS)
        await cast(Awaitable[list[Any]], pipe.execute())


def drain(client: redis.Redis, run_id: uuid.UUID | str) -> list[tuple[str, dict[str, Any]]]:
    """Take every queued notice of the run: ``(event type, data)`` in order (the
    worker's side). Malformed entries are skipped."""
    key = notices_key(run_id)
    with client.pipeline() as pipe:
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        raw, _ = pipe.execute()
    found: list[tuple[str, dict[str, Any]]] = []
    for item in raw:
        try:
            notice = json.loads(item)
        except ValueError:
            continue
        if (
            isinstance(notice, dict)
            and isinstance(notice.get("kind"), str)
            and isinstance(notice.get("data"), dict)
        ):
            found.append((EVENT_PREFIX + notice["kind"], notice["data"]))
    return found
