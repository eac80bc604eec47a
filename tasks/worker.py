"""Celery entry point: ``celery -A tasks.worker worker`` (and ``beat``). Flower: ``ccq
flower``, which checks its address and login."""

from orchestrator.settings import load_settings
from tasks.celery_app import make_celery

app = make_celery(load_settings())
