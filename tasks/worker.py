"""Celery entry point: ``celery -A tasks.worker worker`` (and ``beat``, ``flower``)."""

from orchestrator.settings import load_settings
from tasks.celery_app import make_celery

app = make_celery(load_settings())
