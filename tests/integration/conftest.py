"""Fixtures for tests that talk to the API in-process (the Flask app on the test stack),
and for tests that drive a session container through the runtime."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import docker
import pytest
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from api.app import create_app
from api.extensions import EXTENSION_KEY, Services
from orchestrator.db.engine import make_engine, make_session_factory
from orchestrator.runtime.containers import ContainerRuntime, SessionContainerSpec, SessionDirs
from orchestrator.runtime.host import HostResources
from orchestrator.runtime.janitor import Janitor
from orchestrator.settings import Settings


@pytest.fixture(scope="session")
def db_factory(settings: Settings) -> Iterator[sessionmaker[DbSession]]:
    """Sessions on the test database, for tests that arrange or read rows directly."""
    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


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


@pytest.fixture
def runtime(docker_client: docker.DockerClient) -> ContainerRuntime:
    return ContainerRuntime(docker_client)


@pytest.fixture
def janitor(settings: Settings, services: Services, runtime: ContainerRuntime) -> Janitor:
    """The worker's janitor on this test's stack, for reaping on demand."""
    return Janitor(HostResources(settings, services.session_factory, services.redis, runtime))


@pytest.fixture
def spec(settings: Settings, test_label: str) -> SessionContainerSpec:
    """A new session's container, labelled for this test run's cleanup."""
    session_id = str(uuid.uuid4())
    return SessionContainerSpec(
        session_id=session_id,
        owner="tester",
        image=settings.worker_image,
        dirs=SessionDirs.for_session(settings.data_dir, session_id),
        instance=settings.instance,
        extra_labels={"ccq.test": test_label},
    )
