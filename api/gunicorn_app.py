"""Serve the API with gunicorn from code, so settings are validated before it forks."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from api.app import create_app
from orchestrator.settings import Settings


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self._settings = settings
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app(self._settings)


def run(settings: Settings, *, workers: int, threads: int) -> None:
    """Threads, not processes, hold WebSocket tails: one socket costs one thread."""
    options = {
        "bind": f"{settings.api_host}:{settings.api_port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 120,
        "graceful_timeout": 10,
        "accesslog": "-",
        "loglevel": settings.log_level.lower(),
    }
    _Server(settings, options).run()
