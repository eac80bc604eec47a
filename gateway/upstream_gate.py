"""The gateway's one gate to the upstream model API: a bound on streams, and rate-limit pauses.

Every session's model calls go out on ONE upstream credential, so its limits belong to the
fleet, not to a call. Left alone, each of thousands of CLIs would meet a 429 and retry on
its own schedule, and the upstream would see a stampede at every expiry. Instead every
call passes this gate first (``async with gate.slot(...)``), and the gate decides when:

- **Concurrency.** At most ``max_streams`` upstream calls are open at once; more wait,
  first come first served (a deque of futures, granted from the front).
- **Rate-limit pauses.** When the upstream answers 429 or 529 before streaming, the proxy
  tells the slot (``slot.rate_limited`` / ``slot.retry_after_limit``) and the gate admits
  no new call until ``Retry-After`` (seconds or an HTTP date; ``default_retry_after``
  when it names none). The proxy retries the same call itself, through the gate again:
  the CLI never sees the 429.
- **One probe when a pause ends (half-open).** The pause may have been too short, and
  letting every waiter go at its expiry would meet the limit again with all of them.
  So after the pause only the first waiter goes (the probe); the rest wait for its
  answer. A non-429/529 status (``slot.upstream_ok()``) ends the pause for everyone;
  another 429/529 starts a new pause. A probe that leaves its slot (returns, fails, is
  cancelled) without reporting hands the role to the next waiter, so nothing deadlocks.
  During a rate-limit window the upstream thus sees at most one request per pause.
- **Bounds on waiting.** A call that would make more than ``max_waiting`` calls wait is
  refused at once (``GateFull``); a call that has waited ``wait_timeout`` seconds in all
  (its waits for a retry included) gives up (``GateTimeout``). Both become a 529
  "overloaded" answer to the CLI, which then backs off by itself. A pause longer than
  ``wait_timeout`` is still waited out up to the timeout (the call is not refused early):
  waiting is what keeps the CLI from retrying, and a probe's ``upstream_ok`` can only
  come after the pause, so the call then times out and the proxy answers 529.

``on_wait(reason, until)`` is called at most once per call, when it first has to wait:
``reason`` is ``"rate_limited"`` (``until``: the pause's end on the gate's clock, or None
while a probe's answer is awaited) or ``"concurrency"`` (``until`` None). It runs
synchronously and must not block; the proxy publishes one event to the run from it.

Time is the injected ``clock`` (``time.monotonic`` by default); the event loop's timers
only wake the gate to look at the clock again, so a test's fake clock decides when a pause
or a wait ends (a timer that finds the clock short of the mark is set again). Pure
asyncio; one event loop; no locks (nothing here awaits while changing state).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from client.retry import parse_retry_after

RATE_LIMIT_STATUSES = frozenset({429, 529})

OnWait = Callable[[str, float | None], object]


class GateFull(Exception):
    """Too many calls are waiting already: the call is refused without waiting."""


class GateTimeout(Exception):
    """The call waited ``wait_timeout`` seconds (in all) without getting a slot."""


class _State(enum.Enum):
    OPEN = "open"
    PAUSED = "paused"  # no call goes until paused_until
    HALF_OPEN = "half_open"  # the pause is over; one probe goes, the rest await its answer


@dataclass(eq=False)
class _Waiter:
    slot: Slot
    granted: asyncio.Future[None]


class Slot:
    """One model call's passage through the gate: an async context manager.

    Entering waits for a stream slot (or raises ``GateFull`` / ``GateTimeout``); leaving
    frees it. While inside, the holder reports the upstream's answer: ``upstream_ok()``
    for any status but 429/529, ``retry_after_limit(...)`` for those (which waits for the
    gate again, so the same call can be sent again).
    """

    def __init__(self, gate: UpstreamGate, on_wait: OnWait | None) -> None:
        self._gate = gate
        self._on_wait = on_wait
        self._budget = gate.wait_timeout  # seconds this call may still wait
        self._waited = False
        self._held = False
        self._entered = False

    @property
    def held(self) -> bool:
        """Whether this call holds a stream slot now."""
        return self._held

    @property
    def is_probe(self) -> bool:
        """Whether this call is the one probe sent after a pause."""
        return self._gate._probe is self

    async def __aenter__(self) -> Slot:
        if self._entered:
            raise RuntimeError("a Slot is entered once")
        self._entered = True
        await self._gate._acquire(self, front=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held:
            self._gate._release(self)

    def upstream_ok(self) -> None:
        """The upstream answered this call with a status other than 429/529.

        From the probe this ends the pause for every waiter; from any other call it
        changes nothing.
        """
        self._gate._upstream_ok(self)

    def rate_limited(self, status: int, retry_after_header: str | None) -> float:
        """The upstream answered this call 429 or 529: pause new calls.

        Returns when the pause ends, on the gate's clock. Only reports; the slot is kept
        (``retry_after_limit`` reports and waits to send again).
        """
        until = self._gate._pause(status, retry_after_header)
        self._gate._dispatch()
        return until

    async def retry_after_limit(self, status: int, retry_after_header: str | None) -> None:
        """Report a 429/529, give the stream slot back, and wait until this call may be sent
        again (at the front of the queue: it is the oldest). Raises like entering does;
        then the slot is no longer held."""
        if not self._held:
            raise RuntimeError("retry_after_limit needs a held slot")
        self._gate._pause(status, retry_after_header)
        self._gate._release(self, dispatch=False)
        try:
            await self._gate._acquire(self, front=True)
        except BaseException:
            self._gate._dispatch()  # refused at once: others may still need the timer
            raise


class UpstreamGate:
    """Admission to the upstream for the whole gateway; see the module's docstring."""

    def __init__(
        self,
        max_streams: int,
        max_waiting: int,
        wait_timeout: float,
        default_retry_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        if max_waiting < 0:
            raise ValueError("max_waiting must not be negative")
        if wait_timeout <= 0 or default_retry_after < 0:
            raise ValueError("wait_timeout must be positive, default_retry_after not negative")
        self.max_streams = max_streams
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self.default_retry_after = default_retry_after
        self._clock = clock
        self._queue: deque[_Waiter] = deque()
        self._streams_open = 0
        self._state = _State.OPEN
        self._paused_until = 0.0
        self._probe: Slot | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waits_total = 0
        self._pauses_total = 0
        self._refused_full_total = 0
        self._timed_out_total = 0

    def slot(self, on_wait: OnWait | None = None) -> Slot:
        """A passage for one model call: ``async with gate.slot(on_wait=...) as slot:``."""
        return Slot(self, on_wait)

    def metrics(self) -> dict[str, int | float]:
        """A snapshot of the gate's gauges and counters."""
        remaining = 0.0
        if self._state is _State.PAUSED:
            remaining = max(0.0, self._paused_until - self._clock())
        return {
            "streams_open": self._streams_open,
            "waiting": len(self._queue),
            "waits_total": self._waits_total,
            "rate_limit_pauses_total": self._pauses_total,
            "paused_seconds_remaining": remaining,
            "half_open": int(self._state is _State.HALF_OPEN),
            "refused_full_total": self._refused_full_total,
            "timed_out_total": self._timed_out_total,
        }

    # --- admission -----------------------------------------------------------------------

    async def _acquire(self, slot: Slot, *, front: bool) -> None:
        self._end_pause_if_due()
        if self._admissible() and (front or not self._queue):
            self._grant(slot)
            return
        if len(self._queue) >= self.max_waiting:
            self._refused_full_total += 1
            raise GateFull(f"{len(self._queue)} model calls are waiting already")
        if not slot._waited:
            slot._waited = True
            if slot._on_wait is not None:
                slot._on_wait(*self._wait_reason())
        waiter = _Waiter(slot, asyncio.get_running_loop().create_future())
        if front:
            self._queue.appendleft(waiter)
        else:
            self._queue.append(waiter)
        self._waits_total += 1
        started = self._clock()
        deadline = started + slot._budget
        try:
            self._dispatch()
            while not waiter.granted.done():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self._timed_out_total += 1
                    raise GateTimeout(f"waited {self.wait_timeout:g} s for the upstream")
                # Never cancels the future: a grant racing the timeout is seen below.
                await asyncio.wait((waiter.granted,), timeout=remaining)
        except BaseException:
            if waiter.granted.done():  # granted, then cancelled before it could run
                self._release(slot)
            else:
                self._queue.remove(waiter)
                self._dispatch()
            raise
        finally:
            slot._budget = max(0.0, slot._budget - (self._clock() - started))

    def _admissible(self) -> bool:
        if self._streams_open >= self.max_streams or self._state is _State.PAUSED:
            return False
        return not (self._state is _State.HALF_OPEN and self._probe is not None)

    def _grant(self, slot: Slot) -> None:
        self._streams_open += 1
        slot._held = True
        if self._state is _State.HALF_OPEN:
            self._probe = slot

    def _release(self, slot: Slot, *, dispatch: bool = True) -> None:
        slot._held = False
        self._streams_open -= 1
        if self._probe is slot:
            self._probe = None  # left without an answer: the next waiter probes
        if dispatch:
            self._dispatch()

    def _dispatch(self) -> None:
        """Grant slots from the front of the queue while the gate allows, then make sure a
        timer will look at the clock when the pause should end."""
        self._end_pause_if_due()
        while self._queue and self._admissible():
            waiter = self._queue.popleft()
            self._grant(waiter.slot)
            waiter.granted.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state is _State.PAUSED and self._queue:
            delay = max(0.0, self._paused_until - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _wait_reason(self) -> tuple[str, float | None]:
        if self._state is _State.PAUSED:
            return "rate_limited", self._paused_until
        if self._state is _State.HALF_OPEN:
            return "rate_limited", None
        return "concurrency", None

    # --- rate limits ---------------------------------------------------------------------

    def _pause(self, status: int, retry_after_header: str | None) -> float:
        if status not in RATE_LIMIT_STATUSES:
            raise ValueError(f"only 429 and 529 pause the upstream, not {status}")
        seconds = parse_retry_after(retry_after_header)
        until = self._clock() + (self.default_retry_after if seconds is None else seconds)
        self._end_pause_if_due()
        if self._state is _State.PAUSED:
            self._paused_until = max(self._paused_until, until)
        else:
            self._state = _State.PAUSED
            self._paused_until = until
            self._pauses_total += 1
        self._probe = None
        return self._paused_until

    def _end_pause_if_due(self) -> None:
        if self._state is _State.PAUSED and self._clock() >= self._paused_until:
            self._state = _State.HALF_OPEN
            self._probe = None

    def _upstream_ok(self, slot: Slot) -> None:
        if self._state is _State.HALF_OPEN and self._probe is slot:
            self._state = _State.OPEN
            self._probe = None
            self._dispatch()
