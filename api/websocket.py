"""WebSocket plumbing shared by the live streams: admission, close codes, bounded sends,
pings, and closing a stream whose credential lapsed.

Each socket is served by one greenlet (the API runs on gevent, see ``api.serve``), the
socket's only writer of messages; simple-websocket's reader greenlet answers pings and
sends the 1009 close. Sends are bounded by ``CCQ_TAIL_SEND_TIMEOUT``: a client that takes
no bytes for that long is cut off without a close frame (whatever the server sends would
sit behind what it did not read).

Before the upgrade, a stream authenticates its caller and takes one of the owner's
``CCQ_MAX_TAILS_PER_OWNER`` slots (``api.owner_slots``); over the cap the request is
answered 429 with Retry-After, as plain HTTP. A bad token still upgrades and closes 4401.
Clients have nothing to say on a stream: their messages are read and dropped as they
arrive, and one longer than ``CCQ_WS_MAX_MESSAGE_BYTES`` closes the stream with 1009.
While open, a stream checks every ``CREDENTIAL_CHECK_SECONDS`` that its owner JWT has not
expired (exp plus the leeway) and that its session token is still live (not revoked, its
run still running), else it closes with 4401.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from functools import wraps
from typing import Any

import gevent
import redis
from flask import Blueprint, Response, g, request
from simple_websocket import ConnectionClosed, Server
from sqlalchemy.exc import OperationalError
from wsproto.events import Ping, TextMessage

from api import owner_slots
from api.auth import Principal, current_principal
from api.errors import Unauthorized
from api.extensions import Services, get_services
from orchestrator.auth import session_tokens
from orchestrator.errors import NotFoundError
from orchestrator.streams.stream_ids import InvalidCursor, parse_stream_id

log = logging.getLogger(__name__)

# Bounds what the kernel buffers per socket (500 tails x 256 KiB at most), and makes a
# client that stopped reading block the sender soon, where the send timeout sees it.
SEND_BUFFER_BYTES = 256 * 1024
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason

Position = tuple[int, int]


# How often an open stream looks at its credential (a short DB read for session tokens).
CREDENTIAL_CHECK_SECONDS = 2.0
# How long a stream closed 1009 waits for its client to stop sending and close.
LINGER_SECONDS = 5.0


class Close(IntEnum):
    NORMAL = 1000
    POLICY = 1008
    TOO_BIG = 1009  # sent by simple-websocket's reader (max_message_size)
    INTERNAL = 1011
    INVALID_INPUT = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    TOO_SLOW = 4408
    GONE = 4410
    UNAVAILABLE = 4503


class StreamClosed(Exception):
    """Ends a stream with a close code and a reason for the client."""

    def __init__(self, code: Close, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ClientStalled(Exception):
    """The client took no bytes for the send timeout."""


class _Dropped(list[Any]):
    """simple-websocket's input buffer for streams: every message is dropped on arrival."""

    def append(self, item: Any) -> None:
        pass


class StreamServer(Server):  # type: ignore[misc]
    """simple-websocket's server keeping nothing a client sends.

    Its reader greenlet bounds a message being received by ``max_message_size`` (1009),
    and finished messages go to an input buffer nobody reads: a property here, so even
    the assignment in ``Base.__init__`` (made before the reader starts) cannot swap it.
    """

    @property
    def input_buffer(self) -> list[Any]:
        return _Dropped()

    @input_buffer.setter
    def input_buffer(self, value: list[Any]) -> None:
        pass

    def _handle_events(self) -> bool:
        keep_going: bool = super()._handle_events()
        if not keep_going and self.incoming_message_len > (self.max_message_size or 0):
            self._linger()
        return keep_going

    def _linger(self) -> None:
        """After the 1009 close: end our side, and drop what the client still sends until
        it closes too (or LINGER_SECONDS pass). Closing with its bytes unread would reset
        the connection, and the client might lose the close frame and never see 1009."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(LINGER_SECONDS, False):
                while self.sock.recv(64 * 1024):
                    pass


@dataclass
class Admission:
    """What a stream knows before its upgrade: its caller (or why not) and its slot."""

    who: Principal | None
    refused: str | None
    slot: owner_slots.Slot | None
    next_check: float = 0.0


class _WebSocketResponse(Response):
    """The response after a stream ended: the socket was taken over, nothing to send."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if request.environ.get("gunicorn.socket") is not None:
            raise StopIteration()  # gunicorn: the connection is done (as flask-sock does)
        if "werkzeug.socket" in request.environ:
            return super().__call__(*args, **kwargs)
        return []


class StreamRoutes:
    """``@sock.route`` for streams: admission before the upgrade, then a StreamServer.

    Replaces flask-sock's ``Sock`` (whose route builds a plain Server, keeping every
    message a client sends, and upgrades before the view can refuse).
    """

    def route(self, path: str, bp: Blueprint) -> Callable[[Callable[..., None]], None]:
        def decorator(view: Callable[..., None]) -> None:
            @wraps(view)
            def endpoint(**kwargs: Any) -> Response:
                services = get_services()
                g.stream_admission = admission = _admit(services)
                try:
                    ws = StreamServer(
                        request.environ, max_message_size=services.settings.ws_max_message_bytes
                    )
                    with contextlib.suppress(ConnectionClosed):
                        view(ws, **kwargs)
                    with contextlib.suppress(Exception):
                        ws.close()
                finally:
                    if admission.slot is not None:
                        with contextlib.suppress(redis.RedisError):
                            admission.slot.release()
                return _WebSocketResponse()

            bp.route(path, websocket=True)(endpoint)

        return decorator


sock = StreamRoutes()


def _admit(services: Services) -> Admission:
    """Authenticate and take the owner's slot; a 429 (raised) answers the HTTP request."""
    try:
        who = current_principal(allow_query_token=True)
    except Unauthorized as exc:
        return Admission(None, exc.message, None)
    settings = services.settings
    slot = owner_slots.acquire(
        services.redis,
        "tails",
        who.owner,
        settings.max_tails_per_owner,
        "CCQ_MAX_TAILS_PER_OWNER",
    )
    return Admission(who, None, slot, time.monotonic() + CREDENTIAL_CHECK_SECONDS)


def principal() -> Principal:
    """Who the stream is for: the header's token, or ``?access_token=`` (browsers)."""
    admission: Admission = g.stream_admission
    if admission.who is None:
        raise StreamClosed(Close.UNAUTHORIZED, admission.refused or "unauthorized")
    return admission.who


def still_admitted(services: Services) -> None:
    """Called from a stream's loop: keep its slot, and end it if its credential lapsed.

    Raises:
        StreamClosed: 4401 once the JWT expired or the session token is no longer live.
    """
    admission: Admission = g.stream_admission
    now = time.monotonic()
    if admission.who is None or now < admission.next_check:
        return
    admission.next_check = now + CREDENTIAL_CHECK_SECONDS
    if admission.slot is not None:
        admission.slot.refresh()
    who = admission.who
    if who.valid_until is not None and time.time() >= who.valid_until:
        raise StreamClosed(Close.UNAUTHORIZED, "token expired")
    if who.session_token is not None:
        with services.session_factory() as db:
            live = session_tokens.resolve(db, who.session_token)
        if live is None:
            raise StreamClosed(Close.UNAUTHORIZED, "session token revoked (its run ended)")


def parse_after() -> Position | None:
    """The ``?after=<event id>`` cursor, if given."""
    text = request.args.get("after")
    if text is None:
        return None
    try:
        return parse_stream_id(text)
    except InvalidCursor as exc:
        raise StreamClosed(Close.INVALID_INPUT, f"after: {exc}") from None


@contextlib.contextmanager
def serving(ws: Any, send_timeout: float, resume_from: Callable[[], str | None]) -> Iterator[None]:
    """Turn how serving a stream ended into the client's close frame.

    ``resume_from`` says where a client resumes after a dependency failed (None: unknown).
    """
    try:
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        yield
    except StreamClosed as exc:
        close(ws, exc.code, exc.reason)
    except NotFoundError as exc:
        close(ws, Close.NOT_FOUND, exc.message)
    except ClientStalled:
        log.warning("tail client stalled for %.0f s; disconnected", send_timeout)
        abort(ws)
    except ConnectionClosed:
        pass  # the client left
    except (redis.RedisError, OperationalError) as exc:
        log.warning("tail lost a dependency: %s", exc)
        after = resume_from()
        close(
            ws,
            Close.UNAVAILABLE,
            "event store unavailable" + (f"; resume with after={after}" if after else ""),
        )
    except Exception:
        log.exception("tail failed")
        close(ws, Close.INTERNAL, "internal error")


def send_json(ws: Any, message: dict[str, Any], timeout: float) -> None:
    send(ws, json.dumps(message), timeout)


def send(ws: Any, text: str, timeout: float) -> None:
    if not ws.connected:  # e.g. the reader closed it 1009, and closed the socket
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    # sendall: under gevent a plain send may write part of a frame, and simple-websocket's
    # own send() drops the rest.
    with gevent.Timeout(timeout, ClientStalled):
        ws.sock.sendall(ws.ws.send(TextMessage(data=text)))


def ping(ws: Any, timeout: float) -> None:
    """A protocol ping from this greenlet, the socket's only writer.

    simple-websocket's own ``ping_interval`` pings from its reader greenlet, which would
    then write to a socket this greenlet may be blocked writing to.
    """
    if not ws.connected:
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    if not ws.pong_received:
        raise StreamClosed(Close.POLICY, "no pong to the last ping")
    ws.pong_received = False
    with gevent.Timeout(timeout, ClientStalled):
        ws.sock.sendall(ws.ws.send(Ping()))


def close(ws: Any, code: Close, reason: str) -> None:
    encoded = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    try:
        with gevent.Timeout(5, ClientStalled):
            ws.close(reason=int(code), message=encoded)
    except (ConnectionClosed, ClientStalled, OSError):
        abort(ws)


def abort(ws: Any) -> None:
    """Drop the connection without a close frame (the client is not reading)."""
    ws.connected = False
    with contextlib.suppress(OSError):
        ws.sock.shutdown(socket.SHUT_RDWR)
    ws.sock.close()
