"""Sessions as the API shows them, scoped to who is asking."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session as DbSession

from api.auth import Principal
from api.schemas import session_json
from orchestrator.db.models import Session
from orchestrator.domain import tree
from orchestrator.domain.sessions import SessionService


def scoped(db: DbSession, who: Principal) -> SessionService:
    """The caller's sessions: all the owner's, or a session token's tree."""
    return SessionService(db, who.owner, who.scope)


def describe_sessions(
    db: DbSession, service: SessionService, sessions: list[Session]
) -> list[dict[str, Any]]:
    """Sessions as JSON with their last run, tree cost and children count (3 queries)."""
    ids = [s.id for s in sessions]
    last_runs = service.last_runs(ids)
    costs = tree.tree_costs(db, ids)
    counts = tree.children_counts(db, ids)
    return [
        session_json(
            s,
            last_runs.get(s.id),
            tree_cost_usd=costs.get(s.id),
            children_count=counts.get(s.id, 0),
        )
        for s in sessions
    ]
