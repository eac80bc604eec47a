"""Live tails over WebSockets: a session's or a run's events, replayed from a cursor.

Each socket is served by one greenlet (see ``api.websocket``) that reads the session's
Redis stream with blocking reads and writes to its client. Nothing is queued in between,
so a slow client holds one batch and a bounded socket buffer, and the worker, Redis and
the other tails never wait for it:

* a client that takes no bytes for ``CCQ_TAIL_SEND_TIMEOUT`` is cut off (it cannot be
  told anything more: whatever the server sends sits behind what it did not read);
* a client that reads, but more than ``CCQ_TAIL_MAX_LAG`` behind the newest event, gets
  close code 4408 with the ID to resume from.

The first message is ``{"tail": {"session_id", "run_id", "after"}}``: the stream is live
from ``after`` on. Every other message is an event. Close codes carry the reason as text:
1000 a run stream's run finished, 1009 a client message over CCQ_WS_MAX_MESSAGE_BYTES,
4400 invalid input (the field named), 4401 bad token, or the token expired (exp plus
CCQ_JWT_LEEWAY_SECONDS) or the session token was revoked while the stream was open,
4404 unknown or another owner's ID, 4408 too far behind, 4410 session deleted, 4503 Redis
or PostgreSQL unavailable (retry with ``after``). Before the upgrade: 429 with Retry-After
when the owner already has CCQ_MAX_TAILS_PER_OWNER streams open (see ``api.websocket``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint

from api.auth import Principal
from api.extensions import TAIL_BLOCK_SECONDS, Services, get_services
from api.websocket import (
    Close,
    Position,
    StreamClosed,
    close,
    parse_after,
    ping,
    principal,
    send,
    serving,
    sock,
    still_admitted,
)
from orchestrator.db.models import Run, RunStatus
from orchestrator.domain.sessions import SessionService
from orchestrator.streams.events import SESSION_DELETED
from orchestrator.streams.stream_ids import format_stream_id
from orchestrator.streams.tail import EventTail, TailEvent, TailTooSlow, live_start, run_start

bp = Blueprint("streams", __name__, url_prefix="/api/v1")

# A finished run whose final event never came (a run from before such events) ends its
# stream this long after it finished.
FINISHED_RUN_GRACE = timedelta(seconds=10)


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


def _serve(ws: Any, resolve: Callable[[Services, Principal, Position | None], Scope]) -> None:
    services = get_services()
    settings = services.settings
    tail: EventTail | None = None
    with serving(ws, settings.tail_send_timeout, lambda: tail.after if tail else None):
        scope = resolve(services, principal(), parse_after())
        send(ws, _opening(scope), settings.tail_send_timeout)
        tail = EventTail(
            services.stream_redis,
            services.session_factory,
            scope.session_id,
            scope.cursor,
            run_id=scope.run_id,
            block_seconds=TAIL_BLOCK_SECONDS,
            max_lag_seconds=settings.tail_max_lag,
        )
        try:
            _pump(ws, services, tail, scope)
        except TailTooSlow as exc:
            close(ws, Close.TOO_SLOW, f"too far behind; resume with after={exc.after}")


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
        still_admitted(services)
        for event in batch:
            send(ws, event.json, settings.tail_send_timeout)
            _end_if_final(scope, event)
        if time.monotonic() >= next_ping:
            ping(ws, settings.tail_send_timeout)
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
