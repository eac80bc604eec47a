"""Shared fixtures: real PostgreSQL, Redis, Docker and the scripted model server.

`make test` has already bootstrapped the services and built the worker image; these
fixtures point ccq at a scratch database and Redis database of its own, and remove every
container they create (label ``ccq.test``) even when a test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
import redis
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from model_server.server import ModelServer
from orchestrator import migrate
from orchestrator.settings import Settings, load_settings
from tests.waiting import free_port, wait_for

TEST_REDIS_DB = 15
TEST_JWT_SECRET = "test-secret-" + "x" * 32


def _admin_url(database_url: str) -> str:
    return make_url(database_url).set(database="postgres").render_as_string(hide_password=False)


def recreate_database(database_url: str, name: str) -> str:
    """Drop and create ``name`` next to ``database_url``'s database; return its URL."""
    engine = create_engine(_admin_url(database_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(database_url).set(database=name).render_as_string(hide_password=False)


def drop_database(database_url: str, name: str) -> None:
    engine = create_engine(_admin_url(database_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """The environment's settings (as `make up` would read them), without the env file."""
    return load_settings(env_file=None)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ccq-data")


@pytest.fixture(scope="session")
def settings(base_settings: Settings, data_dir: Path, test_instance: str) -> Iterator[Settings]:
    """Settings for a migrated scratch database, a private Redis database and task queue.

    The database and queue are named after this run, so test runs side by side on one
    machine (and a `make up` stack) never see each other's rows or tasks.
    """
    database = "ccq_" + test_instance.replace("-", "_")
    database_url = recreate_database(base_settings.database_url, database)
    migrate.upgrade(database_url)
    redis_url = base_settings.redis_url.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}"
    yield load_settings(
        env_file=None,
        database_url=database_url,
        redis_url=redis_url,
        data_dir=data_dir,
        jwt_secret=TEST_JWT_SECRET,
        instance=test_instance,
    )
    drop_database(base_settings.database_url, database)


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_label() -> str:
    """A label value unique to this test run: everything created with it is removed."""
    return uuid.uuid4().hex


@pytest.fixture(scope="session")
def test_instance(test_label: str) -> str:
    """The ccq instance name of this test run: its workers label their containers with it."""
    return f"test-{test_label[:12]}"


@pytest.fixture(autouse=True, scope="session")
def _remove_test_containers(
    docker_client: docker.DockerClient, test_label: str, test_instance: str
) -> Iterator[None]:
    yield
    for label in (f"ccq.test={test_label}", f"ccq.instance={test_instance}"):
        for container in docker_client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)


@pytest.fixture(scope="session")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    """The scripted model server, bound where session containers can reach it."""
    record = tmp_path_factory.mktemp("model-server") / "requests.jsonl"
    server = ModelServer(host="0.0.0.0", port=0, record_path=record).start()  # noqa: S104
    yield server
    server.stop()


@pytest.fixture
def model(model_server: ModelServer) -> ModelServer:
    """The model server with an empty request record for this test."""
    model_server.clear()
    return model_server


def container_base_url(server: ModelServer) -> str:
    """The model server's URL as a session container sees it."""
    return f"http://host.docker.internal:{server.port}"


def stack_environment(settings: Settings, model_server: ModelServer) -> dict[str, str]:
    """The environment a ccq process needs to join this test stack."""
    secret = settings.jwt_secret
    assert secret is not None
    return {
        **os.environ,
        "CCQ_DATABASE_URL": settings.database_url,
        "CCQ_REDIS_URL": settings.redis_url,
        "CCQ_DATA_DIR": str(settings.data_dir),
        "CCQ_INSTANCE": settings.instance,
        "CCQ_JWT_SECRET": secret.get_secret_value(),
        "CCQ_ANTHROPIC_BASE_URL": container_base_url(model_server),
        "CCQ_RUN_SILENCE_TIMEOUT": "8",
        "ANTHROPIC_API_KEY": "test-key",
    }


class WorkerProcess:
    """A real `ccq worker` subprocess (Celery, prefork pool) on the test stack."""

    def __init__(
        self, env: dict[str, str], name: str, log_path: Path, concurrency: int = 4
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._env = env
        self._argv = [
            str(Path(sys.executable).with_name("ccq")),
            "worker",
            f"--hostname={name}@%h",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        self._starts = 0
        self._start()

    def _start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self._argv, env=self._env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._starts += 1

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            # Celery logs "ready." once per start; the log file spans restarts.
            return self.log_path.read_bytes().count(b"ready.") >= self._starts

        wait_for(ready, timeout=timeout, what=f"worker {self.name} to be ready")

    def restart(self) -> None:
        """Stop the process and start the same worker again (a worker host restart)."""
        self.stop()
        self._start()
        self.wait_ready()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class ApiProcess:
    """A real `ccq api` process (gunicorn, gevent) on a free port of the test stack."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {**env, "CCQ_API_PORT": str(self.port)}
        self._start()

    def _start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("ccq")), "api"],
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.log_path.parent,  # no .ccq/ccq.env here: the environment says it all
        )

    def wait_ready(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"ccq api exited: {self.log_path.read_text()[-3000:]}")
            try:
                return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=timeout, what="the API to answer /healthz")

    def restart(self) -> None:
        """Stop the process and start it again on the same port (a deploy, a crash)."""
        self.stop()
        self._start()
        self.wait_ready()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session")
def api_server(
    settings: Settings,
    model_server: ModelServer,
    worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiProcess]:
    """One real API process for the whole test run, beside the session's worker."""
    server = ApiProcess(
        stack_environment(settings, model_server), tmp_path_factory.mktemp("api") / "api.log"
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextmanager
def running_worker(
    settings: Settings, model_server: ModelServer, log_dir: Path, name: str
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stack_environment(settings, model_server), name, log_dir / "worker.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def worker(
    settings: Settings, model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One real worker for the whole session, as `make up` runs it."""
    with running_worker(
        settings, model_server, tmp_path_factory.mktemp("worker"), "test-worker"
    ) as process:
        yield process


@pytest.fixture(scope="session")
def second_worker(
    settings: Settings,
    model_server: ModelServer,
    worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """Another worker host on the same stack, for ordering and redelivery tests."""
    with running_worker(
        settings, model_server, tmp_path_factory.mktemp("worker2"), "test-worker-2"
    ) as process:
        yield process
