"""Following a live tail: the API's WebSocket stream of a run's or a session's events, or
of a batch's progress.

A :class:`Follower` connects to ``/api/v1/{runs,sessions,batches}/<id>/stream``, hands each
event to its caller in order and remembers the last event's ID (before the first event,
where the stream said it starts). When the connection breaks it connects again with
``?after=<that ID>``: the server sends everything after it, so nothing is lost and
nothing repeats. Reconnections back off (0.5 s doubling to 10 s) and give up after
``GIVE_UP_SECONDS`` without progress.

The decisions are pure functions (:func:`ws_url`, :func:`stream_url`, :func:`on_close`,
:func:`on_refused`) and a :class:`Backoff` with an injectable clock, unit-tested
without a server.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.exceptions import (
    ConnectionClosed,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.sync.client import ClientConnection, connect

JsonObject = dict[str, Any]

FIRST_DELAY = 0.5
MAX_DELAY = 10.0
GIVE_UP_SECONDS = 120.0
# A connection that delivered an event, or stayed up this long, was a working one: the
# next break starts a new outage (with the first delay and a fresh give-up clock).
STABLE_SECONDS = 10.0
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
# An event carries one CLI output line, which the worker accepts up to 16 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_RESUME_AFTER = re.compile(r"after=(\d+-\d+)")
# Redis stream IDs, "<ms>-<n>": the server's cursors (compared as pairs of numbers).
_STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})")


class Kind(StrEnum):
    """What is tailed: the path segment of its stream."""

    RUN = "runs"
    SESSION = "sessions"
    BATCH = "batches"


class TailError(Exception):
    """The tail cannot go on; the message is one line for the user."""


class TailTimeout(Exception):
    """The caller's deadline passed before the stream ended."""


# --- pure decisions -------------------------------------------------------------------


def ws_url(api_url: str) -> str:
    """The API's base URL with the WebSocket scheme: http -> ws, https -> wss."""
    parts = urlsplit(api_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise TailError(f"the API URL must be http://HOST[:PORT] or https://… (got {api_url!r})")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def stream_url(api_url: str, kind: Kind, object_id: str, after: str | None = None) -> str:
    """The stream of a run, a session or a batch, from after the event ``after`` if given."""
    url = f"{ws_url(api_url)}/api/v1/{kind.value}/{object_id}/stream"
    return f"{url}?{urlencode({'after': after})}" if after else url


class Action(Enum):
    DONE = "done"  # the stream ended normally (a run stream after its run's last event)
    RETRY = "retry"  # connect again with the last event's ID
    FAIL = "fail"  # stop with the decision's message


@dataclass(frozen=True)
class Decision:
    """What to do when a stream ends, and why (the error, or what broke the stream)."""

    action: Action
    why: str
    after: str | None = None  # where the server said to resume, if it said so


def resume_point(reason: str) -> str | None:
    """The event ID in a close reason such as ``too far behind; resume with after=<id>``."""
    match = _RESUME_AFTER.search(reason)
    return match.group(1) if match else None


def on_close(code: int | None, reason: str = "") -> Decision:
    """What to do when the server closed the stream with ``code`` (None: no close frame,
    i.e. the server went away or the connection stalled)."""
    after = resume_point(reason)
    detail = f": {reason}" if reason else ""
    if code is None:
        return Decision(Action.RETRY, "the connection dropped")
    if code == 1000:
        return Decision(Action.DONE, reason or "closed")
    if code == 4408:
        return Decision(Action.RETRY, "the tail fell too far behind", after)
    if code == 4503:
        return Decision(Action.RETRY, "the API's event store is unavailable", after)
    if code in (1001, 1006, 1008, 1011, 1012, 1013, 1014):
        return Decision(Action.RETRY, f"the API closed the stream ({code}{detail})", after)
    if code == 4400:
        return Decision(Action.FAIL, f"invalid tail request{detail}")
    if code == 4401:
        return Decision(Action.FAIL, f"not authorized{detail} (pass --token or set CCQ_TOKEN)")
    if code in (4403, 4404, 4410):
        default = {4403: "forbidden", 4404: "not found", 4410: "deleted"}[code]
        return Decision(Action.FAIL, reason or default)
    if code == 1009:
        return Decision(Action.FAIL, "an event was too large to receive")
    return Decision(Action.FAIL, f"the stream closed with code {code}{detail}")


def on_refused(status: int) -> Decision:
    """What to do when the WebSocket handshake got an HTTP status instead of a switch."""
    if status >= 500 or status in (408, 429):
        return Decision(Action.RETRY, f"the API answered HTTP {status}")
    if status in (401, 403):
        return Decision(Action.FAIL, f"not authorized (HTTP {status})")
    if status == 404:
        return Decision(Action.FAIL, "no stream at this URL (HTTP 404); is it the ccq API?")
    return Decision(Action.FAIL, f"the API refused the stream (HTTP {status})")


def _position(event_id: object) -> tuple[int, int] | None:
    match = _STREAM_ID.fullmatch(event_id) if isinstance(event_id, str) else None
    return (int(match[1]), int(match[2])) if match else None


def is_after(event_id: object, cursor: str | None) -> bool:
    """Whether ``event_id`` comes after ``cursor`` in the stream (unknown forms: yes)."""
    position, last = _position(event_id), _position(cursor)
    return position is None or last is None or position > last


class Backoff:
    """Delays between reconnections: ``first``, doubling up to ``cap``; ``None`` (give
    up) once the outage has lasted ``give_up`` seconds. :meth:`reset` ends an outage."""

    def __init__(
        self,
        first: float = FIRST_DELAY,
        cap: float = MAX_DELAY,
        give_up: float = GIVE_UP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first, self.cap, self.give_up, self.clock = first, cap, give_up, clock
        self._delay: float | None = None
        self._since: float | None = None

    @property
    def in_outage(self) -> bool:
        return self._since is not None

    def next_delay(self) -> float | None:
        now = self.clock()
        if self._since is None:
            self._since = now
        if now - self._since >= self.give_up:
            return None
        self._delay = self.first if self._delay is None else min(self._delay * 2, self.cap)
        return self._delay

    def reset(self) -> None:
        self._delay = self._since = None


def _describe(exc: BaseException) -> str:
    """A short reason for a failed connection attempt."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ssl.SSLError):
        return "TLS error"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, InvalidMessage):
        return "the connection dropped during the handshake"
    return str(exc) or type(exc).__name__


def _failure(exc: WebSocketException | OSError, deadline: float | None) -> Decision:
    """What a failed connection attempt or a broken connection means."""
    if isinstance(exc, ConnectionClosed):
        closed = exc.rcvd or exc.sent  # a frame we sent: we gave up on the connection
        return on_close(closed.code, closed.reason) if closed else on_close(None)
    if isinstance(exc, InvalidStatus):
        return on_refused(exc.response.status_code)
    if isinstance(exc, InvalidURI):
        raise TailError(f"bad stream URL: {exc}") from None
    if isinstance(exc, TimeoutError) and deadline is not None and time.monotonic() >= deadline:
        raise TailTimeout from None
    if isinstance(exc, OSError | InvalidMessage):
        return Decision(Action.RETRY, _describe(exc))
    return Decision(Action.FAIL, f"the stream failed: {_describe(exc)}")


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# --- the follower ---------------------------------------------------------------------

EventHandler = Callable[[JsonObject, str], None]


def _ignore(_: str) -> None:
    pass


@dataclass
class Follower:
    """Follows one stream across reconnections.

    Attributes:
        after: the last event ID handed on (or where the stream started); the next
            connection resumes after it. ``None`` lets the server choose: a run's first
            event, a session's live end, or a batch's snapshot and then its live end.
        notify: told, in a few words, when the stream breaks and when it is back.
    """

    api_url: str
    token: str
    kind: Kind
    object_id: str
    after: str | None = None
    notify: Callable[[str], None] = _ignore
    backoff: Backoff = field(default_factory=Backoff)
    sleep: Callable[[float], None] = time.sleep
    _announced: bool = field(default=False, init=False)  # the break was told, not the return
    _opened_before: bool = field(default=False, init=False)

    def follow(
        self,
        on_event: EventHandler,
        *,
        on_open: Callable[[JsonObject], None] | None = None,
        deadline: float | None = None,
    ) -> str:
        """Hand every event to ``on_event(event, raw_json)`` until the stream ends normally;
        return the server's reason. ``on_open`` gets the first opening message's ``tail``.

        Raises:
            TailError: the server refused or ended the tail for good, or reconnecting
                failed for ``GIVE_UP_SECONDS``.
            TailTimeout: ``deadline`` (a ``time.monotonic()`` value) passed.
        """
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise TailTimeout
            decision, progressed = self._connection(on_event, on_open, deadline)
            if progressed:
                self.backoff.reset()
            if decision.action is Action.DONE:
                return decision.why
            if decision.action is Action.FAIL:
                raise TailError(decision.why)
            self.after = self.after or decision.after
            self._wait_to_retry(decision, deadline)

    def _connection(
        self,
        on_event: EventHandler,
        on_open: Callable[[JsonObject], None] | None,
        deadline: float | None,
    ) -> tuple[Decision, bool]:
        """One connection, from connecting to its end: how it ended, and whether it made
        progress (delivered an event, or stayed up ``STABLE_SECONDS``).

        Only the connection's own failures are caught here: whatever the handlers raise
        (a closed stdout, Ctrl-C) goes to the caller.
        """
        try:
            ws = self._connect(deadline)
        except (WebSocketException, OSError) as exc:
            return _failure(exc, deadline), False
        opened_at: float | None = None
        delivered = False
        with ws:
            while True:
                try:
                    message = ws.recv(timeout=_remaining(deadline))
                except (WebSocketException, OSError) as exc:
                    decision = _failure(exc, deadline)
                    break
                text = message if isinstance(message, str) else message.decode()
                if opened_at is None:
                    opened_at = time.monotonic()
                    self._opened(text, on_open)
                else:
                    delivered = self._deliver(text, on_event) or delivered
        stable = opened_at is not None and time.monotonic() - opened_at >= STABLE_SECONDS
        return decision, delivered or stable

    def _connect(self, deadline: float | None) -> ClientConnection:
        remaining = _remaining(deadline)
        return connect(
            stream_url(self.api_url, self.kind, self.object_id, self.after),
            additional_headers={"Authorization": f"Bearer {self.token}"},
            open_timeout=OPEN_TIMEOUT if remaining is None else min(OPEN_TIMEOUT, remaining),
            close_timeout=CLOSE_TIMEOUT,
            max_size=MAX_MESSAGE_BYTES,
        )

    def _opened(self, text: str, on_open: Callable[[JsonObject], None] | None) -> None:
        """The first message: ``{"tail": {"session_id", "run_id", "after"}}``, or a batch's
        ``{"tail": {"batch_id", "after"}}``; only ``after`` is read here."""
        tail = _decode(text).get("tail")
        if not isinstance(tail, dict):
            raise TailError("the stream did not start with its opening message")
        if self.after is None and isinstance(tail.get("after"), str):
            self.after = tail["after"]  # a reconnection before any event resumes here
        if self._announced:
            self.notify("reconnected")
            self._announced = False
        if on_open is not None and not self._opened_before:
            on_open(tail)
        self._opened_before = True

    def _deliver(self, text: str, on_event: EventHandler) -> bool:
        """Hand the event on if it is new. An event without an ID (a batch stream's
        snapshot of the batch as it is) is always handed on and leaves the cursor alone."""
        event = _decode(text)
        event_id = event.get("id")
        if not is_after(event_id, self.after):
            return False  # already handed on (the server never repeats; be sure anyway)
        on_event(event, text)
        if isinstance(event_id, str):
            self.after = event_id
        return True

    def _wait_to_retry(self, decision: Decision, deadline: float | None) -> None:
        fresh = not self.backoff.in_outage
        delay = self.backoff.next_delay()
        if delay is None:
            raise TailError(
                f"gave up reconnecting after {self.backoff.give_up:g}s ({decision.why})"
            )
        if fresh and not self._announced:
            self.notify(f"{decision.why}; reconnecting")
            self._announced = True
        remaining = _remaining(deadline)
        if remaining is not None and remaining < delay:
            self.sleep(remaining)
            raise TailTimeout
        self.sleep(delay)


def _decode(text: str) -> dict[str, Any]:
    try:
        decoded = json.loads(text)
    except ValueError:
        raise TailError("the stream sent a message that is not JSON") from None
    if not isinstance(decoded, dict):
        raise TailError("the stream sent a message that is not a JSON object")
    return decoded
