"""Shared fixtures: real PostgreSQL, Redis, Docker and the scripted model server.

`make test` has already bootstrapped the services and built the worker image; these
fixtures point ccq at a scratch database and Redis database of its own, and remove every
container they create (label ``ccq.test``) even when a test fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from model_server.server import ModelServer
from orchestrator.db import migrate
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.runtime.containers import docker_client as shared_docker_client
from orchestrator.settings import Settings, load_settings
from tests.egress import EGRESS_CEILING, ORIGIN_NAME, Origin
from tests.processes import (
    TEST_TREE_LIMITS,
    ApiProcess,
    GatewayProcess,
    WorkerProcess,
    drop_database,
    gateway_environment,
    recreate_database,
    redis_url_with_db,
    remove_containers,
    running,
    stack_environment,
)
from tests.waiting import free_port
from tests.webhooks import WEBHOOK_PORT

TEST_REDIS_DB = 15
TEST_JWT_SECRET = "test-secret-" + "x" * 32


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """The environment's settings (as `make up` would read them), without the env file."""
    return load_settings(env_file=None)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ccq-data")


@pytest.fixture(scope="session")
def egress_origin() -> Iterator[Origin]:
    """A web server on loopback that sessions may reach through the egress proxy."""
    origin = Origin()
    yield origin
    origin.close()


@pytest.fixture(scope="session")
def settings(
    base_settings: Settings, data_dir: Path, test_instance: str, egress_origin: Origin
) -> Iterator[Settings]:
    """Settings for a migrated scratch database, a private Redis database and task queue.

    The database and queue are named after this run, so test runs side by side on one
    machine (and a `make up` stack) never see each other's rows or tasks. The egress
    proxy's port is this run's own, and its policy lets sessions ask for the names of
    tests/egress.py, one of them pinned to the loopback origin.
    """
    database = "ccq_" + test_instance.replace("-", "_")
    database_url = recreate_database(base_settings.database_url, database)
    migrate.upgrade(database_url)
    redis_url = redis_url_with_db(base_settings.redis_url, TEST_REDIS_DB)
    yield load_settings(
        env_file=None,
        database_url=database_url,
        redis_url=redis_url,
        data_dir=data_dir,
        jwt_secret=TEST_JWT_SECRET,
        instance=test_instance,
        gateway_proxy_port=free_port(),
        egress_allow=list(EGRESS_CEILING),
        egress_hosts={ORIGIN_NAME: "127.0.0.1"},
        egress_ports=[80, 443, egress_origin.port],
        # Webhook receivers listen on loopback, on one port the operator allows.
        outbound_allow_private=True,
        outbound_ports=[80, 443, WEBHOOK_PORT],
        # Short, so tests of lost workers wait seconds; long enough that a loaded machine
        # never misses two renewals of a live run.
        run_lease_seconds=8,
        **{k.removeprefix("CCQ_").lower(): v for k, v in TEST_TREE_LIMITS.items()},
    )
    drop_database(base_settings.database_url, database)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """The test process's Docker client: the one ccq's code in this process shares."""
    return shared_docker_client()


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
        remove_containers(docker_client, label)
    # The session network its workers made.
    ContainerRuntime(docker_client).remove_networks(test_instance)


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


@pytest.fixture(scope="session")
def api_port() -> int:
    """The port of the test run's API, known to its workers (their containers call it)."""
    return free_port()


@pytest.fixture(scope="session")
def gateway_port() -> int:
    """The port of the test run's gateway, known to its workers (their containers call it)."""
    return free_port()


@pytest.fixture(scope="session")
def gateway(
    settings: Settings,
    model_server: ModelServer,
    api_port: int,
    gateway_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """The test run's gateway: the model proxy and ccq's tools, holding OPERATOR_KEY as
    the operator's credential."""
    with running(
        GatewayProcess(
            gateway_environment(settings, model_server, api_port, gateway_port),
            tmp_path_factory.mktemp("gateway") / "gateway.log",
        )
    ) as process:
        yield process


@pytest.fixture(scope="session")
def api_server(
    settings: Settings,
    model_server: ModelServer,
    worker: WorkerProcess,
    api_port: int,
    gateway_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiProcess]:
    """One real API process for the whole test run, beside the session's worker."""
    with running(
        ApiProcess(
            stack_environment(settings, model_server, api_port, gateway_port),
            tmp_path_factory.mktemp("api") / "api.log",
        )
    ) as server:
        yield server


@contextmanager
def running_worker(
    settings: Settings,
    model_server: ModelServer,
    log_dir: Path,
    name: str,
    ports: tuple[int, int],
) -> Iterator[WorkerProcess]:
    """A worker of the test stack; ``ports``: the API's and the gateway's."""
    with running(
        WorkerProcess(
            stack_environment(settings, model_server, *ports), name, log_dir / "worker.log"
        )
    ) as process:
        yield process


@pytest.fixture(scope="session")
def worker(
    settings: Settings,
    model_server: ModelServer,
    gateway: GatewayProcess,
    api_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """One real worker for the whole session, as `make up` runs it."""
    ports = (api_port, gateway.port)
    with running_worker(
        settings, model_server, tmp_path_factory.mktemp("worker"), "test-worker", ports
    ) as process:
        yield process


@pytest.fixture(scope="session")
def second_worker(
    settings: Settings,
    model_server: ModelServer,
    worker: WorkerProcess,
    gateway: GatewayProcess,
    api_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """Another worker host on the same stack, for ordering and redelivery tests."""
    ports = (api_port, gateway.port)
    with running_worker(
        settings, model_server, tmp_path_factory.mktemp("worker2"), "test-worker-2", ports
    ) as process:
        yield process
