"""``CcqTask``: what every ccq task shares, so each task body is only its own step.

- Acknowledged late and rejected when its worker dies (the app's defaults, see
  ``tasks.celery_app``): every body is idempotent, its state lives in PostgreSQL.
- An outage of ccq's own PostgreSQL, Redis or broker retries the task with exponential
  backoff (1, 2, 4, … s, at most a minute, with jitter) for as long as it lasts, instead
  of failing it: a failed run task would leave a fan-out's parent waiting forever.
- ``self.context`` is this worker process's resources, built once after the fork.
"""

from __future__ import annotations

import redis
from celery import Task
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError

from tasks.context import WorkerContext, worker_context

# ccq's own dependencies being down; never the task's own mistakes.
OUTAGES = (OperationalError, redis.RedisError, KombuOperationalError)
OUTAGE_RETRY_MAX_SECONDS = 60


class CcqTask(Task):  # type: ignore[misc]
    autoretry_for = OUTAGES
    retry_backoff = True
    retry_backoff_max = OUTAGE_RETRY_MAX_SECONDS
    retry_jitter = True
    max_retries = None

    @property
    def context(self) -> WorkerContext:
        return worker_context()
