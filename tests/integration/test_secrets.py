"""Secrets by name on the real stack: a session that asks for ``GITHUB_TOKEN`` gets it in
its CLI's environment, its Bash tool sees the right value, and neither the value nor the
run's session token leaves the worker: not in the run's events (Redis and PostgreSQL),
its result or error (API, webhook), the API's, worker's or gateway's logs, anything in
Redis (Celery's queues and result backend), nor what Flower sees (the task events the
worker broadcasts, its ``inspect conf``). A session that did not ask does not have it.

This module runs a gateway, an API and a worker of its own, on an instance (and so a
Celery queue, a session network and its firewall chain) of its own; the API and the
worker are given ``CCQ_SECRET_GITHUB_TOKEN``, the gateway is not. The shared scripted
model server answers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db.models import Event, Run
from orchestrator.db.models import Session as SessionRow
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.runtime.labels import LABEL_SESSION
from orchestrator.settings import Settings
from orchestrator.streams.events import stream_key
from tasks.celery_app import make_celery
from tests.http_api import SessionApi, bash, ccq_tool
from tests.processes import (
    CCQ,
    ApiProcess,
    GatewayProcess,
    WorkerProcess,
    gateway_environment,
    remove_containers,
    running,
    stack_environment,
)
from tests.waiting import free_port, wait_for
from tests.webhooks import Received, ScriptedReceiver

pytestmark = pytest.mark.integration

SECRET_NAME = "GITHUB_TOKEN"
TOKEN_FILE = "/workspace/.ccq-test-run-token"
WORKER_NAME = "secrets-worker"

# Prints the secret and the run's token (to be redacted), their SHA-256 (to compare),
# and leaves the token where the test can read it from the container.
PRINT_SECRETS = (
    'echo "secret=$GITHUB_TOKEN"; '
    'printf %s "$GITHUB_TOKEN" | sha256sum; '
    'echo "token=$CCQ_SESSION_TOKEN"; '
    'printf %s "$CCQ_SESSION_TOKEN" | sha256sum; '
    f'printf %s "$CCQ_SESSION_TOKEN" > {TOKEN_FILE}'
)
# Writes both to the CLI's own stderr and kills the CLI: the run fails with its stderr
# tail in run.error. (The pattern is split so it does not match this shell's own
# command line.)
LEAK_TO_STDERR_AND_DIE = (
    f'printf %s "$CCQ_SESSION_TOKEN" > {TOKEN_FILE}-2; '
    "a=stream; b=json; pids=; "
    "for p in /proc/[0-9]*; do "
    "case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in "
    '*--output-format=$a-$b*) pids="$pids ${p#/proc/}";; esac; done; '
    'for q in $pids; do echo "leaked $GITHUB_TOKEN and $CCQ_SESSION_TOKEN" > /proc/$q/fd/2; '
    "done; kill -9 $pids"
)


@pytest.fixture(scope="module")
def secret_value() -> str:
    return "ghs_" + secrets.token_urlsafe(30)


@pytest.fixture(scope="module")
def own_settings(settings: Settings) -> Settings:
    """The test stack's settings on an instance of this module's own."""
    return settings.model_copy(
        update={"instance": f"{settings.instance}-sec", "gateway_proxy_port": free_port()}
    )


@dataclass
class CapturedEvents:
    """Celery's event stream as Flower reads it (task-received with the task's args,
    task-succeeded with its result, worker heartbeats)."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        return json.dumps(self.events, default=str)


@dataclass
class Stack:
    gateway: GatewayProcess
    api: ApiProcess
    worker: WorkerProcess
    celery: Celery
    flower: CapturedEvents


@pytest.fixture(scope="module")
def stack(
    own_settings: Settings,
    model_server: ModelServer,
    secret_value: str,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("secrets")
    ports = (free_port(), free_port())  # the API's, the gateway's
    env = {
        **stack_environment(own_settings, model_server, *ports),
        f"CCQ_SECRET_{SECRET_NAME}": secret_value,
    }
    gateway_env = gateway_environment(own_settings, model_server, *ports)
    celery = make_celery(own_settings)
    captured = CapturedEvents()
    try:
        with (
            running(GatewayProcess(gateway_env, logs / "gateway.log")) as gateway,
            running(WorkerProcess(env, WORKER_NAME, logs / "worker.log")) as worker,
            running(ApiProcess(env, logs / "api.log")) as api,
            _capturing_events(celery, captured),
        ):
            yield Stack(gateway, api, worker, celery, captured)
    finally:
        celery.close()
        remove_containers(docker_client, f"ccq.instance={own_settings.instance}")
        ContainerRuntime(docker_client).remove_networks(own_settings.instance)


@pytest.fixture(scope="module")
def api(stack: Stack, own_settings: Settings) -> SessionApi:
    return SessionApi(stack.api, mint_token(own_settings, f"sec-{uuid.uuid4().hex[:8]}"))


@contextmanager
def _capturing_events(celery: Celery, captured: CapturedEvents) -> Iterator[None]:
    """Celery's event receiver in a thread, as Flower runs it, from the worker's first
    heartbeat (so nothing of a run is missed) to the end."""
    connection = celery.connection_for_read()
    receiver = celery.events.Receiver(connection, handlers={"*": captured.events.append})

    def capture() -> None:
        with contextlib.suppress(Exception):  # the connection closes under it at the end
            receiver.capture(limit=None, timeout=None, wakeup=False)

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: any(
                e.get("type") == "worker-heartbeat"
                and str(e.get("hostname", "")).startswith(WORKER_NAME)
                for e in list(captured.events)
            ),
            timeout=60,
            what="the worker's heartbeat on Celery's event stream",
        )
        yield
    finally:
        receiver.should_stop = True
        thread.join(timeout=10)
        connection.release()


@dataclass
class Leaks:
    """What the module's sessions did, and every value that must not show anywhere."""

    session_id: str
    printed_run: dict[str, Any]
    failed_run: dict[str, Any]
    printed_token: str
    failed_token: str
    webhooks: list[dict[str, Any]]

    def run_ids(self) -> list[str]:
        return [self.printed_run["id"], self.failed_run["id"]]


def _container_file(docker_client: docker.DockerClient, session_id: str, path: str) -> str:
    (container,) = docker_client.containers.list(filters={"label": f"{LABEL_SESSION}={session_id}"})
    code, output = container.exec_run(["cat", path])
    assert code == 0, output
    text: str = output.decode()
    return text


@pytest.fixture(scope="module")
def leaks(api: SessionApi, docker_client: docker.DockerClient) -> Iterator[Leaks]:
    receiver = ScriptedReceiver()
    try:
        created = api.post(
            "/sessions",
            {
                # ccq's tools too: the token goes CLI -> gateway -> API with the call.
                "prompt": bash(PRINT_SECRETS) + " " + ccq_tool("list_children", {}),
                "secrets": [SECRET_NAME],
                "notify_url": receiver.hook("secrets"),
            },
            201,
        )
        session_id = created["session"]["id"]
        printed = api.wait_run(created["run"]["id"])
        printed_token = _container_file(docker_client, session_id, TOKEN_FILE)
        failed = api.wait_run(api.prompt(session_id, bash(LEAK_TO_STDERR_AND_DIE)))
        failed_token = _container_file(docker_client, session_id, TOKEN_FILE + "-2")

        def both_hooks() -> list[Received] | None:
            seen = receiver.seen("secrets")
            return seen if len(seen) >= 2 else None

        hooks = wait_for(both_hooks, timeout=60, what="both runs' webhooks")
        yield Leaks(
            session_id, printed, failed, printed_token, failed_token, [h.body for h in hooks]
        )
    finally:
        receiver.close()


def _values(leaks: Leaks, secret_value: str) -> dict[str, str]:
    values = {
        "secret": secret_value,
        "first run's token": leaks.printed_token,
        "second run's token": leaks.failed_token,
    }
    assert all(v.startswith(("ghs_", "ccqs_")) for v in values.values()), values
    return values


def _assert_absent(where: str, text: str, values: dict[str, str]) -> None:
    for what, value in values.items():
        assert text.count(value) == 0, f"the {what} occurs in {where}"


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- the session gets its secret ---------------------------------------------------------


def test_the_session_s_tool_sees_the_secret_and_its_token(leaks: Leaks, secret_value: str) -> None:
    run = leaks.printed_run
    assert run["status"] == "succeeded", run
    printed = run["result"]
    assert f"secret=[REDACTED:{SECRET_NAME}]" in printed
    assert "token=[REDACTED:CCQ_SESSION_TOKEN]" in printed
    lines = printed.splitlines()
    # sha256sum prints "<hex>  -": the tool saw exactly the values.
    assert f"{_sha256(secret_value)}  -" in lines, printed
    assert f"{_sha256(leaks.printed_token)}  -" in lines, printed
    assert "This session has no children." in lines, printed  # the tool call went through


def test_a_run_whose_cli_dies_has_its_stderr_redacted_in_its_error(
    leaks: Leaks, api: SessionApi
) -> None:
    run = leaks.failed_run
    assert run["status"] == "failed", run
    error = run["error"]
    assert f"leaked [REDACTED:{SECRET_NAME}] and [REDACTED:CCQ_SESSION_TOKEN]" in error, error
    events = api.get(f"/runs/{run['id']}/events?limit=500")["events"]
    stderr = [e["data"]["line"] for e in events if e["type"] == "ccq.stderr"]
    assert f"leaked [REDACTED:{SECRET_NAME}] and [REDACTED:CCQ_SESSION_TOKEN]" in stderr


def test_a_value_streamed_across_deltas_never_shows_in_the_events(
    api: SessionApi, secret_value: str
) -> None:
    # The scripted model streams a tool call's input in 32-character input_json_delta
    # pieces: a value in it spans two or three deltas. (The prompt carries the value
    # here, as a user may paste one; ccq.run.queued carries only the prompt's length.)
    command = {"command": f"echo {secret_value}"}
    created = api.post(
        "/sessions", {"prompt": bash(command["command"]), "secrets": [SECRET_NAME]}, 201
    )
    run = api.wait_run(created["run"]["id"])
    assert run["status"] == "succeeded", run
    events = api.get(f"/runs/{run['id']}/events?limit=500")["events"]
    pieces = [
        e["data"]["event"]["delta"]["partial_json"]
        for e in events
        if e["type"] == "stream_event"
        and e["data"]["event"].get("type") == "content_block_delta"
        and e["data"]["event"]["delta"].get("type") == "input_json_delta"
    ]
    assert len(pieces) >= 2, pieces
    assert "".join(pieces) == json.dumps({"command": f"echo [REDACTED:{SECRET_NAME}]"})
    assert json.dumps(events).count(secret_value[:12]) == 0
    assert run["result"] == f"tool result: [REDACTED:{SECRET_NAME}]"


def test_a_session_that_did_not_ask_does_not_have_it(api: SessionApi) -> None:
    created = api.post(
        "/sessions", {"prompt": bash('echo "secret=${GITHUB_TOKEN:-none}"; env | wc -l')}, 201
    )
    run = api.wait_run(created["run"]["id"])
    assert run["status"] == "succeeded", run
    assert "secret=none" in run["result"]


def test_a_name_the_worker_no_longer_holds_fails_the_run_clearly(
    api: SessionApi, db_factory: sessionmaker[DbSession]
) -> None:
    # The operator removed a secret after the session was made (here: the session's
    # stored options name one this worker never had).
    session_id = api.post("/sessions", {"secrets": [SECRET_NAME]}, 201)["session"]["id"]
    with db_factory() as db, db.begin():
        session = db.get(SessionRow, uuid.UUID(session_id))
        assert session is not None
        session.options = {**session.options, "secrets": [SECRET_NAME, "REMOVED_SINCE"]}
    run = api.wait_run(api.prompt(session_id, "hello"))
    assert run["status"] == "failed", run
    assert run["error"] == (
        "SecretMissing: the secret REMOVED_SINCE this session holds is not configured on "
        "this worker (CCQ_SECRET_REMOVED_SINCE or CCQ_SECRETS_FILE)"
    )


def test_an_unknown_secret_name_is_refused_naming_the_field(api: SessionApi) -> None:
    refused = api.post("/sessions", {"prompt": "hi", "secrets": [SECRET_NAME, "NOPE"]}, 400)
    assert refused["error"]["details"][0]["field"] == "secrets.1"


# --- and nothing else does ---------------------------------------------------------------


def test_the_values_are_not_in_the_run_s_events_in_redis_or_postgresql(
    leaks: Leaks,
    secret_value: str,
    own_settings: Settings,
    db_factory: sessionmaker[DbSession],
) -> None:
    values = _values(leaks, secret_value)
    client = redis.Redis.from_url(own_settings.redis_url, decode_responses=True)
    try:
        entries: Any = client.xrange(stream_key(leaks.session_id))
    finally:
        client.close()
    in_redis = "\n".join(value for _, entry in entries for value in entry.values())
    assert f"[REDACTED:{SECRET_NAME}]" in in_redis  # the tool's output, redacted
    _assert_absent("the session's Redis stream", in_redis, values)

    with db_factory() as db:
        rows = db.scalars(select(Event).where(Event.session_id == uuid.UUID(leaks.session_id)))
        in_postgres = json.dumps([r.data for r in rows])
        runs = db.scalars(select(Run).where(Run.session_id == uuid.UUID(leaks.session_id)))
        run_rows = json.dumps([[r.result_text, r.error, r.options, r.prompt] for r in runs])
    assert f"[REDACTED:{SECRET_NAME}]" in in_postgres
    _assert_absent("the session's events in PostgreSQL", in_postgres, values)
    _assert_absent("the session's runs in PostgreSQL", run_rows, values)


def test_the_values_are_not_in_results_errors_or_webhooks(
    leaks: Leaks, secret_value: str, api: SessionApi
) -> None:
    values = _values(leaks, secret_value)
    for run_id in leaks.run_ids():
        _assert_absent(f"GET /runs/{run_id}", json.dumps(api.get(f"/runs/{run_id}")), values)
        events = api.get(f"/runs/{run_id}/events?limit=500")
        _assert_absent(f"GET /runs/{run_id}/events", json.dumps(events), values)
    session = api.get(f"/sessions/{leaks.session_id}")
    assert session["session"]["options"].get("secrets") in (None, [SECRET_NAME])
    _assert_absent("GET /sessions/<id>", json.dumps(session), values)
    hooks = json.dumps(leaks.webhooks)
    assert f"[REDACTED:{SECRET_NAME}]" in hooks
    _assert_absent("the webhook bodies", hooks, values)


def test_the_values_are_not_in_the_logs(leaks: Leaks, secret_value: str, stack: Stack) -> None:
    values = _values(leaks, secret_value)
    for name, path in (
        ("API", stack.api.log_path),
        ("worker", stack.worker.log_path),
        ("gateway", stack.gateway.log_path),
    ):
        _assert_absent(f"the {name}'s log", Path(path).read_text(errors="replace"), values)


def test_the_values_are_nowhere_in_redis_or_what_flower_sees(
    leaks: Leaks, secret_value: str, own_settings: Settings, stack: Stack
) -> None:
    values = _values(leaks, secret_value)
    # Celery's queues and result backend (celery-task-meta-*), the streams, everything.
    _assert_absent("Redis", _everything_in_redis(own_settings.redis_url), values)
    # What Flower shows: the task events, and the worker's configuration and stats.
    task_events = [e for e in stack.flower.events if str(e.get("type", "")).startswith("task-")]
    run_tasks = [e for e in task_events if e.get("name") == "ccq.run_prompt"]
    assert any(leaks.printed_run["id"] in str(e.get("args")) for e in run_tasks)
    _assert_absent("Celery's task events", stack.flower.text(), values)
    inspect = stack.celery.control.inspect(
        destination=[f"{WORKER_NAME}@{socket.gethostname()}"], timeout=10
    )
    conf, stats = inspect.conf(with_defaults=True), inspect.stats()
    assert conf, "the worker did not answer inspect conf"
    assert stats, "the worker did not answer inspect stats"
    _assert_absent("the worker's inspect conf", json.dumps(conf, default=str), values)
    _assert_absent("the worker's inspect stats", json.dumps(stats, default=str), values)


def _everything_in_redis(url: str) -> str:
    """Every key's content in the test Redis database, with kombu's base64 message
    bodies decoded."""
    client: Any = redis.Redis.from_url(url)
    parts: list[str] = []
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            items: list[Any]
            if kind == "string":
                items = [client.get(key)]
            elif kind == "list":
                items = list(client.lrange(key, 0, -1))
            elif kind == "hash":
                items = [v for pair in client.hgetall(key).items() for v in pair]
            elif kind == "set":
                items = list(client.smembers(key))
            elif kind == "zset":
                items = list(client.zrange(key, 0, -1))
            elif kind == "stream":
                items = [
                    v for _, entry in client.xrange(key) for pair in entry.items() for v in pair
                ]
            else:
                continue
            parts.append(key.decode(errors="replace"))
            parts.extend(_with_bodies(item) for item in items if item is not None)
    finally:
        client.close()
    return "\n".join(parts)


def _with_bodies(raw: bytes) -> str:
    text = raw.decode(errors="replace")
    try:
        message = json.loads(text)
    except ValueError:
        return text
    if isinstance(message, list) and message and isinstance(message[0], dict):
        message = message[0]  # kombu's unacked entries: [message, exchange, routing key]
    if isinstance(message, dict) and isinstance(message.get("body"), str):
        with contextlib.suppress(ValueError):
            text += "\n" + base64.b64decode(message["body"]).decode(errors="replace")
    return text


def test_a_malformed_secrets_file_stops_the_worker_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_text("GOOD_ONE=value-12345678\nghp_pasted-without-a-name\n")
    result = subprocess.run(
        [CCQ, "worker"],
        env={**os.environ, "CCQ_SECRETS_FILE": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert f"CCQ_SECRETS_FILE ({path}), line 2: not NAME=value" in result.stderr
    assert "pasted" not in result.stderr
    assert "value-12345678" not in result.stderr
    assert "Traceback" not in result.stderr
