"""Flower as `ccq flower` runs it, a real process on loopback: it asks for its login, it
refuses to listen elsewhere without one, and nothing it serves holds a worker's secrets.

The worker here is one of this module's own, on an instance (and so a queue) of its own,
given settings whose secrets are distinctive: a database URL whose password is written
percent-encoded (the same password, so the worker connects, but a string found nowhere
else) and a JWT secret of its own. Flower sees every worker on the test Redis database;
only this one's values are looked for.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from model_server.server import ModelServer
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.settings import Settings
from tasks.celery_app import make_celery
from tests.processes import (
    CCQ,
    CcqProcess,
    WorkerProcess,
    remove_containers,
    running,
    stack_environment,
)
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration

USER = "ops"
WORKER_NAME = "flower-worker"


class FlowerProcess(CcqProcess):
    """A real `ccq flower` on loopback at ``port``; ready once ``/healthcheck`` answers
    (Flower serves it without a login)."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        # Inspect replies from a busy worker on two cores take longer than Flower's 1 s.
        super().__init__([CCQ, "flower", "--inspect_timeout=10000"], env, log_path)

    def wait_ready(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"ccq flower exited: {self.log_path.read_text()[-3000:]}")
            try:
                return requests.get(f"{self.url}/healthcheck", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=timeout, what="ccq flower to answer /healthcheck")


def _flower_env(env: dict[str, str], port: int, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in env.items() if not k.startswith(("FLOWER_", "CCQ_FLOWER_"))}
    return {**clean, "CCQ_FLOWER_PORT": str(port), **extra}


def _ccq_flower(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`ccq flower` expected to refuse: it must exit long before the timeout."""
    return subprocess.run(
        [CCQ, "flower", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def password() -> str:
    return "flower-pw-" + secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def base_env(settings: Settings, model_server: ModelServer) -> dict[str, str]:
    return stack_environment(settings, model_server)


def test_flower_asks_for_its_login(base_env: dict[str, str], password: str, tmp_path: Path) -> None:
    port = free_port()
    env = _flower_env(base_env, port, CCQ_FLOWER_BASIC_AUTH=f"{USER}:{password}")
    with running(FlowerProcess(env, port, tmp_path / "flower.log")) as flower:
        for path in ("/", "/workers", "/tasks", "/broker", "/api/workers", "/api/tasks"):
            anonymous = requests.get(f"{flower.url}{path}", timeout=30)
            assert anonymous.status_code == 401, path
            wrong = requests.get(f"{flower.url}{path}", auth=(USER, "wrong"), timeout=30)
            assert wrong.status_code == 401, path
        for path in ("/workers", "/tasks", "/api/tasks"):
            signed_in = requests.get(f"{flower.url}{path}", auth=(USER, password), timeout=30)
            assert signed_in.status_code == 200, path
        # The password is in Flower's environment, not its command line (`ps` shows that).
        cmdline = Path(f"/proc/{flower.process.pid}/cmdline").read_bytes().decode()
        assert password not in cmdline
    assert password not in (tmp_path / "flower.log").read_text()


def test_flower_listens_on_loopback_by_default(base_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    with running(FlowerProcess(_flower_env(base_env, port), port, tmp_path / "flower.log")):
        listeners = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert f"127.0.0.1:{port}" in listeners
        assert f"0.0.0.0:{port}" not in listeners
        assert f"*:{port}" not in listeners


@pytest.mark.parametrize(
    ("variables", "args"),
    [
        ({"CCQ_FLOWER_ADDRESS": "0.0.0.0"}, ()),  # noqa: S104
        ({"FLOWER_ADDRESS": "0.0.0.0"}, ()),  # noqa: S104 - as compose used to set it
        ({}, ("--address=0.0.0.0",)),
        (
            {
                "FLOWER_ADDRESS": "::",
                "FLOWER_AUTH_PROVIDER": "flower.views.auth.GithubLoginHandler",
            },
            (),
        ),
    ],
)
def test_flower_refuses_another_address_without_a_login(
    base_env: dict[str, str], variables: dict[str, str], args: tuple[str, ...]
) -> None:
    result = _ccq_flower(_flower_env(base_env, free_port(), **variables), *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "without a login" in result.stderr
    assert "CCQ_FLOWER_BASIC_AUTH" in result.stderr
    assert "CCQ_FLOWER_ADDRESS" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_login_is_refused_without_showing_it(base_env: dict[str, str]) -> None:
    value = "ops-" + secrets.token_urlsafe(12)  # no `:password`
    result = _ccq_flower(_flower_env(base_env, free_port(), CCQ_FLOWER_BASIC_AUTH=value))
    assert result.returncode == 2
    assert "CCQ_FLOWER_BASIC_AUTH" in result.stderr
    assert value not in result.stderr + result.stdout


@dataclass
class Secrets:
    database_url: str
    encoded_password: str
    jwt_secret: str

    def values(self) -> dict[str, str]:
        return {
            "the database URL": self.database_url,
            "the database password (as written in the URL)": self.encoded_password,
            "the JWT secret": self.jwt_secret,
        }


@dataclass
class Monitored:
    flower: FlowerProcess
    worker: WorkerProcess
    worker_name: str
    settings: Settings
    secrets: Secrets


@pytest.fixture(scope="module")
def monitored(
    settings: Settings,
    model_server: ModelServer,
    password: str,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Monitored]:
    url = make_url(settings.database_url)
    assert url.password, "the test database URL has no password to hide"
    encoded = "".join(f"%{byte:02X}" for byte in str(url.password).encode())
    database_url = settings.database_url.replace(f":{url.password}@", f":{encoded}@", 1)
    assert encoded in database_url
    found = Secrets(database_url, encoded, "flower-jwt-" + secrets.token_urlsafe(32))
    own = settings.model_copy(
        update={"instance": f"{settings.instance}-flw", "gateway_proxy_port": free_port()}
    )
    env = {
        **stack_environment(own, model_server),
        "CCQ_DATABASE_URL": database_url,
        "CCQ_JWT_SECRET": found.jwt_secret,
    }
    logs = tmp_path_factory.mktemp("flower")
    port = free_port()
    flower_env = _flower_env(env, port, CCQ_FLOWER_BASIC_AUTH=f"{USER}:{password}")
    worker_name = f"{WORKER_NAME}@{socket.gethostname()}"
    try:
        with (
            running(WorkerProcess(env, WORKER_NAME, logs / "worker.log", concurrency=1)) as worker,
            running(FlowerProcess(flower_env, port, logs / "flower.log")) as flower,
        ):
            yield Monitored(flower, worker, worker_name, own, found)
    finally:
        remove_containers(docker_client, f"ccq.instance={own.instance}")
        ContainerRuntime(docker_client).remove_networks(own.instance)


def _assert_absent(where: str, text: str, values: dict[str, str]) -> None:
    for name, value in values.items():
        assert value not in text, f"{name} is in {where}"


def test_no_page_flower_serves_holds_a_worker_s_secrets(
    monitored: Monitored, password: str
) -> None:
    flower, name = monitored.flower, monitored.worker_name
    auth = (USER, password)

    def inspected() -> dict[str, object] | None:
        reply = requests.get(
            f"{flower.url}/api/workers",
            params={"refresh": "1", "workername": name},
            auth=auth,
            timeout=60,
        )
        worker = reply.json().get(name, {}) if reply.status_code == 200 else {}
        return worker if "conf" in worker and "stats" in worker else None

    worker = wait_for(inspected, timeout=90, interval=1, what="Flower to inspect the worker")
    # The worker did report its configuration: this module's queue is in it.
    assert monitored.settings.instance in json.dumps(worker["conf"])
    pages = [
        "/",
        "/workers",
        "/workers?refresh=1",
        "/workers?json=1",
        f"/worker/{name}",
        "/api/workers",
        "/api/workers?refresh=1",
        f"/api/workers?workername={name}",
        "/tasks",
        "/tasks/datatable?draw=1&start=0&length=100&order[0][column]=0&columns[0][data]=name",
        "/api/tasks",
        "/broker",
        "/metrics",
    ]
    for page in pages:
        reply = requests.get(f"{flower.url}{page}", auth=auth, timeout=60)
        assert reply.status_code == 200, f"{page}: {reply.status_code}"
        _assert_absent(f"Flower's {page}", reply.text, monitored.secrets.values())
    _assert_absent("Flower's log", flower.log_path.read_text(), monitored.secrets.values())


def test_the_worker_s_inspect_conf_holds_no_secret(monitored: Monitored) -> None:
    celery = make_celery(monitored.settings)
    try:
        inspect = celery.control.inspect(destination=[monitored.worker_name], timeout=10)
        conf = inspect.conf(with_defaults=True)
        report = inspect.report()
    finally:
        celery.close()
    assert conf, "the worker did not answer inspect conf"
    assert report, "the worker did not answer inspect report"
    _assert_absent("inspect conf", json.dumps(conf, default=str), monitored.secrets.values())
    _assert_absent("inspect report", json.dumps(report, default=str), monitored.secrets.values())


def test_the_values_looked_for_are_the_worker_s_own(monitored: Monitored) -> None:
    """Their absence above means something: the worker holds them, and the percent-encoded
    URL is a working one."""
    environ = Path(f"/proc/{monitored.worker.process.pid}/environ").read_bytes().split(b"\0")
    variables = dict(item.decode().partition("=")[::2] for item in environ if b"=" in item)
    assert variables["CCQ_DATABASE_URL"] == monitored.secrets.database_url
    assert variables["CCQ_JWT_SECRET"] == monitored.secrets.jwt_secret
    engine = create_engine(monitored.secrets.database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
