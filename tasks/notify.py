"""Webhook tasks: a JSON POST when a batch (or a run of a session with a ``notify_url``)
finishes, retried with backoff, never blocking a worker (see ``orchestrator.notify``).

Task arguments carry only IDs: the URL (which embeds the receiver's secret) is read from
PostgreSQL, so Flower never shows it, and logs show it redacted.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.notify import delivery
from orchestrator.notify.delivery import Kind, RetryLater
from orchestrator.outbound import OutboundPolicy
from tasks import names
from tasks.base import CcqTask

# A notification never holds a worker slot for long, whatever the run time limit is.
SOFT_TIME_LIMIT_SECONDS = 60
TIME_LIMIT_SECONDS = 90


class NotificationFailed(Exception):
    """A failed attempt, as Celery logs and Flower shows it (the URL redacted)."""


def _notify(task: CcqTask, kind: Kind, object_id: str) -> dict[str, Any]:
    with UnitOfWork(task.context.session_factory) as uow:
        outcome = delivery.attempt(
            uow.db,
            task.context.redis,
            kind,
            object_id,
            holder=task.request.id or object_id,
            retries=task.request.retries,
            policy=OutboundPolicy.from_settings(task.context.settings),
        )
    if isinstance(outcome, RetryLater):
        failure = NotificationFailed(outcome.reason)
        raise task.retry(countdown=outcome.countdown, exc=failure) from None
    return outcome


# Outages are attempts that failed (delivery.attempt judges them), not autoretried.
_OPTIONS: dict[str, Any] = {
    "base": CcqTask,
    "bind": True,
    "autoretry_for": (),
    "max_retries": delivery.MAX_ATTEMPTS - 1,
    "soft_time_limit": SOFT_TIME_LIMIT_SECONDS,
    "time_limit": TIME_LIMIT_SECONDS,
}


@shared_task(name=names.NOTIFY_BATCH, **_OPTIONS)
def notify_batch(self: CcqTask, batch_id: str) -> dict[str, Any]:
    """POST the finished batch's summary to its ``notify_url`` (if it has one)."""
    return _notify(self, Kind.BATCH, batch_id)


@shared_task(name=names.NOTIFY_RUN, **_OPTIONS)
def notify_run(self: CcqTask, run_id: str) -> dict[str, Any]:
    """POST a finished run's outcome to its session's ``notify_url`` (if it has one)."""
    return _notify(self, Kind.RUN, run_id)
