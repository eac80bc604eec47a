"""``WS /api/v1/batches/<id>/stream``: a batch's progress events, live and replayable.

The first message is ``{"tail": {"batch_id", "after"}}``. Then events
``{"id", "batch_id", "type", "data": {"batch", "item"}}``, each with the batch's whole
state: ``ccq.batch.progress`` when an item starts or ends (``item`` says which) or the
batch is cancelled, and ``ccq.batch.finished`` last, after which the stream closes with
1000. Without ``?after`` (or when the stream no longer holds what followed it) the first
event is a snapshot from PostgreSQL with ``"id": null``; ``after`` in the opening message
is where to resume. Close codes are those of the session streams (``api.streams``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint

from api.extensions import TAIL_BLOCK_SECONDS, get_services
from api.websocket import (
    Close,
    StreamClosed,
    parse_after,
    ping,
    principal,
    send,
    send_json,
    serving,
    sock,
    still_admitted,
)
from orchestrator.domain.batches import BatchService
from orchestrator.streams.batch_events import BatchFeed

bp = Blueprint("batch_stream", __name__, url_prefix="/api/v1")


@sock.route("/batches/<uuid:batch_id>/stream", bp=bp)
def batch_stream(ws: Any, batch_id: uuid.UUID) -> None:
    """The batch's progress until it finishes."""
    services = get_services()
    settings = services.settings
    feed: BatchFeed | None = None
    with serving(ws, settings.tail_send_timeout, lambda: feed.after if feed else None):
        who = principal()
        if who.scope is not None:
            raise StreamClosed(Close.FORBIDDEN, "a session token cannot follow batches")
        after = parse_after()
        with services.session_factory() as db:
            BatchService(db, who.owner).get(batch_id)
        feed = BatchFeed(
            services.stream_redis,
            services.session_factory,
            batch_id,
            after,
            block_seconds=TAIL_BLOCK_SECONDS,
        )
        opening = {"tail": {"batch_id": str(batch_id), "after": feed.after}}
        send_json(ws, opening, settings.tail_send_timeout)
        next_ping = time.monotonic() + settings.tail_ping_interval
        for events in feed:
            if not ws.connected:
                return
            still_admitted(services)
            for event in events:
                send(ws, event.to_json(), settings.tail_send_timeout)
                if event.is_final:
                    raise StreamClosed(Close.NORMAL, f"batch {event.data['batch']['status']}")
            if time.monotonic() >= next_ping:
                ping(ws, settings.tail_send_timeout)
                next_ping = time.monotonic() + settings.tail_ping_interval
