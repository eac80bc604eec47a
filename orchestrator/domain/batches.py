"""Batches: many independent prompts submitted together, each a session with one run.

Creating a batch inserts every session and run in one transaction with bulk inserts (a
10,000-item batch is two statements, not 20,000 flushes); a rejected batch creates
nothing. The batch's state is derived from its runs' rows, so counts never drift.

Items are released to Celery a window at a time (:func:`release`): at most the batch's
concurrency (``max_concurrency``, at most ``CCQ_MAX_RUNS_PER_OWNER``) are with Celery at
once, and at most ``CCQ_BATCH_WINDOW_PER_OWNER`` of one owner's batches together; the
rest wait in PostgreSQL. Each item that ends frees a slot for one of the owner's
batches, and the last one closes its batch. Had every item been queued at once, those
over the cap would come back every few seconds to look for a slot: 10,000 tasks cycling
through the workers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.engine import ROW_LOCK, lock_key
from orchestrator.db.models import Batch, BatchStatus, Run, RunStatus, Session, SessionStatus
from orchestrator.domain.admission import reserve_batch_items
from orchestrator.errors import ConflictError, NotFoundError
from orchestrator.notify.urls import redact_url

MAX_ITEMS = 10_000
# A released item whose task was lost (a Redis flush) would hold its place in the window
# for ever: the sweeper hands an item still queued this long after its release to Celery
# again (a second delivery of a run never runs it twice).
RELEASE_AGAIN_AFTER = timedelta(minutes=10)
_UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)


@dataclass(frozen=True)
class BatchItem:
    prompt: str
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewBatch:
    items: list[BatchItem]
    max_concurrency: int | None = None
    notify_url: str | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchProgress:
    """Counts of the batch's item runs by state, their cost, and timings."""

    counts: dict[str, int]
    total_cost_usd: Decimal
    first_started_at: datetime | None
    last_finished_at: datetime | None

    @property
    def done(self) -> int:
        return sum(n for state, n in self.counts.items() if RunStatus(state).is_final)

    @property
    def unfinished(self) -> int:
        return self.counts.get(RunStatus.QUEUED, 0) + self.counts.get(RunStatus.RUNNING, 0)


@dataclass(frozen=True)
class ItemResult:
    index: int
    session_id: uuid.UUID
    run_id: uuid.UUID
    status: str
    result: str | None
    error: str | None
    total_cost_usd: Decimal | None


class BatchService:
    """The owner's batches."""

    def __init__(self, db: DbSession, owner: str, max_pending_items: int | None = None) -> None:
        self.db = db
        self.owner = owner
        # CCQ_MAX_PENDING_BATCH_ITEMS_PER_OWNER, checked by create (None: not checked).
        self.max_pending_items = max_pending_items

    def create(self, spec: NewBatch) -> tuple[Batch, bool]:
        """The batch, and whether it was created now (not found by its idempotency key).

        Raises:
            PendingCapReached: its items would put the owner's unfinished batch items
                past ``max_pending_items``.
        """
        if spec.idempotency_key is not None:
            lock_key(self.db, "batch-key", self.owner, spec.idempotency_key)
            existing = self.db.scalars(
                select(Batch).where(
                    Batch.owner == self.owner, Batch.idempotency_key == spec.idempotency_key
                )
            ).one_or_none()
            if existing is not None:
                return existing, False
        if self.max_pending_items is not None:
            reserve_batch_items(self.db, self.owner, len(spec.items), self.max_pending_items)
        now = datetime.now(UTC)
        batch = Batch(
            id=uuid.uuid4(),
            owner=self.owner,
            status=BatchStatus.RUNNING,
            defaults=spec.defaults,
            total_items=len(spec.items),
            max_concurrency=spec.max_concurrency,
            notify_url=spec.notify_url,
            idempotency_key=spec.idempotency_key,
            meta=spec.metadata,
        )
        self.db.add(batch)
        self.db.flush()
        sessions: list[dict[str, Any]] = []
        runs: list[dict[str, Any]] = []
        for index, item in enumerate(spec.items):
            session_id, run_id = uuid.uuid4(), uuid.uuid4()
            sessions.append(
                {
                    "id": session_id,
                    "owner": self.owner,
                    "root_id": session_id,
                    "depth": 0,
                    "batch_id": batch.id,
                    "batch_index": index,
                    "status": SessionStatus.IDLE,
                    "model": item.model,
                    "options": item.options,
                    "meta": item.metadata,
                    "cli_started": False,
                    "runs_count": 1,
                    "total_cost_usd": Decimal(0),
                    "last_active_at": now,
                }
            )
            runs.append(
                {
                    "id": run_id,
                    "session_id": session_id,
                    "owner": self.owner,
                    "seq": 1,
                    "prompt": item.prompt,
                    "options": {},
                    "status": RunStatus.QUEUED,
                    "attempts": 0,
                    "cancel_requested": False,
                }
            )
        self.db.execute(insert(Session), sessions)
        self.db.execute(insert(Run), runs)
        return batch, True

    def get(self, batch_id: uuid.UUID, *, for_update: bool = False) -> Batch:
        query = select(Batch).where(Batch.id == batch_id, Batch.owner == self.owner)
        if for_update:
            query = query.with_for_update(**ROW_LOCK)
        batch = self.db.scalars(query).one_or_none()
        if batch is None:
            raise NotFoundError(f"batch {batch_id} not found")
        return batch

    def page(self, *, limit: int, before: tuple[datetime, uuid.UUID] | None) -> list[Batch]:
        query = select(Batch).where(Batch.owner == self.owner)
        if before is not None:
            query = query.where(tuple_(Batch.created_at, Batch.id) < tuple_(*before))
        query = query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
        return list(self.db.scalars(query).all())

    def cancel(self, batch_id: uuid.UUID) -> tuple[Batch, list[Run]]:
        """Queued items never start; running ones are flagged for their executors to kill.

        Returns:
            The batch and its runs that were running (signal their executors).

        Cancelling a batch that is being cancelled changes nothing (its running items
        are already stopping).

        Raises:
            ConflictError: the batch has already finished.
        """
        batch = self.get(batch_id, for_update=True)
        if batch.finished_at is not None:
            raise ConflictError(f"batch {batch_id} has already finished ({batch.status})")
        batch.status = BatchStatus.CANCELLED
        now = datetime.now(UTC)
        pending = self.db.scalars(
            select(Run)
            .join(Session, Session.id == Run.session_id)
            .where(
                Session.batch_id == batch.id,
                Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]),
            )
            .with_for_update(of=Run, **ROW_LOCK)
        ).all()
        running = []
        for run in pending:
            run.cancel_requested = True
            if run.status == RunStatus.QUEUED:
                run.status, run.finished_at = RunStatus.CANCELLED, now
            else:
                running.append(run)
        return batch, running


def window(batch: Batch, max_runs_per_owner: int) -> int:
    """How many of the batch's items may be with Celery at once (released, not ended)."""
    return min(batch.max_concurrency or max_runs_per_owner, max_runs_per_owner)


def owner_of(db: DbSession, batch_id: uuid.UUID) -> str | None:
    return db.scalar(select(Batch.owner).where(Batch.id == batch_id))


def release(
    db: DbSession, owner: str, max_runs_per_owner: int, owner_window: int
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """Mark the owner's next batch items released while the owner's window has room;
    their run IDs by batch, in item order, for the caller to queue.

    At most ``owner_window`` (CCQ_BATCH_WINDOW_PER_OWNER) items of one owner are released
    and unfinished at once across all their batches, and at most :func:`window` of one
    batch. The room is shared round robin: each free slot goes to the batch with the
    fewest items in flight, among equals the one whose last turn is longest ago (never
    first), then the oldest; so a small batch submitted behind a large one starts at once
    instead of waiting for it to drain.

    Under the owner's batch-window lock, so items ending at the same moment never
    release more than the window. The caller queues the tasks before it commits: if it
    fails before the commit, the items are released again later, and a second delivery
    of a run never runs it twice.
    """
    lock_key(db, "batch-window", owner)
    running_batches = list(
        db.scalars(
            select(Batch)
            .where(
                Batch.owner == owner,
                Batch.status == BatchStatus.RUNNING,
                Batch.finished_at.is_(None),
            )
            .order_by(Batch.created_at, Batch.id)
            .with_for_update(**ROW_LOCK)
        ).all()
    )
    if not running_batches:
        return {}
    items = select(Run.id).join(Session, Session.id == Run.session_id)
    # Per batch: items released and unfinished, and when it last had one released.
    in_flight: dict[uuid.UUID, int] = {}
    last_turn: dict[uuid.UUID, datetime] = {}
    for batch_id, flying, last in db.execute(
        select(
            Session.batch_id,
            func.count().filter(Run.status.in_(_UNFINISHED)),
            func.max(Run.dispatched_at),
        )
        .join(Run, Run.session_id == Session.id)
        .where(
            Run.owner == owner,
            Session.batch_id.in_([b.id for b in running_batches]),
            Run.dispatched_at.is_not(None),
        )
        .group_by(Session.batch_id)
    ).all():
        if batch_id is not None and last is not None:  # (both are, by the query)
            in_flight[batch_id], last_turn[batch_id] = flying, last
    room = owner_window - sum(in_flight.values())
    if room <= 0:
        return {}
    # Each batch's next items, at most as many as it could take now.
    waiting: dict[uuid.UUID, list[uuid.UUID]] = {}
    for batch in running_batches:
        own_room = min(room, window(batch, max_runs_per_owner) - in_flight.get(batch.id, 0))
        if own_room <= 0:
            continue
        waiting[batch.id] = list(
            db.scalars(
                items.where(
                    Session.batch_id == batch.id,
                    Run.status == RunStatus.QUEUED,
                    Run.dispatched_at.is_(None),
                )
                .order_by(Session.batch_index)
                .limit(own_room)
            ).all()
        )
    released: dict[uuid.UUID, list[uuid.UUID]] = {}
    age = {b.id: age for age, b in enumerate(running_batches)}
    never = datetime.min.replace(tzinfo=UTC)
    while room > 0:
        candidates = [b for b in age if waiting.get(b)]
        if not candidates:
            break
        # Fewest in flight; then the batch whose last turn is longest ago; then the oldest.
        chosen = min(
            candidates, key=lambda b: (in_flight.get(b, 0), last_turn.get(b, never), age[b])
        )
        last_turn[chosen] = datetime.max.replace(tzinfo=UTC)  # its turn now
        released.setdefault(chosen, []).append(waiting[chosen].pop(0))
        in_flight[chosen] = in_flight.get(chosen, 0) + 1
        room -= 1
    run_ids = [run_id for ids in released.values() for run_id in ids]
    if run_ids:
        db.execute(update(Run).where(Run.id.in_(run_ids)).values(dispatched_at=datetime.now(UTC)))
    return released


def owners_running(db: DbSession) -> list[str]:
    """Owners with a batch still running (the sweeper releases what they have room for)."""
    return list(
        db.scalars(
            select(Batch.owner)
            .where(Batch.status == BatchStatus.RUNNING, Batch.finished_at.is_(None))
            .distinct()
        ).all()
    )


def release_again(db: DbSession, older_than: timedelta) -> list[uuid.UUID]:
    """Batch items released longer ago than ``older_than`` and still queued (their task
    may be lost): marked released now, their run IDs returned for the caller to queue."""
    run_ids = list(
        db.scalars(
            select(Run.id)
            .join(Session, Session.id == Run.session_id)
            .join(Batch, Batch.id == Session.batch_id)
            .where(
                Batch.status == BatchStatus.RUNNING,
                Run.status == RunStatus.QUEUED,
                Run.dispatched_at < datetime.now(UTC) - older_than,
            )
            .with_for_update(of=Run, skip_locked=True)
        ).all()
    )
    if run_ids:
        db.execute(update(Run).where(Run.id.in_(run_ids)).values(dispatched_at=datetime.now(UTC)))
    return run_ids


def batch_of(db: DbSession, run_id: uuid.UUID) -> uuid.UUID | None:
    """The batch whose item ``run_id`` is, if any."""
    return db.scalar(
        select(Session.batch_id).join(Run, Run.session_id == Session.id).where(Run.id == run_id)
    )


def progress(db: DbSession, batch_id: uuid.UUID) -> BatchProgress:
    """The batch's item runs by state, their cost so far and when they ran (one query)."""
    rows = db.execute(
        select(
            Run.status,
            func.count(),
            func.coalesce(func.sum(Run.total_cost_usd), 0),
            func.min(Run.started_at),
            func.max(Run.finished_at),
        )
        .join(Session, Session.id == Run.session_id)
        .where(Session.batch_id == batch_id, Run.seq == 1)
        .group_by(Run.status)
    ).all()
    counts = {state.value: 0 for state in RunStatus}
    cost, started, finished = Decimal(0), [], []
    for status, count, status_cost, first, last in rows:
        counts[status] = count
        cost += Decimal(status_cost or 0)
        started += [first] if first else []
        finished += [last] if last else []
    return BatchProgress(counts, cost, min(started, default=None), max(finished, default=None))


def results_page(
    db: DbSession, batch_id: uuid.UUID, after: int, max_items: int, max_bytes: int
) -> list[ItemResult]:
    """The outcomes of the items after index ``after``, in item order: at most
    ``max_items``, and no more once ``max_bytes`` of results and errors are in (at least
    one). Paged by index, so each page can take a connection of its own."""
    size = func.coalesce(func.octet_length(Run.result_text), 0) + func.coalesce(
        func.octet_length(Run.error), 0
    )
    page = (
        select(
            Session.batch_index.label("index"),
            Session.id.label("session_id"),
            Run.id.label("run_id"),
            Run.status,
            Run.result_text,
            Run.error,
            Run.total_cost_usd,
            size.label("size"),
        )
        .join(Run, (Run.session_id == Session.id) & (Run.seq == 1))
        .where(Session.batch_id == batch_id, Session.batch_index > after)
        .order_by(Session.batch_index)
        .limit(max_items)
        .subquery()
    )
    # octet_length reads a stored value's size without fetching it.
    before = func.sum(page.c.size).over(order_by=page.c.index) - page.c.size
    sized = select(page, before.label("before")).subquery()
    rows = db.execute(
        select(*(c for c in sized.c if c.name not in ("size", "before")))
        .where(sized.c.before < max_bytes)
        .order_by(sized.c.index)
    ).all()
    return [
        ItemResult(index or 0, session_id, run_id, status, result, error, cost)
        for index, session_id, run_id, status, result, error, cost in rows
    ]


def close(db: DbSession, batch_id: uuid.UUID) -> tuple[Batch | None, bool]:
    """Finish the batch if every item has ended.

    Returns:
        The batch (None if it was deleted) and whether this call finished it: False
        while some items are still going, and for a batch that had already finished.

    Its final state: ``cancelled`` if it was cancelled, ``succeeded`` if every item
    succeeded, else ``failed``. Safe to call any number of times (the batch's row lock
    lets exactly one caller finish it).
    """
    batch = db.get(Batch, batch_id, with_for_update=ROW_LOCK)
    if batch is None or batch.finished_at is not None:
        return batch, False
    now = progress(db, batch.id)
    if now.unfinished:
        return batch, False
    if batch.status == BatchStatus.RUNNING:
        all_good = now.counts.get(RunStatus.SUCCEEDED, 0) == batch.total_items
        batch.status = BatchStatus.SUCCEEDED if all_good else BatchStatus.FAILED
    batch.total_cost_usd = now.total_cost_usd
    batch.finished_at = now.last_finished_at or datetime.now(UTC)
    return batch, True


def overdue(db: DbSession, older_than: timedelta) -> list[uuid.UUID]:
    """Unfinished batches older than ``older_than`` whose items have all ended, though
    none closed them (the worker of the last item died first): the sweeper does."""
    unfinished_item = (
        select(Run.id)
        .join(Session, Session.id == Run.session_id)
        .where(
            Session.batch_id == Batch.id,
            Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]),
        )
        .exists()
    )
    return list(
        db.scalars(
            select(Batch.id).where(
                Batch.finished_at.is_(None),
                Batch.created_at < datetime.now(UTC) - older_than,
                ~unfinished_item,
            )
        ).all()
    )


def batch_view(batch: Batch, now: BatchProgress) -> dict[str, Any]:
    """The batch as the API and its progress events show it (no secret: the webhook
    URL is shown only as far as its host)."""
    total, done = batch.total_items, now.done
    started = now.first_started_at
    end = batch.finished_at or datetime.now(UTC)
    elapsed = (end - started).total_seconds() if started else None
    eta = None
    if batch.finished_at is None and elapsed is not None and done:
        eta = round(elapsed / done * (total - done), 1)
    cost = batch.total_cost_usd if batch.finished_at else now.total_cost_usd
    return {
        "id": str(batch.id),
        "status": batch.status,
        "total_items": total,
        "counts": now.counts,
        "done": done,
        "progress": round(done / total, 4) if total else 1.0,
        "total_cost_usd": float(cost or 0),
        "max_concurrency": batch.max_concurrency,
        "notify_url": redact_url(batch.notify_url) if batch.notify_url else None,
        "metadata": batch.meta,
        "created_at": _iso(batch.created_at),
        "started_at": _iso(started),
        "finished_at": _iso(batch.finished_at),
        "elapsed_seconds": round(elapsed, 1) if elapsed is not None else None,
        "eta_seconds": eta,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
