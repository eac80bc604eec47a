"""A rate-limit window set from tests: while it is open every ``POST /v1/messages`` is
answered with an Anthropic 429 ``rate_limit_error`` (or 529 ``overloaded_error``) carrying
``retry-after`` and ``x-should-retry: true``, as the real API does when a key's limit is hit.

Set it with :meth:`model_server.ModelServer.rate_limit` or ``POST /_ccq/rate-limit``; the
window is measured on the monotonic clock, so wall-clock jumps neither shorten nor extend it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: The statuses a window may answer with: the real API's "slow down" answers.
RATE_LIMIT_STATUSES = frozenset({429, 529})
#: Longest window accepted (a day): a bigger number is a test bug, not a scenario.
MAX_WINDOW_SECONDS = 86_400.0

MESSAGES = {
    429: "Number of requests has exceeded your rate limit (scripted rate-limit window). "
    "Please try again later.",
    529: "Overloaded (scripted rate-limit window)",
}


class RateLimitError(ValueError):
    """A bad window setting; ``field`` names the offending argument."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Limited:
    """How to answer one request that fell inside the window."""

    status: int
    retry_after: int  # whole seconds, as the retry-after header carries them
    message: str

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after), "x-should-retry": "true"}


def validate(
    seconds: Any, retry_after: Any = None, status: Any = 429
) -> tuple[float, int | None, int]:
    """Check window settings (from Python or JSON); raise :class:`RateLimitError` naming the
    field. ``seconds`` is a number of seconds >= 0 (0 clears the window), ``retry_after``
    ``None`` or a whole number of seconds >= 0, ``status`` 429 or 529."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise RateLimitError("seconds", "must be a number")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_WINDOW_SECONDS:
        raise RateLimitError("seconds", f"must be between 0 and {MAX_WINDOW_SECONDS:g}")
    if retry_after is not None:
        if isinstance(retry_after, bool) or not isinstance(retry_after, int):
            raise RateLimitError("retry_after", "must be a whole number of seconds")
        if not 0 <= retry_after <= MAX_WINDOW_SECONDS:
            raise RateLimitError("retry_after", f"must be between 0 and {MAX_WINDOW_SECONDS:g}")
    if isinstance(status, bool) or status not in RATE_LIMIT_STATUSES:
        raise RateLimitError("status", "must be 429 or 529")
    return float(seconds), retry_after, int(status)


class RateLimitWindow:
    """Thread-safe window state; handler threads ask :meth:`check`, tests call :meth:`set`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._until = 0.0
        self._retry_after: int | None = None
        self._status = 429

    def set(self, seconds: Any, retry_after: Any = None, status: Any = 429) -> None:
        """Open a window of ``seconds`` from now (replacing any open one); 0 closes it.

        ``retry_after`` is what the ``retry-after`` header says; ``None`` means the whole
        seconds left in the window, rounded up (at least 1), as the real API reports.
        """
        seconds, retry_after, status = validate(seconds, retry_after, status)
        with self._lock:
            self._until = self._clock() + seconds if seconds > 0 else 0.0
            self._retry_after = retry_after
            self._status = status

    def check(self) -> Limited | None:
        """How to answer a Messages call now, or ``None`` outside the window."""
        with self._lock:
            left = self._until - self._clock()
            if left <= 0:
                return None
            retry_after = self._retry_after
            status = self._status
        if retry_after is None:
            retry_after = max(1, math.ceil(left))
        return Limited(status, retry_after, MESSAGES[status])

    def state(self) -> dict[str, Any]:
        """What ``GET /_ccq/rate-limit`` shows: whether a window is open and its settings."""
        with self._lock:
            left = max(0.0, self._until - self._clock())
            return {
                "active": left > 0,
                "seconds_left": round(left, 3),
                "retry_after": self._retry_after,
                "status": self._status,
            }


def from_json(body: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """The ``POST /_ccq/rate-limit`` body's settings; unknown fields are an error."""
    unknown = sorted(set(body) - {"seconds", "retry_after", "status"})
    if unknown:
        raise RateLimitError(unknown[0], "unknown field")
    if "seconds" not in body:
        raise RateLimitError("seconds", "is required")
    return body["seconds"], body.get("retry_after"), body.get("status", 429)
