"""Live tails over WebSockets: a session's or a run's events, replayed from a cursor.

Each socket is served by one greenlet (the API runs on gevent, see ``api.serve``) that
reads the session's Redis stream with blocking reads and writes to its client. Nothing is
queued in between, so a slow client holds one batch and a bounded socket buffer, and the
worker, Redis and the other tails never wait for it:

* a client that takes no bytes for ``CCQ_TAIL_SEND_TIMEOUT`` is cut off (it cannot be
  told anything more: whatever the server sends sits behind what it did not read);
* a client that reads, but more than ``CCQ_TAIL_MAX_LAG`` behind the newest event, gets
  close code 4408 with the ID to resume from.

The first message is ``{"tail": {"session_id", "run_id", "after"}}``: the stream is live
from ``after`` on. Every other message is an event. Close codes carry the reason as text:
1000 a run stream's run finished, 4400 invalid input (the field named), 4401 bad token,
4404 unknown or another owner's ID, 4408 too far behind, 4410 session deleted, 4503 Redis
or PostgreSQL unavailable (retry with ``after``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import gevent
import redis
from flask import Blueprint, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from sqlalchemy.exc import OperationalError
from wsproto.events import Ping, TextMessage

from api.auth import Principal, current_principal
from api.errors import Unauthorized
from api.extensions import TAIL_BLOCK_SECONDS, Services, get_services
from orchestrator.errors import NotFoundError
from orchestrator.events import SESSION_DELETED
from orchestrator.models import Run, RunStatus
from orchestrator.sessions import SessionService
from orchestrator.stream_ids import InvalidCursor, format_stream_id, parse_stream_id
from orchestrator.tail import EventTail, Position, TailEvent, TailTooSlow, live_start, run_start

log = logging.getLogger(__name__)

bp = Blueprint("streams", __name__, url_prefix="/api/v1")
sock = Sock()

# Bounds what the kernel buffers per socket (500 tails x 256 KiB at most), and makes a
# client that stopped reading block the sender soon, where the send timeout sees it.
SEND_BUFFER_BYTES = 256 * 1024
# A finished run whose final event never came (a run from before such events) ends its
# stream this long after it finished.
FINISHED_RUN_GRACE = timedelta(seconds=10)
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason


class Close(IntEnum):
    NORMAL = 1000
    POLICY = 1008
    INTERNAL = 1011
    INVALID_INPUT = 4400
    UNAUTHORIZED = 4401
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


@dataclass(frozen=True)
class Scope:
    session_id: uuid.UUID
    run_id: uuid.UUID | None
    cursor: Position


@sock.route("/sessions/<uuid:session_id>/stream", bp=bp)
def session_stream(ws: Any, session_id: uuid.UUID) -> None:
    """A session's events: after ``?after=<event id>``, else from now on; never closes."""
    _serve(ws, lambda svc, who, after: _session_scope(svc, who, session_id, after))


@sock.route("/runs/<uuid:run_id>/stream", bp=bp)
def run_stream(ws: Any, run_id: uuid.UUID) -> None:
    """A run's events: after ``?after=``, else from its first; closes after its last."""
    _serve(ws, lambda svc, who, after: _run_scope(svc, who, run_id, after))


def _session_scope(
    services: Services, who: Principal, session_id: uuid.UUID, after: Position | None
) -> Scope:
    with services.session_factory() as db:
        SessionService(db, who.owner, who.scope).get(session_id)
    cursor = after or live_start(services.stream_redis, services.session_factory, session_id)
    return Scope(session_id, None, cursor)


def _run_scope(
    services: Services, who: Principal, run_id: uuid.UUID, after: Position | None
) -> Scope:
    with services.session_factory() as db:
        run = SessionService(db, who.owner, who.scope).get_run(run_id)
        cursor = after or run_start(db, run.id, run.created_at)
        return Scope(run.session_id, run.id, cursor)


def _parse_after() -> Position | None:
    text = request.args.get("after")
    if text is None:
        return None
    try:
        return parse_stream_id(text)
    except InvalidCursor as exc:
        raise StreamClosed(Close.INVALID_INPUT, f"after: {exc}") from None


Resolve = Callable[[Services, Principal, Position | None], Scope]


def _serve(ws: Any, resolve: Resolve) -> None:
    services = get_services()
    settings = services.settings
    tail: EventTail | None = None
    try:
        try:
            who = current_principal(allow_query_token=True)
        except Unauthorized as exc:
            raise StreamClosed(Close.UNAUTHORIZED, exc.message) from None
        after = _parse_after()
        try:
            scope = resolve(services, who, after)
        except NotFoundError as exc:
            raise StreamClosed(Close.NOT_FOUND, exc.message) from None
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        _send(ws, _opening(scope), settings.tail_send_timeout)
        tail = EventTail(
            services.stream_redis,
            services.session_factory,
            scope.session_id,
            scope.cursor,
            run_id=scope.run_id,
            block_seconds=TAIL_BLOCK_SECONDS,
            max_lag_seconds=settings.tail_max_lag,
        )
        _pump(ws, services, tail, scope)
    except StreamClosed as exc:
        _close(ws, exc.code, exc.reason)
    except TailTooSlow as exc:
        _close(ws, Close.TOO_SLOW, f"too far behind; resume with after={exc.after}")
    except ClientStalled:
        log.warning("tail client stalled for %.0f s; disconnected", settings.tail_send_timeout)
        _abort(ws)
    except ConnectionClosed:
        pass  # the client left
    except (redis.RedisError, OperationalError) as exc:
        log.warning("tail lost a dependency: %s", exc)
        resume = f"; resume with after={tail.after}" if tail else ""
        _close(ws, Close.UNAVAILABLE, f"event store unavailable{resume}")
    except Exception:
        log.exception("tail failed")
        _close(ws, Close.INTERNAL, "internal error")


def _opening(scope: Scope) -> str:
    """The first message: where the tail starts, so even a client that leaves before any
    event arrives can resume with ``after`` and miss nothing. Not an event: no ``id``."""
    return json.dumps(
        {
            "tail": {
                "session_id": str(scope.session_id),
                "run_id": str(scope.run_id) if scope.run_id else None,
                "after": format_stream_id(scope.cursor),
            }
        }
    )


def _pump(ws: Any, services: Services, tail: EventTail, scope: Scope) -> None:
    """Send every batch the tail reads until the run ends or the client leaves."""
    settings = services.settings
    next_ping = time.monotonic() + settings.tail_ping_interval
    for batch in tail:
        if not ws.connected:
            return
        for event in batch:
            _send(ws, event.json, settings.tail_send_timeout)
            _end_if_final(scope, event)
        if time.monotonic() >= next_ping:
            _ping(ws, settings.tail_send_timeout)
            next_ping = time.monotonic() + settings.tail_ping_interval
        if not batch and scope.run_id is not None:
            _end_if_run_long_finished(services, scope.run_id)


def _end_if_final(scope: Scope, event: TailEvent) -> None:
    if event.type == SESSION_DELETED:
        raise StreamClosed(Close.GONE, f"session {scope.session_id} was deleted")
    if scope.run_id is not None and event.ends_run:
        raise StreamClosed(Close.NORMAL, "run finished")


def _end_if_run_long_finished(services: Services, run_id: uuid.UUID) -> None:
    with services.session_factory() as db:
        run = db.get(Run, run_id)
    if run is None:
        raise StreamClosed(Close.GONE, f"run {run_id} was deleted")
    finished = run.finished_at if RunStatus(run.status).is_final else None
    if finished is not None and datetime.now(UTC) - finished > FINISHED_RUN_GRACE:
        raise StreamClosed(Close.NORMAL, "run finished")


def _send(ws: Any, text: str, timeout: float) -> None:
    # sendall: under gevent a plain send may write part of a frame, and simple-websocket's
    # own send() drops the rest.
    with gevent.Timeout(timeout, ClientStalled):
        ws.sock.sendall(ws.ws.send(TextMessage(data=text)))


def _ping(ws: Any, timeout: float) -> None:
    """A protocol ping from this greenlet, the socket's only writer.

    simple-websocket's own ``ping_interval`` pings from its reader greenlet, which would
    then write to a socket this greenlet may be blocked writing to.
    """
    if not ws.pong_received:
        raise StreamClosed(Close.POLICY, "no pong to the last ping")
    ws.pong_received = False
    with gevent.Timeout(timeout, ClientStalled):
        ws.sock.sendall(ws.ws.send(Ping()))


def _close(ws: Any, code: Close, reason: str) -> None:
    encoded = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    try:
        with gevent.Timeout(5, ClientStalled):
            ws.close(reason=int(code), message=encoded)
    except (ConnectionClosed, ClientStalled, OSError):
        _abort(ws)


def _abort(ws: Any) -> None:
    """Drop the connection without a close frame (the client is not reading)."""
    ws.connected = False
    with contextlib.suppress(OSError):
        ws.sock.shutdown(socket.SHUT_RDWR)
    ws.sock.close()
