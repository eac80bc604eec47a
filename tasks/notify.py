"""Webhook notification tasks: a JSON POST when a batch (or a run of a session with a
``notify_url``) finishes, retried with backoff, never blocking a worker.

Task arguments carry only IDs: the URL (which embeds the receiver's secret) is read from
PostgreSQL, so Flower never shows it, and logs show it redacted.

Each execution makes at most one HTTP attempt (a few seconds' timeout); a retryable
failure (no answer, timeout, 5xx, 408, 429) schedules the next attempt with
``self.retry`` (2, 4, 8, … s, or the receiver's ``Retry-After``) instead of sleeping, and
after ``MAX_ATTEMPTS`` the task gives up with a warning. Other 4xx and 3xx answers give up
at once.

Delivery is at-least-once, deduplicated as far as a webhook allows:

- after a 2xx the task sets ``ccq:notify:<kind>:<id>`` (``SET NX EX 7d``) and every
  execution checks it first, so a redelivered, retried or re-sent task for the same
  object never POSTs again once one POST was accepted;
- while one execution is POSTing it holds ``ccq:notify:<kind>:<id>:sending`` (its task ID,
  60 s TTL), so two executions never POST at the same moment; another task for the same
  object skips (the holder finishes or retries the job), and a redelivery of the holder's
  own task (same ID, after a worker died) takes the key over;
- a duplicate POST remains possible only when the receiver accepted a POST but ccq never
  learned it (the answer timed out, the worker died between the 2xx and the ``SET``, or
  Redis failed at that instant). Receivers that must not see duplicates can deduplicate
  on ``ccq.batch.id`` / ``ccq.run.id``.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from celery import Task, shared_task
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.engine import session_scope
from orchestrator.notify.payloads import (
    DeliveryResult,
    Notice,
    deliver,
    load_batch_notice,
    load_run_notice,
    retry_delay,
    run_wants_notice,
)
from orchestrator.notify.urls import redact_url, validate_notify_url
from tasks.context import worker_context

log = logging.getLogger(__name__)

# Attempts in all (the first and its retries): 2+4+…+256+300 s, about 14 minutes.
MAX_ATTEMPTS = 10
# Connect and read timeout of the one POST an execution makes.
DELIVERY_TIMEOUT_SECONDS = 5.0
SENT_TTL_SECONDS = 7 * 24 * 3600
# Longer than one execution can take (the load, a connect and a read timeout).
SENDING_TTL_SECONDS = 60
# A notification never holds a worker slot for long, whatever the run time limit is.
SOFT_TIME_LIMIT_SECONDS = 60
TIME_LIMIT_SECONDS = 90


class Kind(StrEnum):
    BATCH = "batch"
    RUN = "run"


def sent_key(kind: Kind, object_id: uuid.UUID | str) -> str:
    """Set once a receiver accepted the notification for this object."""
    return f"ccq:notify:{kind.value}:{object_id}"


def sending_key(kind: Kind, object_id: uuid.UUID | str) -> str:
    """Held (by a task ID) while one execution is POSTing this object's notification."""
    return f"{sent_key(kind, object_id)}:sending"


class NotificationFailed(Exception):
    """A failed attempt, as Celery logs and Flower shows it (the URL redacted)."""


# Take the key if it is free or already ours (a redelivery of the same task).
_ACQUIRE = (
    "local v = redis.call('get', KEYS[1]) "
    "if (not v) or v == ARGV[1] then "
    "redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end return 0"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)

_LOADERS: dict[Kind, Callable[[DbSession, uuid.UUID], Notice | None]] = {
    Kind.BATCH: load_batch_notice,
    Kind.RUN: load_run_notice,
}


@dataclass(frozen=True)
class _Failed:
    delivery: DeliveryResult
    where: str  # the redacted URL


def _attempt(kind: Kind, object_id: uuid.UUID, holder: str) -> dict[str, Any] | _Failed:
    """One execution's work: a final answer (dict) or a failed POST to judge."""
    context = worker_context()
    client = context.executor.redis
    done = sent_key(kind, object_id)
    if client.exists(done):
        return {"skipped": "already_sent"}
    with session_scope(context.session_factory) as db:
        notice = _LOADERS[kind](db, object_id)
    if notice is None:
        return {"skipped": "not_found"}
    if not notice.url:
        return {"skipped": "no_notify_url"}
    if not notice.finished:
        return {"skipped": "not_finished"}
    where = redact_url(notice.url)
    try:
        validate_notify_url(notice.url)
    except ValueError as exc:
        log.warning("%s %s: not sending to %s: the URL %s", kind, object_id, where, exc)
        return {"delivered": False, "gave_up": True, "reason": f"invalid URL: {exc}"}
    sending = sending_key(kind, object_id)
    if not client.eval(_ACQUIRE, 1, sending, holder, SENDING_TTL_SECONDS):
        return {"skipped": "in_flight"}
    try:
        if client.exists(done):  # another execution finished while we loaded
            return {"skipped": "already_sent"}
        delivery = deliver(notice.url, notice.payload, timeout=DELIVERY_TIMEOUT_SECONDS)
        if delivery.ok:
            client.set(done, "1", nx=True, ex=SENT_TTL_SECONDS)
    finally:
        with contextlib.suppress(redis.RedisError):
            client.eval(_RELEASE, 1, sending, holder)
    if delivery.ok:
        log.info("%s %s: notified %s (%s)", kind, object_id, where, delivery.reason)
        return {"delivered": True, "status": delivery.status}
    return _Failed(delivery, where)


def _notify(task: Task, kind: Kind, object_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"kind": kind.value, "id": object_id}
    attempt = task.request.retries + 1
    try:
        target = uuid.UUID(object_id)
    except ValueError:
        return {**answer, "skipped": "not_found"}
    try:
        outcome = _attempt(kind, target, task.request.id or object_id)
    except (OperationalError, redis.RedisError) as exc:
        # ccq's own PostgreSQL or Redis is down: the receiver was not reached; try later.
        reason = f"{type(exc).__name__} (ccq's database or Redis)"
        outcome = _Failed(DeliveryResult(ok=False, retry=True, reason=reason), where="-")
    if isinstance(outcome, dict):
        return {**answer, **outcome, "attempts": attempt}
    delivery = outcome.delivery
    if delivery.retry and attempt < MAX_ATTEMPTS:
        countdown = retry_delay(task.request.retries, delivery.retry_after)
        log.info(
            "%s %s: attempt %d/%d to notify %s failed (%s); next in %.0fs",
            kind,
            object_id,
            attempt,
            MAX_ATTEMPTS,
            outcome.where,
            delivery.reason,
            countdown,
        )
        failure = NotificationFailed(f"{outcome.where}: {delivery.reason}")
        raise task.retry(countdown=countdown, max_retries=MAX_ATTEMPTS - 1, exc=failure) from None
    log.warning(
        "%s %s: gave up notifying %s after %d attempt(s): %s",
        kind,
        object_id,
        outcome.where,
        attempt,
        delivery.reason,
    )
    return {
        **answer,
        "delivered": False,
        "gave_up": True,
        "status": delivery.status,
        "reason": delivery.reason,
        "attempts": attempt,
    }


_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "ignore_result": True,
    "max_retries": MAX_ATTEMPTS - 1,
    "soft_time_limit": SOFT_TIME_LIMIT_SECONDS,
    "time_limit": TIME_LIMIT_SECONDS,
}


@shared_task(name="ccq.notify_batch", **_TASK_OPTIONS)
def notify_batch(self: Task, batch_id: str) -> dict[str, Any]:
    """POST the finished batch's summary to its ``notify_url`` (if it has one)."""
    return _notify(self, Kind.BATCH, batch_id)


@shared_task(name="ccq.notify_run", **_TASK_OPTIONS)
def notify_run(self: Task, run_id: str) -> dict[str, Any]:
    """POST a finished run's outcome to its session's ``notify_url`` (if it has one)."""
    return _notify(self, Kind.RUN, run_id)


# --- for the code that finishes batches and runs ---------------------------------------


def queue_batch_notification(batch_id: uuid.UUID | str, notify_url: str | None) -> bool:
    """Queue ``ccq.notify_batch`` for a batch that has just been closed, if it has a URL.

    Call it after the transaction that finished the batch committed. Calling it again
    (a redelivered closer) is harmless: the task sends once. Never raises: a broker
    outage loses the notification (with a warning) rather than failing the caller.
    """
    if not notify_url:
        return False
    try:
        notify_batch.delay(str(batch_id))
    except (redis.RedisError, KombuOperationalError) as exc:
        log.warning("batch %s: notification not queued: %s", batch_id, type(exc).__name__)
        return False
    return True


def queue_run_notification(run_id: uuid.UUID | str) -> bool:
    """Queue ``ccq.notify_run`` if the run has ended and its session has a ``notify_url``.

    One indexed lookup, so it can follow every run. Call it after the run's final state
    committed (``run_prompt`` after the executor returned). Repeats are harmless; it never
    raises (a run task, maybe a chord member, must not fail over a notification).
    """
    try:
        with session_scope(worker_context().session_factory) as db:
            wanted = run_wants_notice(db, uuid.UUID(str(run_id)))
        if wanted:
            notify_run.delay(str(run_id))
    except (ValueError, OperationalError, redis.RedisError, KombuOperationalError) as exc:
        log.warning("run %s: notification not queued: %s", run_id, type(exc).__name__)
        return False
    return wanted
