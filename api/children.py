"""Child sessions and fan-outs: spawn one child, list a tree, fan out and join."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery import chord
from flask import Blueprint, request
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import select

from api.auth import Principal, require_principal
from api.describe import describe_sessions, scoped
from api.dispatch import announce, dispatch_run, fail_unqueued
from api.errors import DependencyDown
from api.extensions import Services, get_services
from api.schemas import (
    ChildrenQuery,
    CreateChild,
    CreateFanout,
    check_prompt_size,
    fanout_json,
    run_json,
)
from api.sessions import Reply
from api.validation import parse_body
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Session
from orchestrator.domain import tree
from orchestrator.domain.children import ChildSessions, NewFanout, StartedFanout, TreeLimits
from orchestrator.domain.sessions import NewSession, SessionService

log = logging.getLogger(__name__)

bp = Blueprint("children", __name__, url_prefix="/api/v1")


def _children(service: SessionService, services: Services) -> ChildSessions:
    return ChildSessions(service, TreeLimits.from_settings(services.settings))


@bp.post("/sessions/<uuid:session_id>/children")
@require_principal
def spawn_child(who: Principal, session_id: uuid.UUID) -> Reply:
    """A child session of ``session_id`` with its first prompt queued (201)."""
    body = parse_body(CreateChild)
    check_prompt_size(body.prompt)
    services = get_services()
    with session_scope(services.session_factory) as db:
        sessions = scoped(db, who)
        child, run, created = _children(sessions, services).spawn(
            session_id,
            body.prompt,
            NewSession(
                model=body.model,
                options=body.cli_options(),
                metadata=body.metadata,
                idempotency_key=body.idempotency_key,
            ),
        )
        (described,) = describe_sessions(db, sessions, [child])
    dispatch_run(services, sessions, run if created else None)
    return {"session": described, "run": run_json(run)}, 201 if created else 200


@bp.get("/sessions/<uuid:session_id>/children")
@require_principal
def list_children(who: Principal, session_id: uuid.UUID) -> Reply:
    """The session's children (``?recursive=true``: the whole subtree, nested), oldest
    first, each with its state, last run, own cost and tree cost."""
    query = ChildrenQuery.model_validate(request.args.to_dict())
    with get_services().session_factory() as db:
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
    with session_scope(services.session_factory) as db:
        sessions = scoped(db, who)
        started = _children(sessions, services).fanout(
            session_id,
            NewFanout(
                prompts=body.prompts,
                then=body.then,
                child=NewSession(
                    model=body.model, options=body.cli_options(), metadata=body.metadata
                ),
                idempotency_key=body.idempotency_key,
            ),
        )
        children = describe_sessions(db, sessions, started.children)
    if started.created:
        _start_chord(services, sessions, started)
    return {
        "fanout": fanout_json(started.fanout, [c["id"] for c in children]),
        "children": children,
        "runs": [run_json(r) for r in started.runs],
    }, 202 if started.created else 200


def _start_chord(services: Services, sessions: SessionService, started: StartedFanout) -> None:
    """The children's runs as a chord whose callback resumes the parent.

    If Redis is down, the children's runs are marked failed; the sweeper then resumes the
    parent with those failures, and the client gets a 503.
    """
    celery = services.celery
    header = [celery.signature("ccq.run_prompt", args=[str(run.id)]) for run in started.runs]
    callback = celery.signature("ccq.resume_parent", args=[str(started.fanout.id)], immutable=True)
    try:
        announce(services, sessions)
        chord(header, app=celery)(callback)
    except (redis.RedisError, KombuOperationalError) as exc:
        log.warning("could not start fanout %s: %s", started.fanout.id, exc)
        for run in started.runs:
            fail_unqueued(services, run.id)
        raise DependencyDown(
            "redis is unavailable: the fan-out's children were not queued (they are marked "
            "failed); retry later"
        ) from None


@bp.get("/fanouts/<uuid:fanout_id>")
@require_principal
def show_fanout(who: Principal, fanout_id: uuid.UUID) -> Reply:
    """A fan-out: its state, its children and, once they ended, the parent's follow-up run."""
    with get_services().session_factory() as db:
        service = scoped(db, who)
        children_service = _children(service, get_services())
        found = children_service.get_fanout(fanout_id)
        children, _ = children_service.members(found.id)
        described = describe_sessions(db, service, children)
        return {
            "fanout": fanout_json(found, [c["id"] for c in described]),
            "children": described,
        }, 200
