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

P = ParamSpec("P")
R = TypeVar("R")


def _sends(method: Callable[P, R]) -> Callable[P, R]:
    """Redis or the broker refusing a task becomes :class:`QueueUnavailable`."""

    @wraps(method)
    def send(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (redis.RedisError, KombuOperationalError) as exc:
            raise QueueUnavailable(f"the task queue is unavailable: {type(exc).__name__}") from exc

    return send


class Enqueuer:
    """Sends ccq's tasks on one Celery app (one per process)."""

    def __init__(self, celery: Celery, settings: Settings) -> None:
        self.celery = celery
        self._batch_queue = batch_queue(settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Enqueuer:
        return cls(make_celery(settings), settings)

    def close(self) -> None:
        self.celery.close()

    @_sends
    def run(self, run_id: uuid.UUID) -> None:
        """An interactive run (a prompt, a child's first prompt, a fan-out's follow-up)."""
        self.celery.send_task(names.RUN_PROMPT, args=[str(run_id)])

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
            self.celery.send_task(names.RUN_PROMPT, args=[str(run_id)], queue=self._batch_queue)

    @_sends
    def fanout(self, run_ids: Sequence[uuid.UUID], fanout_id: uuid.UUID) -> None:
        """The children's runs as a chord whose callback resumes the parent."""
        header = [self.celery.signature(names.RUN_PROMPT, args=[str(r)]) for r in run_ids]
        callback = self.celery.signature(names.RESUME_PARENT, args=[str(fanout_id)], immutable=True)
        chord(header, app=self.celery)(callback)

    @_sends
    def close_batch(self, batch_id: uuid.UUID) -> None:
        self.celery.send_task(names.CLOSE_BATCH, args=[str(batch_id)])

    @_sends
    def stop_session(self, session_id: uuid.UUID) -> None:
        self.celery.send_task(names.STOP_SESSION, args=[str(session_id)])

    @_sends
    def delete_session(
        self,
        session_id: uuid.UUID,
        lineage: Iterable[uuid.UUID],
        descendants: Iterable[uuid.UUID],
    ) -> None:
        self.celery.send_task(
            names.DELETE_SESSION,
            args=[str(session_id), [str(i) for i in lineage], [str(i) for i in descendants]],
        )

    @_sends
    def notify_batch(self, batch_id: uuid.UUID) -> None:
        self.celery.send_task(names.NOTIFY_BATCH, args=[str(batch_id)])

    @_sends
    def notify_run(self, run_id: uuid.UUID) -> None:
        self.celery.send_task(names.NOTIFY_RUN, args=[str(run_id)])
