"""Child sessions and fan-outs: spawn one child, list a tree, fan out and join."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Blueprint, request
from sqlalchemy import select

from api.auth import Principal, require_principal
from api.describe import describe_sessions, scoped
from api.dispatch import commit_and_queue, commit_and_queue_run
from api.extensions import Services, get_services, request_unit
from api.schemas import (
    ChildrenQuery,
    CliOptionsBody,
    CreateChild,
    CreateFanout,
    check_prompt_size,
    fanout_json,
    run_json,
)
from api.sessions import Reply, check_session_rate_of, pending_cap_error
from api.validation import parse_body
from orchestrator.db.models import Session
from orchestrator.domain import tree
from orchestrator.domain.admission import PendingCapReached
from orchestrator.domain.children import ChildSessions, NewFanout, TreeLimits
from orchestrator.domain.isolation import SessionIsolation
from orchestrator.domain.sessions import NewSession, SessionService

log = logging.getLogger(__name__)

bp = Blueprint("children", __name__, url_prefix="/api/v1")


def _children(service: SessionService, services: Services) -> ChildSessions:
    return ChildSessions(service, TreeLimits.from_settings(services.settings))


def _child_options(
    body: CliOptionsBody, services: Services, sessions: SessionService, parent_id: uuid.UUID
) -> dict[str, Any]:
    """A child's stored options: its CLI knobs, and the box it asked for within its
    parent's (the parent's own box where it asked for nothing)."""
    inherited = SessionIsolation.of(sessions.get(parent_id).options)
    return {**body.cli_options(), **body.isolation_options(services.isolation, inherited)}


@bp.post("/sessions/<uuid:session_id>/children")
@require_principal
def spawn_child(who: Principal, session_id: uuid.UUID) -> Reply:
    """A child session of ``session_id`` with its first prompt queued (201)."""
    body = parse_body(CreateChild)
    check_prompt_size(body.prompt)
    services = get_services()
    check_session_rate_of(services, who.owner, 1)
    uow = request_unit()
    db = uow.db
    sessions = scoped(db, who)
    try:
        child, run, created = _children(sessions, services).spawn(
            session_id,
            body.prompt,
            NewSession(
                model=body.model,
                options=_child_options(body, services, sessions, session_id),
                metadata=body.metadata,
                idempotency_key=body.idempotency_key,
            ),
        )
    except PendingCapReached as exc:
        raise pending_cap_error(exc, "prompt") from None
    (described,) = describe_sessions(db, sessions, [child])
    commit_and_queue_run(uow, services, sessions, run if created else None)
    return {"session": described, "run": run_json(run)}, 201 if created else 200


@bp.get("/sessions/<uuid:session_id>/children")
@require_principal
def list_children(who: Principal, session_id: uuid.UUID) -> Reply:
    """The session's children (``?recursive=true``: the whole subtree, nested), oldest
    first, each with its state, last run, own cost and tree cost."""
    query = ChildrenQuery.model_validate(request.args.to_dict())
    db = request_unit().db
    service = scoped(db, who)
    parent = service.get(session_id)
    if query.recursive:
        ids = tree.descendants(db, parent.id)
        members = list(db.scalars(select(Session).where(Session.id.in_(ids))).all())
    else:
        members = list(db.scalars(select(Session).where(Session.parent_id == parent.id)).all())
    members.sort(key=lambda s: (s.created_at, s.fanout_index or 0, str(s.id)))
    nodes = describe_sessions(db, service, [parent, *members])
    return _nest(nodes[0], nodes[1:]), 200


def _nest(parent: dict[str, Any], members: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"session": parent, "children": [...]}``, each member under its own parent."""
    by_parent: dict[str, list[dict[str, Any]]] = {}
    for node in members:
        by_parent.setdefault(node["parent_id"], []).append(node)
    for node in [parent, *members]:
        node["children"] = by_parent.get(node["id"], [])
    return {"session": parent, "children": parent["children"]}


@bp.post("/sessions/<uuid:session_id>/fanout")
@require_principal
def fanout(who: Principal, session_id: uuid.UUID) -> Reply:
    """One child per prompt, all started now; when every child has ended, the parent gets
    one follow-up run with ``then`` and every child's result (202)."""
    body = parse_body(CreateFanout)
    for index, prompt in enumerate(body.prompts):
        check_prompt_size(prompt, f"prompts.{index}")
    check_prompt_size(body.then, "then")
    services = get_services()
    check_session_rate_of(services, who.owner, len(body.prompts))
    uow = request_unit()
    db = uow.db
    sessions = scoped(db, who)
    options = _child_options(body, services, sessions, session_id)
    try:
        started = _children(sessions, services).fanout(
            session_id,
            NewFanout(
                prompts=body.prompts,
                then=body.then,
                child=NewSession(model=body.model, options=options, metadata=body.metadata),
                idempotency_key=body.idempotency_key,
            ),
        )
    except PendingCapReached as exc:
        raise pending_cap_error(exc, "prompts") from None
    children = describe_sessions(db, sessions, started.children)
    runs = started.runs if started.created else []
    fanout_id = started.fanout.id
    # The children's runs as a chord whose callback resumes the parent. If Redis is down,
    # they are marked failed; the sweeper then resumes the parent with those failures.
    commit_and_queue(
        uow,
        services,
        sessions,
        runs,
        lambda: services.enqueue.fanout([r.id for r in runs], fanout_id),
        unavailable="redis is unavailable: the fan-out's children were not queued (they are "
        "marked failed); retry later",
    )
    return {
        "fanout": fanout_json(started.fanout, [c["id"] for c in children]),
        "children": children,
        "runs": [run_json(r) for r in started.runs],
    }, 202 if started.created else 200


@bp.get("/fanouts/<uuid:fanout_id>")
@require_principal
def show_fanout(who: Principal, fanout_id: uuid.UUID) -> Reply:
    """A fan-out: its state, its children and, once they ended, the parent's follow-up run."""
    db = request_unit().db
    service = scoped(db, who)
    children_service = _children(service, get_services())
    found = children_service.get_fanout(fanout_id)
    children, _ = children_service.members(found.id)
    described = describe_sessions(db, service, children)
    return {
        "fanout": fanout_json(found, [c["id"] for c in described]),
        "children": described,
    }, 200
