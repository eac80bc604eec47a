"""Admission: whether a run may start now, so one owner's batch cannot take every slot.

A run waits (its task retries later, holding no worker slot) while its owner already
has ``CCQ_MAX_RUNS_PER_OWNER`` runs running, or its batch has ``max_concurrency``. The
check runs in the claim's transaction under a per-owner advisory lock, so two claims of
one owner cannot both take the last slot.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.engine import lock_key
from orchestrator.db.models import Batch, Run, RunStatus, Session
from orchestrator.errors import LimitExceeded


class NoSlot(Exception):
    """The owner (or the run's batch) is at its concurrency limit; try again later."""


def admit(db: DbSession, session: Session, max_runs_per_owner: int) -> None:
    """Raises NoSlot unless ``session``'s next run may start now."""
    lock_key(db, session.owner)
    running = db.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.owner == session.owner, Run.status == RunStatus.RUNNING)
    )
    if (running or 0) >= max_runs_per_owner:
        raise NoSlot(f"owner has {running} runs running (CCQ_MAX_RUNS_PER_OWNER)")
    if session.batch_id is None:
        return
    limit = db.scalar(select(Batch.max_concurrency).where(Batch.id == session.batch_id))
    if limit is None:
        return
    in_batch = db.scalar(
        select(func.count())
        .select_from(Run)
        .join(Session, Session.id == Run.session_id)
        .where(Session.batch_id == session.batch_id, Run.status == RunStatus.RUNNING)
    )
    if (in_batch or 0) >= limit:
        raise NoSlot(f"batch {session.batch_id} has {in_batch} runs running (max_concurrency)")


def pending_interactive(db: DbSession, owner: str, up_to: int) -> int:
    """The owner's queued or running runs outside batches, counted up to ``up_to`` (the
    hard limit's check needs no more, and stays cheap however many are pending)."""
    return _count_pending(db, owner, up_to, in_batches=False)


def _count_pending(db: DbSession, owner: str, up_to: int, *, in_batches: bool) -> int:
    """The owner's queued or running runs, of batches or not, counted up to ``up_to``."""
    of_batches = Session.batch_id.is_not(None) if in_batches else Session.batch_id.is_(None)
    pending = (
        select(Run.id)
        .join(Session, Session.id == Run.session_id)
        .where(
            Run.owner == owner,
            Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]),
            of_batches,
        )
        .limit(up_to)
        .subquery()
    )
    return int(db.scalar(select(func.count()).select_from(pending)) or 0)


class PendingCapReached(Exception):
    """Queuing ``wanted`` more runs would put the owner past a pending cap (a 429: it
    clears as runs finish)."""

    def __init__(self, pending: int, wanted: int, limit: int, setting: str) -> None:
        super().__init__(
            f"{pending} runs of yours are queued or running and {wanted} more would pass "
            f"the limit of {limit} ({setting}); retry when some have finished"
        )
        self.pending, self.wanted, self.limit, self.setting = pending, wanted, limit, setting


def reserve_pending(db: DbSession, owner: str, wanted: int, limit: int) -> None:
    """Raises PendingCapReached unless ``wanted`` more interactive runs (roots, runs,
    children, fan-outs) fit under the owner's ``limit``.

    Takes the owner's pending lock until the caller's transaction ends: the caller
    inserts its runs under it, so two requests of one owner cannot both see room for
    the last slot. (A key of its own: claims, under the owner's admission lock, never
    add pending runs, and need not wait for a request to commit.)
    """
    _fits_at_all(wanted, limit, "prompts", "CCQ_MAX_PENDING_RUNS_PER_OWNER")
    lock_key(db, "pending", owner)
    pending = pending_interactive(db, owner, up_to=limit)
    if pending + wanted > limit:
        raise PendingCapReached(pending, wanted, limit, "CCQ_MAX_PENDING_RUNS_PER_OWNER")


def reserve_batch_items(db: DbSession, owner: str, wanted: int, limit: int) -> None:
    """Raises PendingCapReached unless a batch of ``wanted`` items fits under the owner's
    cap on unfinished batch items (all batches together); under the owner's batch lock,
    held until the caller's transaction ends, like :func:`reserve_pending`."""
    _fits_at_all(wanted, limit, "items", "CCQ_MAX_PENDING_BATCH_ITEMS_PER_OWNER")
    lock_key(db, "pending-batch-items", owner)
    pending = _count_pending(db, owner, limit, in_batches=True)
    if pending + wanted > limit:
        raise PendingCapReached(pending, wanted, limit, "CCQ_MAX_PENDING_BATCH_ITEMS_PER_OWNER")


def _fits_at_all(wanted: int, limit: int, field: str, setting: str) -> None:
    """A request larger than the cap itself would never fit: LimitExceeded (409), not a
    429 that retrying cannot clear."""
    if wanted > limit:
        reason = f"{wanted} runs at once can never fit"
        raise LimitExceeded(
            f"{field}: {reason} (the limit is {limit}, {setting})",
            [{"field": field, "reason": reason, "limit": limit}],
        )
