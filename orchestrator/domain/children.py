"""Child sessions and fan-outs: creating them inside the tree's limits.

A child is a session with a parent; it lives in the parent's workspace
(``/workspace/children/<child_id>/`` as the parent sees it). A fan-out creates N children
at once and, when every one of them has ended, queues one follow-up run on the parent
(``orchestrator.domain.fanout``). Callers own the transaction and dispatch tasks after it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from orchestrator.db.engine import ROW_LOCK, lock_key
from orchestrator.db.models import Fanout, FanoutStatus, Run, Session, SessionStatus
from orchestrator.domain.admission import reserve_pending
from orchestrator.domain.sessions import NewSession, SessionService
from orchestrator.errors import ConflictError, LimitExceeded, NotFoundError
from orchestrator.settings import Settings
from orchestrator.streams.events import PendingEvent

FANOUT_STARTED = "ccq.fanout.started"
FANOUT_FINISHED = "ccq.fanout.finished"

DEFAULT_THEN = (
    "Every child session you delegated to has finished. Their results follow. "
    "Use them to continue your task and give your answer."
)


@dataclass(frozen=True)
class TreeLimits:
    max_depth: int
    max_children: int
    max_tree_sessions: int
    # The owner's cap on runs queued or running outside batches (a 429, not structural):
    # children and fan-outs count toward it like roots do. None: not checked.
    max_pending_runs: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TreeLimits:
        return cls(
            settings.max_depth,
            settings.max_children,
            settings.max_tree_sessions,
            settings.max_pending_runs_per_owner,
        )


@dataclass(frozen=True)
class NewFanout:
    prompts: list[str]
    then: str = DEFAULT_THEN
    child: NewSession = field(default_factory=NewSession)
    idempotency_key: str | None = None


@dataclass(frozen=True)
class StartedFanout:
    fanout: Fanout
    children: list[Session]
    runs: list[Run]
    created: bool


def _limit(field: str, limit: int, setting: str, reason: str) -> LimitExceeded:
    message = f"{field} limit reached: {reason} (the limit is {limit}, {setting})"
    return LimitExceeded(message, [{"field": field, "reason": reason, "limit": limit}])


class ChildSessions:
    """Children of the sessions a :class:`SessionService` can see."""

    def __init__(self, sessions: SessionService, limits: TreeLimits) -> None:
        self.sessions = sessions
        self.db = sessions.db
        self.limits = limits

    # --- one child --------------------------------------------------------------------

    def spawn(
        self, parent_id: uuid.UUID, prompt: str, spec: NewSession
    ) -> tuple[Session, Run, bool]:
        """A child of ``parent_id`` with its first run queued.

        Returns:
            The child, its first run, and whether they were created now (False for a
            repeated idempotency key).

        Raises:
            NotFoundError: the parent is not visible to the caller.
            LimitExceeded: depth, children or tree size would pass its limit.
            PendingCapReached: the owner's pending runs would pass their cap.
            ConflictError: the parent has failed, or the key belongs to another session.
        """
        if spec.idempotency_key is not None:
            lock_key(self.db, "session-key", self.sessions.owner, spec.idempotency_key)
            existing = self._by_key(parent_id, spec.idempotency_key)
            if existing is not None:
                first = self.db.scalars(
                    select(Run).where(Run.session_id == existing.id).order_by(Run.seq).limit(1)
                ).one()
                return existing, first, False
        self._reserve_pending(1)
        parent = self._reserve(parent_id, 1)
        child = self._new_child(parent, spec)
        run, _ = self.sessions.queue_run(child.id, prompt)
        return child, run, True

    def _reserve_pending(self, wanted: int) -> None:
        """Raises PendingCapReached unless ``wanted`` more runs fit in the owner's pending
        cap; the owner's pending lock is held until the caller commits."""
        if self.limits.max_pending_runs is not None:
            reserve_pending(self.db, self.sessions.owner, wanted, self.limits.max_pending_runs)

    def _by_key(self, parent_id: uuid.UUID, key: str) -> Session | None:
        existing = self.db.scalars(
            select(Session).where(
                Session.owner == self.sessions.owner, Session.idempotency_key == key
            )
        ).one_or_none()
        if existing is not None and existing.parent_id != parent_id:
            raise ConflictError(
                "idempotency_key is already used by another session",
                [{"field": "idempotency_key", "reason": "used by another session"}],
            )
        return existing

    # --- fan-out -----------------------------------------------------------------------

    def fanout(self, parent_id: uuid.UUID, spec: NewFanout) -> StartedFanout:
        """One child per prompt, all queued now; the parent is resumed when all end."""
        if spec.idempotency_key is not None:
            earlier = self.db.scalars(
                select(Fanout).where(
                    Fanout.session_id == parent_id, Fanout.idempotency_key == spec.idempotency_key
                )
            ).one_or_none()
            if earlier is not None:
                self.sessions.get(parent_id)  # the caller must still see the parent
                children, runs = self.members(earlier.id)
                return StartedFanout(earlier, children, runs, created=False)
        self._reserve_pending(len(spec.prompts))
        parent = self._reserve(parent_id, len(spec.prompts))
        fanout = Fanout(
            id=uuid.uuid4(),
            owner=parent.owner,
            session_id=parent.id,
            status=FanoutStatus.RUNNING,
            then_prompt=spec.then,
            child_count=len(spec.prompts),
            idempotency_key=spec.idempotency_key,
        )
        self.db.add(fanout)
        self.db.flush()
        children, runs = [], []
        for index, prompt in enumerate(spec.prompts):
            child = self._new_child(parent, spec.child, fanout_id=fanout.id, index=index)
            run, _ = self.sessions.queue_run(child.id, prompt)
            children.append(child)
            runs.append(run)
        self.sessions.outbox.append(
            PendingEvent(
                parent.id,
                None,
                0,
                FANOUT_STARTED,
                {"fanout_id": str(fanout.id), "child_ids": [str(c.id) for c in children]},
            )
        )
        return StartedFanout(fanout, children, runs, created=True)

    def get_fanout(self, fanout_id: uuid.UUID) -> Fanout:
        fanout = self.db.get(Fanout, fanout_id)
        if fanout is None or fanout.owner != self.sessions.owner:
            raise NotFoundError(f"fanout {fanout_id} not found")
        self.sessions.get(fanout.session_id)  # a session token sees only its own tree's
        return fanout

    def members(self, fanout_id: uuid.UUID) -> tuple[list[Session], list[Run]]:
        """The fan-out's children in prompt order, and each one's first run."""
        children = list(
            self.db.scalars(
                select(Session).where(Session.fanout_id == fanout_id).order_by(Session.fanout_index)
            ).all()
        )
        firsts = {
            run.session_id: run
            for run in self.db.scalars(
                select(Run).where(Run.session_id.in_([c.id for c in children]), Run.seq == 1)
            ).all()
        }
        return children, [firsts[c.id] for c in children if c.id in firsts]

    # --- limits -------------------------------------------------------------------------

    def _reserve(self, parent_id: uuid.UUID, count: int) -> Session:
        """Lock the tree and check that ``count`` more children of the parent fit.

        The root's row lock serialises every child creation in one tree, so concurrent
        spawns cannot pass the limits together. Lock order: root, then parent.
        """
        parent = self.sessions.get(parent_id)
        root_id = parent.root_id or parent.id
        if root_id != parent.id:
            self.db.scalars(
                select(Session.id).where(Session.id == root_id).with_for_update(**ROW_LOCK)
            ).one_or_none()
        parent = self.sessions.get(parent_id, for_update=True)
        if parent.status == SessionStatus.FAILED:
            raise ConflictError(f"session {parent.id} has failed and takes no children")
        limits = self.limits
        depth = parent.depth + 1
        if depth > limits.max_depth:
            raise _limit(
                "depth",
                limits.max_depth,
                "CCQ_MAX_DEPTH",
                f"a child of session {parent.id} would be at depth {depth}",
            )
        children = self._count(Session.parent_id == parent.id)
        if children + count > limits.max_children:
            raise _limit(
                "children",
                limits.max_children,
                "CCQ_MAX_CHILDREN",
                f"session {parent.id} has {children} children and asked for {count} more",
            )
        members = self._count(Session.root_id == root_id)
        if members + count > limits.max_tree_sessions:
            raise _limit(
                "tree",
                limits.max_tree_sessions,
                "CCQ_MAX_TREE_SESSIONS",
                f"the tree of session {root_id} has {members} sessions and asked for {count} more",
            )
        return parent

    def _count(self, condition: Any) -> int:
        return int(self.db.scalar(select(func.count()).select_from(Session).where(condition)) or 0)

    def _new_child(
        self,
        parent: Session,
        spec: NewSession,
        *,
        fanout_id: uuid.UUID | None = None,
        index: int | None = None,
    ) -> Session:
        child = Session(
            id=uuid.uuid4(),
            owner=parent.owner,
            parent_id=parent.id,
            root_id=parent.root_id or parent.id,
            depth=parent.depth + 1,
            status=SessionStatus.IDLE,
            model=spec.model or parent.model,  # children think with their parent's model
            options=spec.options,
            meta=spec.metadata,
            idempotency_key=spec.idempotency_key if fanout_id is None else None,
            fanout_id=fanout_id,
            fanout_index=index,
        )
        self.db.add(child)
        self.db.flush()
        return child
