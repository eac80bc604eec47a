"""When to send a request again: the API's 429 and 503 say how long to wait.

The API answers 429 with ``Retry-After`` when an owner has too many runs pending, and
503 when a dependency is down. Nothing was done for such a request, so sending it again
after the wait is safe, even a POST. Pure functions with an injectable clock, so they are
unit-tested without a server.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime

RETRY_STATUSES = frozenset({429, 503})


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None.

    A date in the past is 0; a value that is neither form (or not finite) is None.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait on 429/503 before giving the error to the caller.

    Attributes:
        attempts: requests in all (1: never retry).
        first_delay: the wait when the API named none; it doubles with each attempt.
        max_delay: a longer ``Retry-After`` is not waited for: the error goes to the
            caller at once (a person should decide to wait minutes, not a client).
    """

    attempts: int = 4
    first_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, attempt: int, status: int, retry_after: float | None) -> float | None:
        """The wait before attempt ``attempt + 1`` (``attempt`` counts from 0) after an
        answer with ``status``, or None: do not retry."""
        if status not in RETRY_STATUSES or attempt + 1 >= self.attempts:
            return None
        if status == 503 and retry_after is None:
            return None  # down without saying for how long: report it now
        wait = self.first_delay * 2**attempt if retry_after is None else retry_after
        return wait if wait <= self.max_delay else None


NO_RETRY = RetryPolicy(attempts=1)
