"""Per-owner rate limits kept in Redis, so every API process shares one count.

A fixed window: one counter per owner and minute, expiring with the minute. Simpler than
a token bucket and as strict over any minute boundary as a user can observe; at worst
twice the rate passes across a boundary, which is what a fixed window allows.
"""

from __future__ import annotations

import math
import time

import redis

from api.errors import TooManyRequests

WINDOW_SECONDS = 60


def check_session_rate(
    client: redis.Redis, instance: str, owner: str, wanted: int, per_minute: int
) -> None:
    """Counts ``wanted`` new sessions for ``owner``; raises 429 (Retry-After: the rest of
    the minute) when that passes ``per_minute`` (CCQ_SESSIONS_PER_MINUTE_PER_OWNER).

    A refused request is counted too: a client hammering past the limit keeps being
    refused until the window ends, rather than sneaking one in per freed slot.
    """
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    key = f"{instance}:rate:sessions:{owner}:{window}"
    pipe = client.pipeline(transaction=True)
    pipe.incrby(key, wanted)
    pipe.expire(key, WINDOW_SECONDS * 2)
    count, _ = pipe.execute()
    if int(count) > per_minute:
        retry_after = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
        raise TooManyRequests(
            f"you created sessions too fast: at most {per_minute} a minute "
            "(CCQ_SESSIONS_PER_MINUTE_PER_OWNER); retry after the minute ends",
            retry_after,
            [{"field": "session", "reason": "too many sessions created", "limit": per_minute}],
        )
