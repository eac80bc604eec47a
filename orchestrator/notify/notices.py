"""What a webhook sends, read from PostgreSQL: a finished batch's or run's notice."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.models import Batch, Run, RunStatus, Session
from orchestrator.domain import batches
from orchestrator.notify.payloads import (
    ERROR_MAX,
    RESULT_MAX,
    BatchSummary,
    RunSummary,
    batch_payload,
    clip,
    run_payload,
)


@dataclass(frozen=True)
class Notice:
    """A notification ready to go: where (None if nobody asked) and what."""

    url: str | None
    finished: bool
    payload: dict[str, Any]


def batch_counts(db: DbSession, batch: Batch) -> dict[str, int]:
    """The batch's items by the state of their run, states with none left out (items
    whose session was deleted: ``not_started``)."""
    counts = {state: n for state, n in batches.progress(db, batch.id).counts.items() if n}
    missing = batch.total_items - sum(counts.values())
    if missing > 0:
        counts["not_started"] = missing
    return counts


def load_batch_notice(db: DbSession, batch_id: uuid.UUID) -> Notice | None:
    """The batch's notification, or None if the batch does not exist."""
    batch = db.get(Batch, batch_id)
    if batch is None:
        return None
    summary = BatchSummary(
        id=batch.id,
        status=batch.status,
        total_items=batch.total_items,
        counts=batch_counts(db, batch),
        total_cost_usd=batch.total_cost_usd,
        created_at=batch.created_at,
        finished_at=batch.finished_at,
        metadata=batch.meta or {},
    )
    return Notice(
        url=batch.notify_url, finished=batch.finished_at is not None, payload=batch_payload(summary)
    )


def load_run_notice(db: DbSession, run_id: uuid.UUID) -> Notice | None:
    """The run's notification (to its session's ``notify_url``), or None if it is gone."""
    row = db.execute(
        select(Run, Session.notify_url, Session.meta)
        .join(Session, Session.id == Run.session_id)
        .where(Run.id == run_id)
    ).one_or_none()
    if row is None:
        return None
    run, notify_url, metadata = row
    summary = RunSummary(
        session_id=run.session_id,
        run_id=run.id,
        status=run.status,
        result=clip(run.result_text, RESULT_MAX) if run.result_text is not None else None,
        error=clip(run.error, ERROR_MAX) if run.error is not None else None,
        total_cost_usd=run.total_cost_usd,
        finished_at=run.finished_at,
        started_at=run.started_at,
        metadata=metadata or {},
        error_code=run.error_code,
        metered_cost_usd=run.metered_cost_usd,
    )
    payload = run_payload(summary)
    # Clipped above (a result can be megabytes); say whether the original was longer.
    if summary.result != run.result_text:
        payload["ccq"]["run"]["result_truncated"] = True
    return Notice(url=notify_url, finished=RunStatus(run.status).is_final, payload=payload)


def run_wants_notice(db: DbSession, run_id: uuid.UUID) -> bool:
    """Whether the run has ended and its session asked for notifications (one lookup)."""
    row = db.execute(
        select(Run.status, Session.notify_url)
        .join(Session, Session.id == Run.session_id)
        .where(Run.id == run_id)
    ).one_or_none()
    return row is not None and bool(row.notify_url) and RunStatus(row.status).is_final
