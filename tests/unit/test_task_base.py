"""The shared task policy: every ccq task on CcqTask, outages retried, bodies thin."""

from __future__ import annotations

import ast
import inspect

import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError

from orchestrator.settings import Settings
from tasks import names
from tasks.base import OUTAGES, CcqTask
from tasks.celery_app import make_celery
from tests.waiting import free_port

TASK_MODULES = ("runs", "sessions", "fanouts", "batches", "notify", "sweep")


@pytest.fixture(scope="module")
def app() -> Celery:
    app = make_celery(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    app.loader.import_default_modules()
    app.set_current()
    for module in TASK_MODULES:
        __import__(f"tasks.{module}")
    return app


def _ccq_tasks(app: Celery) -> dict[str, object]:
    return {name: task for name, task in app.tasks.items() if name.startswith("ccq.")}


def test_every_named_task_is_registered_on_ccq_task(app: Celery) -> None:
    declared = {v for k, v in vars(names).items() if k.isupper()}
    registered = _ccq_tasks(app)
    assert set(registered) == declared
    assert all(isinstance(task, CcqTask) for task in registered.values())


def test_outages_of_postgresql_redis_and_the_broker_retry_with_backoff() -> None:
    for outage in (OperationalError, redis.RedisError, KombuOperationalError):
        assert outage in OUTAGES
    assert CcqTask.autoretry_for == OUTAGES
    assert CcqTask.retry_backoff
    assert CcqTask.max_retries is None


def test_acks_late_is_the_apps_not_each_decorators(app: Celery) -> None:
    assert app.conf.task_acks_late
    assert app.conf.task_reject_on_worker_lost
    for module in TASK_MODULES:
        source = inspect.getsource(__import__(f"tasks.{module}", fromlist=["_"]))
        assert "acks_late" not in source, module


@pytest.mark.parametrize("module", TASK_MODULES)
def test_task_bodies_are_thin(module: str) -> None:
    """Each task body (the decorated function, docstring aside) is at most 15 lines."""
    tree = ast.parse(inspect.getsource(__import__(f"tasks.{module}", fromlist=["_"])))
    bodies = [
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.decorator_list
    ]
    assert bodies, module
    for node in bodies:
        statements = node.body[1:] if ast.get_docstring(node) else node.body
        lines = statements[-1].end_lineno - statements[0].lineno + 1  # type: ignore[operator]
        assert lines <= 15, f"{module}.{node.name}: {lines} lines"
