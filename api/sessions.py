"""Sessions and runs: create, queue prompts, read results and history."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, request

from api.auth import require_owner
from api.errors import InvalidInput, NotFound
from api.extensions import Services, get_services
from api.schemas import CreateRun, CreateSession, run_json, session_json
from api.validation import parse_body
from orchestrator.db import session_scope
from orchestrator.errors import NotFoundError
from orchestrator.history import EventHistory, InvalidCursor
from orchestrator.models import Run
from orchestrator.sessions import NewSession, SessionService

bp = Blueprint("sessions", __name__, url_prefix="/api/v1")

Reply = tuple[dict[str, Any], int]


def _enqueue(services: Services, run: Run) -> None:
    # Only after the commit: the task must never find its row missing.
    services.celery.send_task("ccq.run_prompt", args=[str(run.id)])


@bp.post("/sessions")
@require_owner
def create_session(owner: str) -> Reply:
    """Create a session; with ``prompt``, also queue its first run."""
    body = parse_body(CreateSession)
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
    if run is not None:
        _enqueue(services, run)
    return {"session": session_json(session), "run": run_json(run) if run else None}, (
        201 if created else 200
    )


@bp.get("/sessions/<uuid:session_id>")
@require_owner
def show_session(owner: str, session_id: uuid.UUID) -> Reply:
    """A session with its state, cost, runs count and last run."""
    with get_services().session_factory() as db:
        try:
            session = SessionService(db, owner).get(session_id)
        except NotFoundError as exc:
            raise NotFound(exc.message) from None
        last = session.runs[-1] if session.runs else None
        return {"session": session_json(session, last)}, 200


@bp.post("/sessions/<uuid:session_id>/runs")
@require_owner
def queue_run(owner: str, session_id: uuid.UUID) -> Reply:
    """Queue a prompt on the session (202); runs of a session execute in order."""
    body = parse_body(CreateRun)
    services = get_services()
    with session_scope(services.session_factory) as db:
        try:
            run, created = SessionService(db, owner).queue_run(
                session_id, body.prompt, idempotency_key=body.idempotency_key
            )
        except NotFoundError as exc:
            raise NotFound(exc.message) from None
    if created:
        _enqueue(services, run)
    return {"run": run_json(run)}, 202


@bp.get("/runs/<uuid:run_id>")
@require_owner
def show_run(owner: str, run_id: uuid.UUID) -> Reply:
    with get_services().session_factory() as db:
        try:
            return {"run": run_json(SessionService(db, owner).get_run(run_id))}, 200
        except NotFoundError as exc:
            raise NotFound(exc.message) from None


@bp.get("/runs/<uuid:run_id>/events")
@require_owner
def run_events(owner: str, run_id: uuid.UUID) -> Reply:
    """The run's events in order, after the ``after`` cursor, at most ``limit``."""
    after = request.args.get("after")
    limit_text = request.args.get("limit", "500")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 5000:
        raise InvalidInput(
            "limit: must be an integer from 1 to 5000",
            [{"field": "limit", "reason": "must be an integer from 1 to 5000"}],
        )
    services = get_services()
    with services.session_factory() as db:
        try:
            SessionService(db, owner).get_run(run_id)
            events = EventHistory(db).for_run(run_id, after=after, limit=int(limit_text))
        except NotFoundError as exc:
            raise NotFound(exc.message) from None
        except InvalidCursor as exc:
            raise InvalidInput(f"after: {exc}", [{"field": "after", "reason": str(exc)}]) from None
    return {
        "events": [e.to_json() for e in events],
        "next_after": events[-1].id if events else after,
    }, 200
