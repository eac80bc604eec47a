"""Fixtures for tests that talk to the API in-process (the Flask app on the test stack)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.extensions import EXTENSION_KEY, Services
from orchestrator.settings import Settings


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    app.extensions[EXTENSION_KEY].close()


@pytest.fixture
def services(app: Flask) -> Services:
    services: Services = app.extensions[EXTENSION_KEY]
    return services


@pytest.fixture
def celery_app(services: Services) -> Celery:
    return services.enqueue.celery


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
