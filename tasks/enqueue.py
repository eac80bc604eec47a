"""The one way into Celery: the API, the tasks and the sweeper queue work through here.

It sends by name (``tasks.names``) and imports no task module, so the API process never
loads worker code. Callers send after their transaction committed (an after-commit hook
of their unit of work), so a task never finds its rows missing; the one exception,
releasing batch items, is explained at :meth:`Enqueuer.batch_items`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from typing import ParamSpec, TypeVar

import redis
from celery import Celery, chord
from kombu.exceptions import OperationalError as KombuOperationalError

from orchestrator.errors import QueueUnavailable
from orchestrator.settings import Settings
from tasks import names
from tasks.celery_app import batch_queue, make_celery

# How long a send may retry a lost Redis before the caller is told (503).
SEND_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 0.5,
}

P = ParamSpec("P")
R = TypeVar("R")


def _sends(method: Callable[P, R]) -> Callable[P, R]:
    """Redis or the broker refusing a task becomes :class:`QueueUnavailable`.

    Celery's result consumer (which a chord's members still subscribe through) reports a
    Redis it cannot reach as a bare ``RuntimeError`` caused by the Redis error, once its
    own retries are spent; that is the same outage.
    """

    @wraps(method)
    def send(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (redis.RedisError, KombuOperationalError) as exc:
            raise QueueUnavailable(f"the task queue is unavailable: {type(exc).__name__}") from exc
        except RuntimeError as exc:
            if not isinstance(exc.__cause__, redis.RedisError):
                raise
            cause = type(exc.__cause__).__name__
            raise QueueUnavailable(f"the task queue is unavailable: {cause}") from exc

    return send


class Enqueuer:
    """Sends ccq's tasks on one Celery app (one per process)."""

    def __init__(self, celery: Celery, settings: Settings) -> None:
        self.celery = celery
        self._batch_queue = batch_queue(settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Enqueuer:
        """A sender of its own (the API's): a Redis outage fails a send in about a second.

        A chord's send subscribes to its members' results, and Celery's result consumer
        otherwise retries a lost Redis 20 times a second apart, holding the request.
        """
        celery = make_celery(settings)
        celery.conf.result_backend_transport_options = {"retry_policy": SEND_RETRY_POLICY}
        return cls(celery, settings)

    def close(self) -> None:
        self.celery.close()

    def _send(self, name: str, args: list[object], **options: object) -> None:
        """Send a task whose result nobody here waits for.

        ``ignore_result``: without it Celery subscribes this process to the task's result
        channel (held until the result arrives or the handle is collected, and retried
        for seconds when Redis is away) and a run's result is kept for ``result_expires``.
        """
        self.celery.send_task(name, args=args, ignore_result=True, **options)

    @_sends
    def run(self, run_id: uuid.UUID) -> None:
        """An interactive run (a prompt, a child's first prompt, a fan-out's follow-up)."""
        self._send(names.RUN_PROMPT, [str(run_id)])

    @_sends
    def batch_items(self, run_ids: Iterable[uuid.UUID]) -> None:
        """Batch items go to the batch queue, which workers take from in turn with the
        interactive one, so a prompt is never behind thousands of items.

        Sent before the release that marks them commits: if sending fails nothing is
        marked released and a later release sends them again (a run delivered twice
        still runs once), whereas items marked released but never sent would wait for
        the sweeper's slower re-release.
        """
        for run_id in run_ids:
            self._send(names.RUN_PROMPT, [str(run_id)], queue=self._batch_queue)

    @_sends
    def fanout(self, run_ids: Sequence[uuid.UUID], fanout_id: uuid.UUID) -> None:
        """The children's runs as a chord whose callback resumes the parent.

        Its members ignore results too: the Redis backend joins a chord on a list of its
        own that each member pushes to as it ends, whatever ``ignore_result`` says.
        """
        header = [
            self.celery.signature(names.RUN_PROMPT, args=[str(r)], ignore_result=True)
            for r in run_ids
        ]
        callback = self.celery.signature(names.RESUME_PARENT, args=[str(fanout_id)], immutable=True)
        joined = chord(header, app=self.celery)(callback)
        # Celery's group handle subscribes to each member's result channel, for a result
        # nobody here waits for (and that members no longer store): stop listening now.
        # (The consumer, not the backend's remove_pending_result: another handle of the
        # same member, made when it was sent, would keep that subscription alive.)
        consumer = self.celery.backend.result_consumer
        for member in joined.parent.results if joined.parent is not None else ():
            consumer.cancel_for(member.id)

    @_sends
    def close_batch(self, batch_id: uuid.UUID) -> None:
        self._send(names.CLOSE_BATCH, [str(batch_id)])

    @_sends
    def stop_session(self, session_id: uuid.UUID) -> None:
        self._send(names.STOP_SESSION, [str(session_id)])

    @_sends
    def delete_session(
        self,
        session_id: uuid.UUID,
        lineage: Iterable[uuid.UUID],
        descendants: Iterable[uuid.UUID],
    ) -> None:
        self._send(
            names.DELETE_SESSION,
            [str(session_id), [str(i) for i in lineage], [str(i) for i in descendants]],
        )

    @_sends
    def notify_batch(self, batch_id: uuid.UUID) -> None:
        self._send(names.NOTIFY_BATCH, [str(batch_id)])

    @_sends
    def notify_run(self, run_id: uuid.UUID) -> None:
        self._send(names.NOTIFY_RUN, [str(run_id)])
