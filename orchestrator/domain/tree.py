"""Session trees: ancestry, descendants and tree costs, each in one recursive query.

Trees are shallow (``CCQ_MAX_DEPTH``) and small (``CCQ_MAX_TREE_SESSIONS``), so a
recursive CTE over ``parent_id`` answers every question without a materialised path.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import aliased

from orchestrator.db.models import Session


def lineage(db: DbSession, session_id: uuid.UUID) -> list[uuid.UUID]:
    """The session's ancestors from its root down, then the session itself."""
    up = (
        select(Session.id, Session.parent_id, literal(0).label("hops"))
        .where(Session.id == session_id)
        .cte("up", recursive=True)
    )
    parent = aliased(Session)
    up = up.union_all(
        select(parent.id, parent.parent_id, (up.c.hops + 1).label("hops")).join(
            up, parent.id == up.c.parent_id
        )
    )
    rows = db.execute(select(up.c.id).order_by(up.c.hops.desc())).scalars().all()
    return list(rows)


def is_within(db: DbSession, scope_id: uuid.UUID, session_id: uuid.UUID) -> bool:
    """Whether ``session_id`` is ``scope_id`` itself or one of its descendants."""
    return session_id == scope_id or scope_id in lineage(db, session_id)


def descendants(db: DbSession, session_id: uuid.UUID) -> list[uuid.UUID]:
    """Every descendant of the session (not itself), parents before their children."""
    down = (
        select(Session.id, literal(1).label("level"))
        .where(Session.parent_id == session_id)
        .cte("down", recursive=True)
    )
    child = aliased(Session)
    down = down.union_all(
        select(child.id, (down.c.level + 1).label("level")).join(down, child.parent_id == down.c.id)
    )
    return list(db.execute(select(down.c.id).order_by(down.c.level)).scalars().all())


def tree_costs(db: DbSession, session_ids: list[uuid.UUID]) -> dict[uuid.UUID, Decimal]:
    """Each session's own cost plus every descendant's, for many sessions in one query."""
    if not session_ids:
        return {}
    # (origin, member): every session of each origin's subtree, the origin included.
    subtree = (
        select(Session.id.label("origin"), Session.id.label("member"))
        .where(Session.id.in_(session_ids))
        .cte("subtree", recursive=True)
    )
    child = aliased(Session)
    subtree = subtree.union_all(
        select(subtree.c.origin, child.id).join(child, child.parent_id == subtree.c.member)
    )
    rows = db.execute(
        select(subtree.c.origin, func.coalesce(func.sum(Session.total_cost_usd), 0))
        .join(Session, Session.id == subtree.c.member)
        .group_by(subtree.c.origin)
    ).all()
    return {origin: Decimal(total) for origin, total in rows}


def children_counts(db: DbSession, session_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many direct children each session has."""
    if not session_ids:
        return {}
    rows = db.execute(
        select(Session.parent_id, func.count())
        .where(Session.parent_id.in_(session_ids))
        .group_by(Session.parent_id)
    ).all()
    return {parent_id: count for parent_id, count in rows if parent_id is not None}
