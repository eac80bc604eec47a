"""Real ccq processes and scratch databases for tests and benchmarks.

A test (or `make bench`) stack is a scratch PostgreSQL database, a Redis database, an
instance name of its own, the scripted model server and real `ccq api` / `ccq worker`
processes started from this virtual environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import docker
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from model_server.server import ModelServer
from orchestrator.settings import Settings
from tests.waiting import free_port, wait_for

CCQ = str(Path(sys.executable).with_name("ccq"))
# The CLI insists on a credential; the scripted model server ignores it.
SCRIPTED_MODEL_KEY = "test-key"
# The operator's credential the test stack's gateway holds: distinctive, so a test can
# look for it anywhere a session could see it.
OPERATOR_KEY = "sk-ant-ccq-test-operator-key-7f3a9c"


def redis_url_with_db(url: str, db: int) -> str:
    """``url`` pointing at Redis database ``db`` (whatever database it named, if any)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def remove_containers(client: docker.DockerClient, label: str) -> None:
    """Remove every container (running or not) carrying ``label`` (``name=value``)."""
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)


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


def container_base_url(server: ModelServer) -> str:
    """The model server's URL as a session container sees it (tests that run the CLI
    straight at the model server, without ccq)."""
    return f"http://host.docker.internal:{server.port}"


CREDENTIAL_VARIABLES = (
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CCQ_ANTHROPIC_API_KEY",
    "CCQ_CLAUDE_CODE_OAUTH_TOKEN",
)


# Small tree limits, so tests reach them with few sessions.
TEST_TREE_LIMITS = {
    "CCQ_MAX_DEPTH": "2",
    "CCQ_MAX_CHILDREN": "4",
    "CCQ_MAX_TREE_SESSIONS": "8",
    # The suite creates many sessions with one owner; the limit's own tests lower it.
    "CCQ_SESSIONS_PER_MINUTE_PER_OWNER": "1000000",
    # Likewise tails (a hundred of one owner at once); the caps' own tests lower them.
    "CCQ_MAX_TAILS_PER_OWNER": "1000",
}


def stack_environment(
    settings: Settings,
    model_server: ModelServer,
    api_port: int | None = None,
    gateway_port: int | None = None,
    *,
    credential: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment a ccq process needs to join this test stack, as `make up` gives it.

    The API listens on loopback at ``api_port``; the gateway on every interface at
    ``gateway_port`` (session containers reach it through the Docker host gateway, and
    workers tell their containers that port). Only the gateway gets a Claude
    ``credential`` (the scripted model server's key by default): every other process
    starts without one, as under `make up`.
    """
    secret = settings.jwt_secret
    assert secret is not None
    base = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    return {
        **base,
        **TEST_TREE_LIMITS,
        **(credential or {}),
        "CCQ_API_HOST": "127.0.0.1",
        "CCQ_API_PORT": str(api_port or free_port()),
        "CCQ_GATEWAY_HOST": "0.0.0.0",  # noqa: S104 - session containers must reach it
        "CCQ_GATEWAY_PORT": str(gateway_port or free_port()),
        "CCQ_DATABASE_URL": settings.database_url,
        "CCQ_REDIS_URL": settings.redis_url,
        "CCQ_DATA_DIR": str(settings.data_dir),
        "CCQ_INSTANCE": settings.instance,
        "CCQ_JWT_SECRET": secret.get_secret_value(),
        "CCQ_NETWORK_MODE": settings.network_mode,
        "CCQ_GATEWAY_PROXY_PORT": str(settings.gateway_proxy_port),
        "CCQ_EGRESS_ALLOW": ",".join(settings.egress_allow),
        "CCQ_EGRESS_HOSTS": ",".join(f"{k}={v}" for k, v in settings.egress_hosts.items()),
        "CCQ_EGRESS_PORTS": ",".join(map(str, settings.egress_ports)),
        "CCQ_OUTBOUND_PORTS": ",".join(map(str, settings.outbound_ports)),
        "CCQ_OUTBOUND_ALLOW_PRIVATE": str(settings.outbound_allow_private).lower(),
        # Only the gateway calls the model server: loopback.
        "CCQ_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model_server.port}",
        # Many cold CLI starts at once on two cores must not look like a hung run.
        "CCQ_RUN_SILENCE_TIMEOUT": "20",
        # A lost run is found in seconds (the settings fixture's value).
        "CCQ_RUN_LEASE_SECONDS": str(settings.run_lease_seconds),
    }


def gateway_environment(
    settings: Settings,
    model_server: ModelServer,
    api_port: int,
    gateway_port: int,
    credential: dict[str, str] | None = None,
) -> dict[str, str]:
    """The gateway's environment: the stack's, plus the operator's credential."""
    return stack_environment(
        settings,
        model_server,
        api_port,
        gateway_port,
        credential=credential or {"ANTHROPIC_API_KEY": OPERATOR_KEY},
    )


class CcqProcess:
    """A `ccq` subprocess with its output in ``log_path``, restartable with the same
    arguments (a host restart, a deploy, a crash)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._argv = argv
        self._env = env
        self._starts = 0
        self._start()

    def _start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self._argv,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.log_path.parent,  # no .ccq/ccq.env here: the environment says it all
        )
        self._starts += 1

    def wait_ready(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop the process and start it again, then wait until it is ready."""
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


P = TypeVar("P", bound=CcqProcess)


@contextmanager
def running(process: P) -> Iterator[P]:
    """The process once ready; stopped on the way out, whatever happened."""
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


class WorkerProcess(CcqProcess):
    """A real `ccq worker` subprocess (Celery, prefork pool) on the test stack."""

    def __init__(
        self, env: dict[str, str], name: str, log_path: Path, concurrency: int = 4
    ) -> None:
        self.name = name
        argv = [
            CCQ,
            "worker",
            f"--hostname={name}@%h",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        super().__init__(argv, env, log_path)

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            # Celery logs "ready." once per start; the log file spans restarts.
            return self.log_path.read_bytes().count(b"ready.") >= self._starts

        wait_for(ready, timeout=timeout, what=f"worker {self.name} to be ready")


class HttpProcess(CcqProcess):
    """A `ccq` process serving HTTP on loopback at ``port``; ready once ``/healthz`` is 200."""

    def __init__(self, command: str, port: int, env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__([CCQ, command], env, log_path)

    def wait_ready(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"ccq {self.command} exited: {self.log_path.read_text()[-3000:]}"
                )
            try:
                return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout=timeout, what=f"ccq {self.command} to answer /healthz")


class GatewayProcess(HttpProcess):
    """A real `ccq gateway` process (uvicorn) of the test stack."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("gateway", int(env["CCQ_GATEWAY_PORT"]), env, log_path)

    def metrics(self) -> dict[str, float]:
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line.strip())
        return {name.removeprefix("ccq_gateway_"): float(value) for name, value in pairs}


class ApiProcess(HttpProcess):
    """A real `ccq api` process (gunicorn, gevent) on a free port of the test stack."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__("api", int(env["CCQ_API_PORT"]), env, log_path)
        self.ws_url = f"ws://127.0.0.1:{self.port}"
