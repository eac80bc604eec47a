"""Sessions and runs: create, queue prompts, read results and history."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from flask import Blueprint, request
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import update

from api.auth import require_owner
from api.errors import DependencyDown, InvalidInput
from api.extensions import Services, get_services
from api.schemas import (
    CreateRun,
    CreateSession,
    ListSessionsQuery,
    check_prompt_size,
    decode_cursor,
    encode_cursor,
    run_json,
    session_json,
)
from api.validation import parse_body
from orchestrator.cancellation import signal_cancel
from orchestrator.db import session_scope
from orchestrator.events import WireEvent, publish_pending
from orchestrator.history import EventHistory
from orchestrator.models import Run, RunStatus
from orchestrator.sessions import NewSession, SessionService
from orchestrator.stream_ids import InvalidCursor, parse_stream_id

log = logging.getLogger(__name__)

bp = Blueprint("sessions", __name__, url_prefix="/api/v1")

Reply = tuple[dict[str, Any], int]


def _announce(services: Services, service: SessionService) -> None:
    """Publish the lifecycle events of a committed change (run queued, cancelled, ...)."""
    publish_pending(services.redis, services.session_factory, service.outbox)


def _dispatch(services: Services, service: SessionService, run: Run | None) -> None:
    """Announce a committed change and queue its new run, in that order.

    Only after the commit: the task must never find its row missing. If Redis is down at
    this point, the run is marked failed (it would otherwise wait forever for a task that
    was never sent) and the client gets a 503 it can retry.
    """
    try:
        _announce(services, service)
        if run is not None:
            services.celery.send_task("ccq.run_prompt", args=[str(run.id)])
    except (redis.RedisError, KombuOperationalError) as exc:
        log.warning("could not queue run %s: %s", run.id if run else None, exc)
        if run is not None:
            _fail_unqueued(services, run.id)
        raise DependencyDown(
            "redis is unavailable: the run was not queued (it is marked failed); retry later"
        ) from None


def _fail_unqueued(services: Services, run_id: uuid.UUID) -> None:
    with session_scope(services.session_factory) as db:
        db.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
            .values(
                status=RunStatus.FAILED,
                error="not queued: redis was unavailable",
                finished_at=datetime.now(UTC),
            )
        )


@bp.post("/sessions")
@require_owner
def create_session(owner: str) -> Reply:
    """Create a session; with ``prompt``, also queue its first run."""
    body = parse_body(CreateSession)
    check_prompt_size(body.prompt)
    services = get_services()
    with session_scope(services.session_factory) as db:
        sessions = SessionService(db, owner)
        session, created = sessions.create(
            NewSession(
                model=body.model,
                options=body.cli_options(),
                metadata=body.metadata,
                idempotency_key=body.idempotency_key,
            )
        )
        run = None
        if body.prompt is not None and created:
            run, _ = sessions.queue_run(session.id, body.prompt)
    _dispatch(services, sessions, run)
    return {"session": session_json(session), "run": run_json(run) if run else None}, (
        201 if created else 200
    )


@bp.get("/sessions/<uuid:session_id>")
@require_owner
def show_session(owner: str, session_id: uuid.UUID) -> Reply:
    """A session with its state, cost, runs count and last run."""
    with get_services().session_factory() as db:
        service = SessionService(db, owner)
        session = service.get(session_id)
        last = service.last_runs([session.id]).get(session.id)
        return {"session": session_json(session, last)}, 200


@bp.post("/sessions/<uuid:session_id>/runs")
@require_owner
def queue_run(owner: str, session_id: uuid.UUID) -> Reply:
    """Queue a prompt on the session (202); ``?wait=<s>`` answers 200 with the finished run."""
    body = parse_body(CreateRun)
    check_prompt_size(body.prompt)
    wait = _wait_seconds()
    services = get_services()
    with session_scope(services.session_factory) as db:
        sessions = SessionService(db, owner)
        run, created = sessions.queue_run(
            session_id, body.prompt, idempotency_key=body.idempotency_key
        )
    _dispatch(services, sessions, run if created else None)
    if wait is not None:
        run = _wait_until_final(services, owner, run, wait)
        if RunStatus(run.status).is_final:
            return {"run": run_json(run)}, 200
    return {"run": run_json(run)}, 202


@bp.get("/runs/<uuid:run_id>")
@require_owner
def show_run(owner: str, run_id: uuid.UUID) -> Reply:
    with get_services().session_factory() as db:
        return {"run": run_json(SessionService(db, owner).get_run(run_id))}, 200


@bp.get("/runs/<uuid:run_id>/events")
@require_owner
def run_events(owner: str, run_id: uuid.UUID) -> Reply:
    """The run's events in stream order, after the ``after`` event ID, at most ``limit``."""
    after, limit = _history_page_args()
    with get_services().session_factory() as db:
        SessionService(db, owner).get_run(run_id)
        events = EventHistory(db).for_run(run_id, after=after, limit=limit)
    return _history_page(events, after)


@bp.get("/sessions/<uuid:session_id>/events")
@require_owner
def session_events(owner: str, session_id: uuid.UUID) -> Reply:
    """The session's events (all its runs) in stream order, paged like a run's."""
    after, limit = _history_page_args()
    with get_services().session_factory() as db:
        SessionService(db, owner).get(session_id)
        events = EventHistory(db).for_session(session_id, after=after, limit=limit)
    return _history_page(events, after)


MAX_EVENTS_PAGE = 5000


def _history_page_args() -> tuple[str | None, int]:
    """``after`` (an event ID, checked) and ``limit`` (1 to MAX_EVENTS_PAGE, default 500)."""
    after = request.args.get("after")
    if after is not None:
        try:
            parse_stream_id(after)
        except InvalidCursor as exc:
            raise InvalidInput(f"after: {exc}", [{"field": "after", "reason": str(exc)}]) from None
    limit_text = request.args.get("limit", "500")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_EVENTS_PAGE:
        reason = f"must be an integer from 1 to {MAX_EVENTS_PAGE}"
        raise InvalidInput(f"limit: {reason}", [{"field": "limit", "reason": reason}])
    return after, int(limit_text)


def _history_page(events: list[WireEvent], after: str | None) -> Reply:
    # `next_after` is where the next page (or a live tail) continues from.
    return {
        "events": [e.to_json() for e in events],
        "next_after": events[-1].id if events else after,
    }, 200


MAX_WAIT_SECONDS = 300.0
WAIT_POLL_SECONDS = 0.25


def _wait_seconds() -> float | None:
    text = request.args.get("wait")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        reason = f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}"
        raise InvalidInput(f"wait: {reason}", [{"field": "wait", "reason": reason}])
    return seconds


def _wait_until_final(services: Services, owner: str, run: Run, seconds: float) -> Run:
    """Poll the run's row until it finishes or ``seconds`` pass (the caller asked to wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with services.session_factory() as db:
            current = SessionService(db, owner).get_run(run.id)
        if RunStatus(current.status).is_final:
            return current
        time.sleep(WAIT_POLL_SECONDS)
    return run


@bp.get("/sessions")
@require_owner
def list_sessions(owner: str) -> Reply:
    """The caller's sessions, newest first; filters and an opaque ``cursor`` for paging."""
    query = ListSessionsQuery.model_validate(request.args.to_dict())
    with get_services().session_factory() as db:
        service = SessionService(db, owner)
        rows = service.list_sessions(
            status=query.status,
            parent_id=query.parent_id,
            batch_id=query.batch_id,
            limit=query.limit + 1,
            before=decode_cursor(query.cursor) if query.cursor else None,
        )
        page, more = rows[: query.limit], len(rows) > query.limit
        last_runs = service.last_runs([s.id for s in page])
        return {
            "sessions": [session_json(s, last_runs.get(s.id)) for s in page],
            "next_cursor": encode_cursor(page[-1].created_at, page[-1].id) if more else None,
        }, 200


def _after_commit(services: Services, running: list[Run], task: str, session_id: uuid.UUID) -> None:
    """Signal the executors of runs that were running, then hand the container work over."""
    for run in running:
        signal_cancel(services.redis, run.id)
    services.celery.send_task(task, args=[str(session_id)])


@bp.post("/sessions/<uuid:session_id>/stop")
@require_owner
def stop_session(owner: str, session_id: uuid.UUID) -> Reply:
    """Stop a session: pending runs are cancelled, the container stops; resumable."""
    services = get_services()
    with session_scope(services.session_factory) as db:
        sessions = SessionService(db, owner)
        session, running = sessions.stop(session_id)
    _announce(services, sessions)
    _after_commit(services, running, "ccq.stop_session", session_id)
    return {"session": session_json(session)}, 202


@bp.delete("/sessions/<uuid:session_id>")
@require_owner
def delete_session(owner: str, session_id: uuid.UUID) -> Reply:
    """Delete a session, its history, its container and its files."""
    services = get_services()
    with session_scope(services.session_factory) as db:
        sessions = SessionService(db, owner)
        running = sessions.delete(session_id)
    _announce(services, sessions)
    _after_commit(services, running, "ccq.delete_session", session_id)
    return {"deleted": str(session_id)}, 202


@bp.post("/runs/<uuid:run_id>/cancel")
@require_owner
def cancel_run(owner: str, run_id: uuid.UUID) -> Reply:
    """Cancel a run: a queued one never starts, a running one's CLI is killed."""
    services = get_services()
    with session_scope(services.session_factory) as db:
        sessions = SessionService(db, owner)
        run = sessions.cancel_run(run_id)
    _announce(services, sessions)
    if run.status == RunStatus.RUNNING:
        signal_cancel(services.redis, run.id)
    return {"run": run_json(run)}, 202
