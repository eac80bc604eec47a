"""The one place the Celery app is built, from settings passed in (never at import time).

Reliability choices (see DESIGN.md, "Reliability notes"):
- ``acks_late`` + ``reject_on_worker_lost``, for every task (no decorator repeats them):
  a task whose worker died is requeued, and task bodies are idempotent (their state
  lives in PostgreSQL) so a second delivery is harmless.
- ``worker_prefetch_multiplier = 1``: a worker holds one long run at a time per slot.
- soft time limit < hard time limit < visibility timeout, so Redis never redelivers a run
  that is still inside its limits.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue

from orchestrator.settings import Settings
from tasks import names

# Headroom between the run's own limit and Celery's: the run kills its container first.
TIME_LIMIT_MARGIN_SECONDS = 120
# Celery's own Redis connections (broker and result backend): a publish or a chord's join
# on a hung Redis fails in seconds rather than hanging the task or beat. The broker's
# BRPOP blocks 1 s on the server (kombu's default) and is read only once readable, so
# these stay well above it. (See orchestrator.runtime.redis_client for ccq's own client.)
CELERY_REDIS_SOCKET_TIMEOUT_SECONDS = 10.0
CELERY_REDIS_CONNECT_TIMEOUT_SECONDS = 3.0
CELERY_REDIS_HEALTH_CHECK_INTERVAL_SECONDS = 25


def make_celery(settings: Settings) -> Celery:
    app = Celery(
        "ccq",
        broker=settings.redis_url,
        backend=settings.redis_url,
        include=[
            "tasks.runs",
            "tasks.sessions",
            "tasks.fanouts",
            "tasks.batches",
            "tasks.notify",
            "tasks.sweep",
            "tasks.retention",
            "tasks.reconcile",
            # Not a task module: the worker's heartbeat thread, started when it is ready.
            # Included here so only workers import it (and, through it, Docker).
            "tasks.heartbeat",
        ],
    )
    hard_limit = settings.run_time_limit + TIME_LIMIT_MARGIN_SECONDS
    app.conf.update(
        # One queue per ccq instance: deployments (and test runs) sharing a Redis stay apart.
        # Batch items have a queue of their own: workers take from both in turn, so an
        # interactive prompt is never behind thousands of batch items.
        task_default_queue=settings.instance,
        task_queues=[Queue(name) for name in (settings.instance, batch_queue(settings))],  # type: ignore[no-untyped-call]
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,  # chord members turn results back on explicitly
        task_track_started=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.run_time_limit + TIME_LIMIT_MARGIN_SECONDS / 2,
        task_time_limit=hard_limit,
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": int(hard_limit * 2),
            # Bring back a dead worker's unacknowledged tasks in seconds, not ~100 s.
            "unacked_restore_interval": 5,
            "socket_timeout": CELERY_REDIS_SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": CELERY_REDIS_CONNECT_TIMEOUT_SECONDS,
            "health_check_interval": CELERY_REDIS_HEALTH_CHECK_INTERVAL_SECONDS,
        },
        redis_socket_timeout=CELERY_REDIS_SOCKET_TIMEOUT_SECONDS,
        redis_socket_connect_timeout=CELERY_REDIS_CONNECT_TIMEOUT_SECONDS,
        redis_backend_health_check_interval=CELERY_REDIS_HEALTH_CHECK_INTERVAL_SECONDS,
        worker_send_task_events=True,  # Flower
        task_send_sent_event=True,
        timezone="UTC",
        beat_schedule={
            "reap-containers": {
                "task": names.REAP_CONTAINERS,
                "schedule": max(10.0, settings.idle_timeout / 4),
            },
            "sweep": {"task": names.SWEEP, "schedule": 60.0},
            "enforce-retention": {
                "task": names.ENFORCE_RETENTION,
                "schedule": settings.retention_interval,
            },
            "reconcile": {"task": names.RECONCILE, "schedule": settings.reconcile_interval},
        },
    )
    # Beside the configuration, not in it: workers send `app.conf` to `celery inspect conf`
    # and Flower, and Celery masks only keys that look secret (and broker/backend URLs),
    # not a settings object whose repr holds the database URL with its password.
    app.ccq_settings = settings
    return app


def batch_queue(settings: Settings) -> str:
    return f"{settings.instance}.batch"


def settings_of(app: Celery) -> Settings:
    settings: Settings = app.ccq_settings
    return settings
