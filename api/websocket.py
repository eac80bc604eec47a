"""WebSocket plumbing shared by the live streams: close codes, bounded sends, pings.

Each socket is served by one greenlet (the API runs on gevent, see ``api.serve``), the
socket's only writer. Sends are bounded by ``CCQ_TAIL_SEND_TIMEOUT``: a client that takes
no bytes for that long is cut off without a close frame (whatever the server sends would
sit behind what it did not read).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import Any

import gevent
import redis
from flask import request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from sqlalchemy.exc import OperationalError
from wsproto.events import Ping, TextMessage

from api.auth import Principal, current_principal
from api.errors import Unauthorized
from orchestrator.errors import NotFoundError
from orchestrator.streams.stream_ids import InvalidCursor, parse_stream_id

log = logging.getLogger(__name__)

sock = Sock()

# Bounds what the kernel buffers per socket (500 tails x 256 KiB at most), and makes a
# client that stopped reading block the sender soon, where the send timeout sees it.
SEND_BUFFER_BYTES = 256 * 1024
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason

Position = tuple[int, int]


class Close(IntEnum):
    NORMAL = 1000
    POLICY = 1008
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


def principal() -> Principal:
    """Who the stream is for: the header's token, or ``?access_token=`` (browsers)."""
    try:
        return current_principal(allow_query_token=True)
    except Unauthorized as exc:
        raise StreamClosed(Close.UNAUTHORIZED, exc.message) from None


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
    # sendall: under gevent a plain send may write part of a frame, and simple-websocket's
    # own send() drops the rest.
    with gevent.Timeout(timeout, ClientStalled):
        ws.sock.sendall(ws.ws.send(TextMessage(data=text)))


def ping(ws: Any, timeout: float) -> None:
    """A protocol ping from this greenlet, the socket's only writer.

    simple-websocket's own ``ping_interval`` pings from its reader greenlet, which would
    then write to a socket this greenlet may be blocked writing to.
    """
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
