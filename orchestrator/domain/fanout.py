"""Joining a fan-out: when every child has ended, queue the parent's follow-up run.

The chord callback (``ccq.resume_parent``) and the sweeper both call
:meth:`FanoutJoin.complete`; what happened is read from PostgreSQL, never from the
chord's results, so a redelivered child task or a lost chord cannot resume the parent
twice or with the wrong results. The follow-up run carries an idempotency key per fan-out.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.engine import ROW_LOCK
from orchestrator.db.models import Fanout, FanoutStatus, Run, RunStatus, Session, SessionStatus
from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.children import FANOUT_FINISHED
from orchestrator.domain.sessions import SessionService
from orchestrator.streams.events import PendingEvent, publish_pending

# How much of each child's result the follow-up prompt quotes (get_child_result has all).
RESULT_CHARS_IN_PROMPT = 8000
CHILDREN_DIR = "/workspace/children"


class FanoutNotReady(Exception):
    """Some child of the fan-out has not ended yet."""


@dataclass(frozen=True)
class ChildOutcome:
    index: int
    session_id: uuid.UUID
    run_id: uuid.UUID | None
    status: str
    result: str | None
    error: str | None
    cost_usd: Decimal | None

    @property
    def files(self) -> str:
        return f"{CHILDREN_DIR}/{self.session_id}/"


def followup_prompt(then: str, fanout_id: uuid.UUID, outcomes: Sequence[ChildOutcome]) -> str:
    """The parent's next prompt: its ``then`` text, then every child's outcome."""
    lines = [then.rstrip(), "", f"Results of fan-out {fanout_id} ({len(outcomes)} children):"]
    for outcome in outcomes:
        cost = f"${outcome.cost_usd:.4f}" if outcome.cost_usd is not None else "cost unknown"
        lines += [
            "",
            f"## Child {outcome.index + 1} of {len(outcomes)}: {outcome.session_id}",
            f"Status: {outcome.status} ({cost})",
            f"Files: {outcome.files}",
        ]
        if outcome.error:
            lines.append(f"Error: {_clip(outcome.error, 2000)}")
        if outcome.result is not None:
            lines += ["Result:", _clip(outcome.result, RESULT_CHARS_IN_PROMPT)]
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[… {len(text) - limit} more characters: use get_child_result]"


def outcomes_of(children: Sequence[Session], runs: dict[uuid.UUID, Run]) -> list[ChildOutcome]:
    result = []
    for child in children:
        run = runs.get(child.id)
        result.append(
            ChildOutcome(
                index=child.fanout_index or 0,
                session_id=child.id,
                run_id=run.id if run else None,
                status=run.status if run else "missing",
                result=run.result_text if run else None,
                error=run.error if run else None,
                cost_usd=run.total_cost_usd if run else None,
            )
        )
    return result


@dataclass(frozen=True)
class Completion:
    status: str
    # The follow-up run, when it is still queued: its task must be (re)sent.
    queued_run_id: uuid.UUID | None = None


class FanoutJoin:
    """Completes fan-outs whose children have all ended."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def complete(self, uow: UnitOfWork, fanout_id: uuid.UUID) -> Completion:
        """Create the parent's follow-up run if every child has ended (once per fan-out),
        and commit; its events are published after the commit. The caller queues
        ``queued_run_id``.

        Raises:
            FanoutNotReady: a child is still queued or running (nothing is committed).
        """
        outbox: list[PendingEvent] = []
        uow.after_commit(lambda db: publish_pending(self.redis, db, outbox))
        try:
            completion = self._complete(uow.db, fanout_id, outbox)
        except BaseException:
            uow.rollback()
            raise
        uow.commit()
        return completion

    def _complete(
        self, db: DbSession, fanout_id: uuid.UUID, outbox: list[PendingEvent]
    ) -> Completion:
        parent_id = db.scalar(select(Fanout.session_id).where(Fanout.id == fanout_id))
        if parent_id is None:
            return Completion("missing")  # deleted with its parent
        # Lock order everywhere: sessions, then fan-outs, then runs.
        parent = db.get(Session, parent_id, with_for_update=ROW_LOCK)
        fanout = db.get(Fanout, fanout_id, with_for_update=ROW_LOCK)
        if parent is None or fanout is None:
            return Completion("missing")
        if fanout.status == FanoutStatus.FINISHED:
            return Completion(fanout.status, self._still_queued(db, fanout.followup_run_id))
        if fanout.status == FanoutStatus.CANCELLED:
            return Completion(fanout.status)
        children = list(
            db.scalars(
                select(Session).where(Session.fanout_id == fanout.id).order_by(Session.fanout_index)
            ).all()
        )
        runs = {
            run.session_id: run
            for run in db.scalars(
                select(Run).where(Run.session_id.in_([c.id for c in children]), Run.seq == 1)
            ).all()
        }
        waiting = [r.id for r in runs.values() if not RunStatus(r.status).is_final]
        if waiting:
            raise FanoutNotReady(f"fanout {fanout_id}: runs {waiting} have not ended")
        now = datetime.now(UTC)
        if parent.status in (SessionStatus.STOPPED, SessionStatus.FAILED):
            fanout.status, fanout.finished_at = FanoutStatus.CANCELLED, now
            return Completion(fanout.status)
        outcomes = outcomes_of(children, runs)
        service = SessionService(db, fanout.owner)
        run, _ = service.queue_run(
            parent.id,
            followup_prompt(fanout.then_prompt, fanout.id, outcomes),
            idempotency_key=f"ccq-fanout:{fanout.id}",
        )
        fanout.status, fanout.finished_at, fanout.followup_run_id = (
            FanoutStatus.FINISHED,
            now,
            run.id,
        )
        outbox += service.outbox
        outbox.append(
            PendingEvent(
                parent.id,
                None,
                0,
                FANOUT_FINISHED,
                {
                    "fanout_id": str(fanout.id),
                    "followup_run_id": str(run.id),
                    "children": [
                        {"session_id": str(o.session_id), "status": o.status} for o in outcomes
                    ],
                },
            )
        )
        return Completion(fanout.status, run.id)

    @staticmethod
    def _still_queued(db: DbSession, run_id: uuid.UUID | None) -> uuid.UUID | None:
        if run_id is None:
            return None
        status = db.scalar(select(Run.status).where(Run.id == run_id))
        return run_id if status == RunStatus.QUEUED else None

    @staticmethod
    def overdue(db: DbSession, older_than: timedelta) -> list[uuid.UUID]:
        """Running fan-outs older than ``older_than``: the sweeper tries to complete them
        in case their chord was lost (a Redis restart, a chord error)."""
        return list(
            db.scalars(
                select(Fanout.id).where(
                    Fanout.status == FanoutStatus.RUNNING,
                    Fanout.created_at < datetime.now(UTC) - older_than,
                )
            ).all()
        )
