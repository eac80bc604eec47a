"""/healthz and /readyz against real services, and a Redis that goes away."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator

import docker
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.extensions import EXTENSION_KEY
from orchestrator import readiness
from orchestrator.runtime import heartbeat
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.settings import Settings, load_settings
from tests.processes import GatewayProcess
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A private redis-server this test may stop without disturbing anyone else."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        wait_for(client.ping, timeout=10, what="redis-server to answer")
        yield process, port
    finally:
        client.close()
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def client_for(settings: Settings) -> Iterator[Callable[..., FlaskClient]]:
    """Build API test clients against a given Redis port (and database URL)."""
    apps: list[Flask] = []

    def build(
        redis_port: int, database_url: str = settings.database_url, **overrides: object
    ) -> FlaskClient:
        app = create_app(
            load_settings(
                env_file=None,
                database_url=database_url,
                redis_url=f"redis://127.0.0.1:{redis_port}/0",
                jwt_secret="x" * 32,
                **overrides,
            )
        )
        apps.append(app)
        return app.test_client()

    yield build
    for app in apps:
        app.extensions[EXTENSION_KEY].close()


def _report_this_host(redis_port: int, settings: Settings) -> None:
    """What a worker's heartbeat thread does: probe the real Docker engine and image."""
    client = redis.Redis(port=redis_port)
    readiness.publish(client, heartbeat.probe_host("test-host", settings.worker_image))
    client.close()


def test_healthz_needs_nothing(
    client_for: Callable[..., FlaskClient], own_redis: tuple[subprocess.Popen[bytes], int]
) -> None:
    process, port = own_redis
    process.kill()
    process.wait(timeout=10)
    response = client_for(port).get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


@pytest.mark.parametrize("network_mode", ["isolated", "open"])
def test_ready_when_every_dependency_answers(
    settings: Settings,
    client_for: Callable[..., FlaskClient],
    own_redis: tuple[subprocess.Popen[bytes], int],
    network_mode: str,
) -> None:
    """Ready, saying how session containers are networked (an open install shows)."""
    _, port = own_redis
    _report_this_host(port, settings)
    response = client_for(port, network_mode=network_mode).get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json == {"status": "ready", "network": network_mode}


def test_not_ready_without_a_worker_heartbeat(
    settings: Settings,
    client_for: Callable[..., FlaskClient],
    own_redis: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = own_redis
    response = client_for(port).get("/readyz")
    assert response.status_code == 503
    assert response.json is not None
    assert "docker" in response.json["error"]["details"]


def test_503_names_redis_when_redis_is_stopped(
    settings: Settings,
    client_for: Callable[..., FlaskClient],
    own_redis: tuple[subprocess.Popen[bytes], int],
) -> None:
    process, port = own_redis
    _report_this_host(port, settings)
    client = client_for(port)
    assert client.get("/readyz").status_code == 200

    process.terminate()
    process.wait(timeout=10)
    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json
    assert body is not None
    assert body["error"]["code"] == "dependency_unavailable"
    assert "redis" in body["error"]["message"]
    assert set(body["error"]["details"]) == {"redis"}


def test_503_names_postgres_when_it_cannot_be_reached(
    settings: Settings,
    client_for: Callable[..., FlaskClient],
    own_redis: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = own_redis
    _report_this_host(port, settings)
    unreachable = f"postgresql+psycopg://ccq:ccq@127.0.0.1:{free_port()}/ccq"
    response = client_for(port, unreachable).get("/readyz")
    assert response.status_code == 503
    assert response.json is not None
    assert set(response.json["error"]["details"]) == {"postgres"}


def _reach(settings: Settings, gateway_port: int, instance: str) -> heartbeat.ReachCheck:
    """The worker heartbeat's check that session containers reach the API on a port.

    Its probe containers carry ``instance`` (not the stack's own, whose worker runs the
    same check), so a test can count them.
    """
    return heartbeat.ReachCheck(
        image=settings.worker_image,
        network=settings.session_network_name,
        instance=instance,
        url=f"http://host.docker.internal:{gateway_port}",
        recheck=heartbeat.REACH_RECHECK_SECONDS,
    )


def test_503_names_the_session_network_when_containers_cannot_reach_the_gateway(
    settings: Settings,
    client_for: Callable[..., FlaskClient],
    own_redis: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, port = own_redis
    nothing_there = free_port()  # on the host, where containers would call the gateway
    status = heartbeat.probe_host(
        "test-host", settings.worker_image, _reach(settings, nothing_there, settings.instance)
    )
    client = redis.Redis(port=port)
    readiness.publish(client, status)
    client.close()

    response = client_for(port).get("/readyz")
    assert response.status_code == 503
    assert response.json is not None
    details = response.json["error"]["details"]
    assert set(details) == {"session_network"}
    assert (
        f"cannot reach http://host.docker.internal:{nothing_there}/healthz"
        in details["session_network"]
    )
    assert "Connection refused" in details["session_network"]


def test_the_reach_check_passes_against_the_real_gateway_and_is_not_repeated_at_once(
    settings: Settings, gateway: GatewayProcess, docker_client: docker.DockerClient
) -> None:
    since = int(time.time()) - 1
    instance = settings.instance + "-reach"
    reach = _reach(settings, gateway.port, instance)
    runtime = ContainerRuntime(docker_client)
    assert reach(runtime) is None
    assert _probe_containers_run(docker_client, instance, since) == 1
    assert reach(runtime) is None  # remembered: no second container
    assert _probe_containers_run(docker_client, instance, since) == 1
    # The throw-away container is gone once the check returns.
    assert not docker_client.containers.list(
        all=True, filters={"label": ["ccq.probe=1", f"ccq.instance={instance}"]}
    )


def _probe_containers_run(client: docker.DockerClient, instance: str, since: int) -> int:
    events = client.api.events(
        since=since,
        until=int(time.time()) + 1,
        decode=True,
        filters={"type": "container", "event": "create", "label": "ccq.probe=1"},
    )
    return sum(1 for e in events if e["Actor"]["Attributes"].get("ccq.instance") == instance)
