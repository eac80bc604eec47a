"""Sessions and runs: create, queue prompts, read results and history."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from flask import Blueprint, request
from sqlalchemy.orm import Session as DbSession

from api import owner_slots
from api.auth import Principal, require_owner, require_principal
from api.describe import describe_sessions, scoped
from api.dispatch import commit_and_announce, commit_and_queue_run
from api.errors import InvalidInput, TooManyRequests
from api.extensions import Services, get_services, request_unit
from api.rate_limits import check_session_rate
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
from orchestrator.db.models import Run, RunStatus
from orchestrator.domain.admission import PendingCapReached, reserve_pending
from orchestrator.domain.cancellation import signal_cancel
from orchestrator.domain.sessions import NewSession, SessionService
from orchestrator.streams.events import WireEvent
from orchestrator.streams.history import EventHistory
from orchestrator.streams.stream_ids import InvalidCursor, parse_stream_id

log = logging.getLogger(__name__)

bp = Blueprint("sessions", __name__, url_prefix="/api/v1")

Reply = tuple[dict[str, Any], int]


# What a 429 tells a client to wait: about one run's time.
RETRY_AFTER_SECONDS = 30


def check_pending_limit(db: DbSession, services: Services, owner: str, wanted: int = 1) -> None:
    """Raises 429 unless ``wanted`` more runs keep the owner within
    CCQ_MAX_PENDING_RUNS_PER_OWNER runs queued or running outside batches (batches have
    their own cap). Holds the owner's pending lock until the request commits, so
    concurrent requests cannot overshoot."""
    try:
        reserve_pending(db, owner, wanted, services.settings.max_pending_runs_per_owner)
    except PendingCapReached as exc:
        raise pending_cap_error(exc, "prompt") from None


def check_session_rate_of(services: Services, owner: str, wanted: int) -> None:
    """Raises 429 when ``wanted`` more sessions pass the owner's
    CCQ_SESSIONS_PER_MINUTE_PER_OWNER."""
    settings = services.settings
    check_session_rate(
        services.redis, settings.instance, owner, wanted, settings.sessions_per_minute_per_owner
    )


def pending_cap_error(exc: PendingCapReached, field: str) -> TooManyRequests:
    """The 429 for a pending cap: it clears as the owner's runs finish."""
    return TooManyRequests(
        str(exc),
        RETRY_AFTER_SECONDS,
        [{"field": field, "reason": "too many runs pending", "limit": exc.limit}],
    )


@bp.post("/sessions")
@require_owner
def create_session(owner: str) -> Reply:
    """Create a session; with ``prompt``, also queue its first run."""
    body = parse_body(CreateSession)
    check_prompt_size(body.prompt)
    services = get_services()
    check_session_rate_of(services, owner, 1)
    uow = request_unit()
    sessions = SessionService(uow.db, owner)
    session, created = sessions.create(
        NewSession(
            model=body.model,
            options={**body.cli_options(), **body.isolation_options(services.isolation)},
            metadata=body.metadata,
            idempotency_key=body.idempotency_key,
            notify_url=body.notify_url,
        )
    )
    run = None
    if body.prompt is not None and created:
        check_pending_limit(uow.db, services, owner)
        run, _ = sessions.queue_run(session.id, body.prompt)
    commit_and_queue_run(uow, services, sessions, run)
    return {"session": session_json(session), "run": run_json(run) if run else None}, (
        201 if created else 200
    )


@bp.get("/sessions/<uuid:session_id>")
@require_principal
def show_session(who: Principal, session_id: uuid.UUID) -> Reply:
    """A session with its state, cost (own and tree), runs count and last run."""
    db = request_unit().db
    service = scoped(db, who)
    (described,) = describe_sessions(db, service, [service.get(session_id)])
    return {"session": described}, 200


@bp.post("/sessions/<uuid:session_id>/runs")
@require_principal
def queue_run(who: Principal, session_id: uuid.UUID) -> Reply:
    """Queue a prompt on the session (202); ``?wait=<s>`` answers 200 with the finished run."""
    body = parse_body(CreateRun)
    check_prompt_size(body.prompt)
    wait = _wait_seconds()
    services = get_services()
    # Taken before the run is queued: a 429 for the wait must not leave a run behind.
    with _wait_slot(services, who) if wait is not None else contextlib.nullcontext() as slot:
        uow = request_unit()
        check_pending_limit(uow.db, services, who.owner)
        sessions = scoped(uow.db, who)
        run, created = sessions.queue_run(
            session_id, body.prompt, idempotency_key=body.idempotency_key
        )
        commit_and_queue_run(uow, services, sessions, run if created else None)
        if wait is not None and slot is not None:
            run = _wait_until_final(who, run, wait, slot)
            if RunStatus(run.status).is_final:
                return {"run": run_json(run)}, 200
        return {"run": run_json(run)}, 202


@bp.get("/runs/<uuid:run_id>")
@require_principal
def show_run(who: Principal, run_id: uuid.UUID) -> Reply:
    return {"run": run_json(scoped(request_unit().db, who).get_run(run_id))}, 200


@bp.get("/runs/<uuid:run_id>/events")
@require_principal
def run_events(who: Principal, run_id: uuid.UUID) -> Reply:
    """The run's events in stream order, after the ``after`` event ID, at most ``limit``."""
    db = request_unit().db
    return _history_page(
        lambda after, limit: EventHistory(db).for_run(
            scoped(db, who).get_run(run_id).id, after=after, limit=limit
        )
    )


@bp.get("/sessions/<uuid:session_id>/events")
@require_principal
def session_events(who: Principal, session_id: uuid.UUID) -> Reply:
    """The session's events (all its runs) in stream order, paged like a run's."""
    db = request_unit().db
    return _history_page(
        lambda after, limit: EventHistory(db).for_session(
            scoped(db, who).get(session_id).id, after=after, limit=limit
        )
    )


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


def _history_page(read: Callable[[str | None, int], list[WireEvent]]) -> Reply:
    """A page of history from ``read(after, limit)``, once the query's paging is checked
    (a malformed query is refused before anything is looked up)."""
    after, limit = _history_page_args()
    events = read(after, limit)
    # `next_after` is where the next page (or a live tail) continues from.
    return {
        "events": [e.to_json() for e in events],
        "next_after": events[-1].id if events else after,
    }, 200


WAIT_POLL_SECONDS = 0.25


def _wait_seconds() -> float | None:
    text = request.args.get("wait")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    longest = get_services().settings.max_wait_seconds
    if not 0 <= seconds <= longest:  # NaN too
        reason = f"must be a number of seconds from 0 to {longest:g} (CCQ_MAX_WAIT_SECONDS)"
        raise InvalidInput(f"wait: {reason}", [{"field": "wait", "reason": reason}])
    return seconds


def _wait_slot(
    services: Services, who: Principal
) -> contextlib.AbstractContextManager[owner_slots.Slot]:
    """One of the owner's CCQ_MAX_WAITS_PER_OWNER concurrent waits, else a 429."""
    cap = services.settings.max_waits_per_owner
    return owner_slots.holding(services.redis, "waits", who.owner, cap, "CCQ_MAX_WAITS_PER_OWNER")


def _wait_until_final(who: Principal, run: Run, seconds: float, slot: owner_slots.Slot) -> Run:
    """Poll the run's row until it finishes or ``seconds`` pass (the caller asked to wait),
    keeping the owner's wait ``slot`` held meanwhile.

    Each look is a transaction of its own, ended before the pause: a waiting request
    holds no connection while it sleeps. The answer is always a fresh read, never an
    object the last rollback expired: if the session is deleted meanwhile, that read is
    a 404, where reloading the expired run would be a 500.
    """
    uow = request_unit()
    run_id, deadline = run.id, time.monotonic() + seconds
    while True:
        current = scoped(uow.db, who).get_run(run_id)
        if RunStatus(current.status).is_final or time.monotonic() >= deadline:
            return current
        uow.rollback()  # ends the look (and expires what it read) before the pause
        slot.refresh()
        time.sleep(WAIT_POLL_SECONDS)


@bp.get("/sessions")
@require_owner
def list_sessions(owner: str) -> Reply:
    """The caller's sessions, newest first; filters and an opaque ``cursor`` for paging."""
    query = ListSessionsQuery.model_validate(request.args.to_dict())
    db = request_unit().db
    service = SessionService(db, owner)
    rows = service.list_sessions(
        status=query.status,
        parent_id=query.parent_id,
        batch_id=query.batch_id,
        limit=query.limit + 1,
        before=decode_cursor(query.cursor) if query.cursor else None,
    )
    page, more = rows[: query.limit], len(rows) > query.limit
    return {
        "sessions": describe_sessions(db, service, page),
        "next_cursor": encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    }, 200


def _signal_running(services: Services, running: list[Run]) -> None:
    """Tell the executors of runs that were running to kill their CLI."""
    for run in running:
        signal_cancel(services.redis, run.id)


@bp.post("/sessions/<uuid:session_id>/stop")
@require_principal
def stop_session(who: Principal, session_id: uuid.UUID) -> Reply:
    """Stop a session and its descendants: pending runs are cancelled, containers stop;
    resumable."""
    services = get_services()
    uow = request_unit()
    sessions = scoped(uow.db, who)
    session, running, stopped = sessions.stop(session_id)
    commit_and_announce(uow, services, sessions)
    _signal_running(services, running)
    for member in stopped:
        services.enqueue.stop_session(member)
    return {"session": session_json(session), "stopped": [str(m) for m in stopped]}, 202


@bp.delete("/sessions/<uuid:session_id>")
@require_principal
def delete_session(who: Principal, session_id: uuid.UUID) -> Reply:
    """Delete a session and its descendants: history, containers and files."""
    services = get_services()
    uow = request_unit()
    sessions = scoped(uow.db, who)
    removal = sessions.delete(session_id)
    commit_and_announce(uow, services, sessions)
    _signal_running(services, removal.running)
    services.enqueue.delete_session(removal.session_id, removal.lineage, removal.descendants)
    return {"deleted": str(session_id), "descendants": [str(d) for d in removal.descendants]}, 202


@bp.post("/runs/<uuid:run_id>/cancel")
@require_principal
def cancel_run(who: Principal, run_id: uuid.UUID) -> Reply:
    """Cancel a run: a queued one never starts, a running one's CLI is killed; the
    session's descendants' runs are cancelled with it."""
    services = get_services()
    uow = request_unit()
    sessions = scoped(uow.db, who)
    run, descendants_running = sessions.cancel_run(run_id)
    commit_and_announce(uow, services, sessions)
    _signal_running(
        services,
        [run, *descendants_running] if run.status == RunStatus.RUNNING else descendants_running,
    )
    return {"run": run_json(run)}, 202
