"""Batches the sweeper moves on: nothing released (Redis was down when it was accepted),
or an item whose task was lost. Real worker, beat's task sent by hand, real CLI runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db.engine import session_scope
from orchestrator.db.models import Batch, BatchStatus, Run, Session
from orchestrator.domain.batches import BatchItem, BatchService, NewBatch
from tests.processes import WorkerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _sweep(celery_app: Celery) -> dict[str, int]:
    result: dict[str, int] = celery_app.send_task("ccq.sweep", ignore_result=False).get(timeout=60)
    return result


def test_the_sweeper_starts_an_unreleased_batch_and_requeues_a_lost_item(
    celery_app: Celery, worker: WorkerProcess, db_factory: sessionmaker[DbSession]
) -> None:
    # Accepted, but none of its items reached Celery (as when Redis was down).
    with session_scope(db_factory) as dbs:
        batch, _ = BatchService(dbs, "sweep-owner").create(
            NewBatch(items=[BatchItem(prompt=f"swept {i}") for i in range(4)])
        )
    with session_scope(db_factory) as dbs:  # item 0 was released an hour ago; its task is lost
        lost = dbs.scalars(
            select(Run.id)
            .join(Session, Session.id == Run.session_id)
            .where(Session.batch_id == batch.id, Session.batch_index == 0)
        ).one()
        dbs.execute(
            update(Run)
            .where(Run.id == lost)
            .values(dispatched_at=datetime.now(UTC) - timedelta(hours=1))
        )

    swept = _sweep(celery_app)

    assert swept["batch_items_released"] >= 4
    finished = wait_for(
        lambda: _finished(db_factory, batch.id), timeout=180, what="the swept batch to finish"
    )
    assert finished.status == BatchStatus.SUCCEEDED
    with db_factory() as dbs:
        results = dbs.scalars(
            select(Run.result_text)
            .join(Session, Session.id == Run.session_id)
            .where(Session.batch_id == batch.id)
            .order_by(Session.batch_index)
        ).all()
    assert [r.split(": ")[-1] if r else r for r in results] == [f"swept {i}" for i in range(4)]


def _finished(db_factory: sessionmaker[DbSession], batch_id: uuid.UUID) -> Batch | None:
    with db_factory() as dbs:
        batch = dbs.get(Batch, batch_id)
        return batch if batch is not None and batch.finished_at is not None else None
