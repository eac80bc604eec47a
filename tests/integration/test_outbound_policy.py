"""The outbound policy (orchestrator.outbound) on the real stack: webhook URLs pointing
inside ccq's network are refused with a 400 naming ``notify_url`` and never connected
to; only a receiver the operator allowed gets a POST.

Two operators' policies are tried:

- a second API process with the defaults (no private targets, ports 80 and 443);
- the test stack's own API and worker, which allow loopback on the receivers' port only
  (tests/conftest.py), the way an operator opens one internal receiver.

A listener on 127.0.0.1 that the tests point refused URLs at proves nothing knocked: a
connection would wait in its backlog, so an empty non-blocking ``accept`` after the
requests means none was made.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Run, RunStatus, Session
from orchestrator.notify import delivery
from orchestrator.notify.delivery import Kind
from orchestrator.outbound import OutboundPolicy
from orchestrator.settings import Settings
from tests.http_api import HttpApi
from tests.processes import ApiProcess, WorkerProcess, running, stack_environment
from tests.waiting import free_port, wait_for
from tests.webhooks import SECRET, WEBHOOK_PORT, ScriptedReceiver

pytestmark = pytest.mark.integration

# The issue's list: the metadata service, Flower, Redis, a private network, Docker.
ISSUE_URLS = [
    "http://169.254.169.254/latest/meta-data",
    "http://127.0.0.1:5555/api/workers",
    "http://[::1]:6379/",
    "http://10.0.0.1/",
    "http://localhost:2375/containers/prune",
]
# The same places in other spellings, on allowed ports.
DISGUISED_URLS = [
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/latest/meta-data",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://100.64.0.1/",
    "https://localhost/hooks",  # a name that resolves to 127.0.0.1
    "http://LOCALHOST./",
]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that must never see a connection."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        yield sock


def _never_connected(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        sock.accept()


@pytest.fixture(scope="module")
def strict_api(
    settings: Settings,
    model_server: ModelServer,
    gateway_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HttpApi]:
    """An API with the outbound policy's defaults: public targets on 80 and 443 only."""
    strict = settings.model_copy(
        update={"outbound_allow_private": False, "outbound_ports": [80, 443]}
    )
    env = stack_environment(strict, model_server, free_port(), gateway_port)
    log = Path(tmp_path_factory.mktemp("strict-api")) / "api.log"
    with running(ApiProcess(env, log)) as server:
        yield HttpApi(server, mint_token(settings, f"outbound-{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="module")
def alice(api_server: ApiProcess, settings: Settings, worker: WorkerProcess) -> HttpApi:
    return HttpApi(api_server, mint_token(settings, f"outbound-{uuid.uuid4().hex[:8]}"))


def _refused_everywhere(api: HttpApi, url: str) -> list[str]:
    """POST the URL as a session's, a batch's and an NDJSON upload's ``notify_url``;
    each must be a 400 naming the field. Returns the reasons."""
    reasons = []
    for path, body in [
        ("/sessions", {"prompt": "x", "notify_url": url}),
        ("/sessions", {"notify_url": url}),
        ("/batches", {"items": [{"prompt": "x"}], "notify_url": url}),
    ]:
        error = api.post(path, body, 400)["error"]
        assert [d["field"] for d in error["details"]] == ["notify_url"], (url, error)
        assert url not in str(error)
        reasons.append(error["details"][0]["reason"])
    upload = requests.post(
        f"{api.url}/batches",
        params={"notify_url": url},
        data=b'{"prompt": "x"}\n',
        headers={**api.headers, "Content-Type": "application/x-ndjson"},
        timeout=30,
    )
    assert upload.status_code == 400, upload.text
    assert [d["field"] for d in upload.json()["error"]["details"]] == ["notify_url"]
    return reasons


def test_internal_targets_are_refused_by_the_default_policy(
    strict_api: HttpApi, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    probes = [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/hooks/{SECRET}",
        f"http://[::ffff:127.0.0.1]:{port}/",
    ]
    for url in ISSUE_URLS + DISGUISED_URLS + probes:
        reasons = _refused_everywhere(strict_api, url)
        assert all("outbound policy" in reason for reason in reasons), (url, reasons)
        assert all(SECRET not in reason for reason in reasons)
    reason = _refused_everywhere(strict_api, "http://localhost/x")[0]
    assert reason.endswith(
        "localhost resolves to 127.0.0.1, which is a loopback or private address"
    )
    _never_connected(listener)


def test_an_allowed_receiver_gets_the_post_and_nothing_else_is_reached(
    alice: HttpApi, listener: socket.socket
) -> None:
    # The stack allows loopback, but only on the receivers' port; the metadata service
    # is never allowed.
    port = listener.getsockname()[1]
    for url in [*ISSUE_URLS, f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"]:
        if url == "http://10.0.0.1/":  # a private address on port 80: this operator allows it
            continue
        _refused_everywhere(alice, url)
    receiver = ScriptedReceiver()
    try:
        hook = f"http://localhost:{WEBHOOK_PORT}/hooks/allowed/{SECRET}"
        created = alice.post("/sessions", {"prompt": "tell me", "notify_url": hook}, 201)
        seen = wait_for(lambda: receiver.seen("allowed"), timeout=120, what="the webhook")
        assert seen[0].body["ccq"]["run"]["id"] == created["run"]["id"]
    finally:
        receiver.close()
    _never_connected(listener)


def _finished_run(db_factory: sessionmaker[DbSession], notify_url: str) -> uuid.UUID:
    """A finished run of a session whose URL was accepted earlier (written directly)."""
    now = datetime.now(UTC)
    with session_scope(db_factory) as db:
        session = Session(owner="outbound", notify_url=notify_url, status="idle")
        db.add(session)
        db.flush()
        run = Run(
            session_id=session.id,
            owner="outbound",
            seq=1,
            prompt="x",
            status=RunStatus.SUCCEEDED,
            result_text="done",
            total_cost_usd=Decimal("0.01"),
            started_at=now - timedelta(seconds=1),
            finished_at=now,
        )
        db.add(run)
        db.flush()
        return run.id


def test_a_name_that_resolves_to_a_refused_address_at_delivery_is_not_posted_to(
    db_factory: sessionmaker[DbSession],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The URL passed when it was accepted; by delivery its name points at loopback (DNS
    rebinding). The attempt gives up naming the policy, and the receiver hears nothing."""
    receiver = ScriptedReceiver()
    client = redis.Redis.from_url(settings.redis_url)
    real = socket.getaddrinfo

    def rebound(host: str, port: int, *args: object, **kwargs: object) -> object:
        if host == "hooks.rebound.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    try:
        run_id = _finished_run(
            db_factory, f"http://hooks.rebound.test:{WEBHOOK_PORT}/hooks/rebound/{SECRET}"
        )
        with session_scope(db_factory) as db:
            outcome = delivery.attempt(
                db,
                client,
                Kind.RUN,
                str(run_id),
                holder="test",
                retries=0,
                policy=OutboundPolicy(ports=frozenset({WEBHOOK_PORT})),
            )
        assert isinstance(outcome, dict), outcome
        assert outcome["gave_up"] is True
        assert outcome["reason"] == (
            "ccq outbound policy: hooks.rebound.test resolves to 127.0.0.1, "
            "which is a loopback or private address"
        )
        assert receiver.received == []
    finally:
        receiver.close()
        client.close()
