"""Tails and waits on a real `ccq api` (gevent): what clients send is dropped and bounded,
per-owner caps across processes, and credentials that lapse while a tail is open.

The API here is the module's own, with small caps and a 1 s JWT leeway, so the tests
reach each limit quickly; every owner is the test's own, so caps do not meet other tests'.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection

from model_server.server import ModelServer
from orchestrator.auth import session_tokens
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db.engine import session_scope
from orchestrator.settings import Settings
from tests.processes import CCQ, ApiProcess, running, stack_environment
from tests.session_tokens import mint_live_token
from tests.stream_helpers import api_post, open_tail
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MAX_MESSAGE = 64 * 1024
LEEWAY = 1
# A tail looks at its credential every 2 s, between reads that block up to 5 s.
CLOSE_WITHIN = LEEWAY + 10


@pytest.fixture(scope="module")
def api(
    settings: Settings, model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    env = {
        **stack_environment(settings, model_server),
        "CCQ_MAX_TAILS_PER_OWNER": "2",
        "CCQ_MAX_WAITS_PER_OWNER": "2",
        "CCQ_WS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
        "CCQ_JWT_LEEWAY_SECONDS": str(LEEWAY),
    }
    with running(ApiProcess(env, tmp_path_factory.mktemp("tail-limits") / "api.log")) as server:
        yield server


@pytest.fixture
def owner() -> str:
    return f"limits-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def token(settings: Settings, owner: str) -> str:
    return mint_token(settings, owner)


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def _session(api: ApiProcess, token: str) -> str:
    return str(api_post(api, "/api/v1/sessions", token, {})["session"]["id"])


def _opened(ws: ClientConnection) -> dict[str, Any]:
    """The stream's opening message (the tail is served from here on)."""
    return dict(json.loads(ws.recv(timeout=10)))


def _closed(ws: ClientConnection, timeout: float) -> tuple[int | None, str | None]:
    """Read until the server closes; fail if it has not within ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, None)
    except TimeoutError:
        pytest.fail(f"the stream was still open after {timeout} s")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _api_rss_kib(server: ApiProcess) -> int:
    """VmRSS of the API's processes together (gunicorn's arbiter and its workers)."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    pids = [server.process.pid, *map(int, children.read_text().split())]
    return sum(_rss_kib(pid) for pid in pids)


# --- what clients send ----------------------------------------------------------------


def test_100mb_sent_over_a_tail_is_dropped_then_an_oversized_message_closes_it_1009(
    api: ApiProcess, token: str
) -> None:
    session_id = _session(api, token)
    before = _api_rss_kib(api)
    with open_tail(api, f"/api/v1/sessions/{session_id}/stream", token) as ws:
        _opened(ws)
        under = b"x" * (MAX_MESSAGE - 1024)
        for _ in range(100 * 1024 * 1024 // len(under)):  # 100 MB of messages under the limit
            ws.send(under)
        ws.ping().wait(timeout=10)  # still served, and everything above was taken
        grown = _api_rss_kib(api) - before
        chunk = b"y" * (1024 * 1024)
        with pytest.raises(ConnectionClosed):  # one 100 MB message, in 1 MiB fragments
            ws.send(iter([chunk] * 100))
        code, reason = _closed(ws, timeout=10)

    assert code == 1009, reason
    assert grown < 30 * 1024, f"the API grew {grown} KiB while dropping 100 MB"
    assert _api_rss_kib(api) - before < 30 * 1024


# --- per-owner caps -------------------------------------------------------------------


def test_tails_past_the_owners_cap_are_refused_429_before_the_upgrade(
    api: ApiProcess, token: str, owner: str, redis_client: redis.Redis
) -> None:
    session_id = _session(api, token)
    path = f"/api/v1/sessions/{session_id}/stream"
    key = f"ccq:slots:tails:{owner}"
    # A crashed process' hold, already expired: it must not take a slot.
    redis_client.zadd(key, {"dead-process": time.time() - 1})
    with open_tail(api, path, token) as second:
        _opened(second)
        with open_tail(api, path, token) as first:
            _opened(first)
            with pytest.raises(InvalidStatus) as refused, open_tail(api, path, token):
                pass
        response = refused.value.response
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        assert json.loads(response.body)["error"]["code"] == "too_many_requests"
        assert b"CCQ_MAX_TAILS_PER_OWNER" in response.body
        wait_for(lambda: redis_client.zcard(key) == 1, timeout=15, what="first's slot back")
        with open_tail(api, path, token) as third:
            assert "tail" in _opened(third)
    wait_for(lambda: redis_client.zcard(key) == 0, timeout=15, what="every slot back")


def test_waits_past_the_owners_cap_are_refused_429_and_queue_nothing(
    api: ApiProcess, token: str, owner: str, redis_client: redis.Redis
) -> None:
    session_id = _session(api, token)
    url = f"{api.url}/api/v1/sessions/{session_id}/runs?wait=8"
    headers = {"Authorization": f"Bearer {token}"}
    # No worker needed: a run that stays queued (or runs long) keeps its wait open.
    body = {"prompt": "[[stream 200 0.1]] slow"}
    answers: list[int] = []

    def wait() -> None:
        answers.append(requests.post(url, json=body, headers=headers, timeout=30).status_code)

    waiters = [threading.Thread(target=wait) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    try:
        # Slots are taken before the runs are queued: wait for both.
        wait_for(
            lambda: (
                redis_client.zcard(f"ccq:slots:waits:{owner}") == 2
                and _runs(api, session_id, token) == 2
            ),
            timeout=15,
            what="two waits held, their runs queued",
        )
        runs_before = _runs(api, session_id, token)
        refused = requests.post(url, json=body, headers=headers, timeout=30)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert "CCQ_MAX_WAITS_PER_OWNER" in refused.json()["error"]["message"]
        assert _runs(api, session_id, token) == runs_before
        # Without ?wait the same owner still queues.
        plain = requests.post(url.split("?")[0], json=body, headers=headers, timeout=30)
        assert plain.status_code == 202, plain.text
    finally:
        for waiter in waiters:
            waiter.join(timeout=30)
    assert answers == [202, 202] or sorted(answers) in ([200, 202], [200, 200])
    assert redis_client.zcard(f"ccq:slots:waits:{owner}") == 0


def _runs(api: ApiProcess, session_id: str, token: str) -> int:
    reply = requests.get(
        f"{api.url}/api/v1/sessions/{session_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    reply.raise_for_status()
    return int(reply.json()["session"]["runs_count"])


# --- credentials that lapse while a tail is open ---------------------------------------


def test_a_tail_is_closed_4401_within_seconds_of_its_tokens_expiry(
    api: ApiProcess, settings: Settings, token: str
) -> None:
    session_id = _session(api, token)
    owner_token = jwt.decode(token, options={"verify_signature": False})["sub"]
    short = mint_token(settings, owner_token, ttl_seconds=5)
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    with open_tail(api, f"/api/v1/sessions/{session_id}/stream", short) as ws:
        _opened(ws)
        code, reason = _closed(ws, timeout=expires - time.time() + CLOSE_WITHIN)
        closed_at = time.time()

    assert code == 4401, reason
    assert "expired" in (reason or "")
    assert closed_at >= expires  # not before the token lapsed


def test_a_tail_on_a_session_token_is_closed_4401_when_the_token_is_revoked(
    api: ApiProcess, token: str, db_factory: sessionmaker[DbSession]
) -> None:
    session_id = _session(api, token)
    live, run_id = mint_live_token(db_factory, session_id, ttl=timedelta(minutes=5))
    with open_tail(api, f"/api/v1/sessions/{session_id}/stream", live) as ws:
        _opened(ws)
        with session_scope(db_factory) as db:
            session_tokens.revoke_run(db, run_id)
        code, reason = _closed(ws, timeout=CLOSE_WITHIN)

    assert code == 4401, reason
    assert "revoked" in (reason or "")


def test_a_token_issued_a_second_in_the_future_is_accepted(
    api: ApiProcess, settings: Settings, owner: str
) -> None:
    secret = settings.jwt_secret
    assert secret is not None
    now = int(time.time())
    claims = {"sub": owner, "aud": "ccq", "iss": "ccq", "iat": now + 1, "exp": now + 60}
    skewed = jwt.encode(claims, secret.get_secret_value(), algorithm="HS256")
    reply = requests.get(
        f"{api.url}/api/v1/sessions", headers={"Authorization": f"Bearer {skewed}"}, timeout=10
    )
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("command", [["api"], ["gateway"], ["worker"]])
def test_a_short_jwt_secret_stops_start_up_naming_the_setting(
    settings: Settings, model_server: ModelServer, command: list[str]
) -> None:
    env = {**stack_environment(settings, model_server), "CCQ_JWT_SECRET": "s" * 31}
    done = subprocess.run(
        [CCQ, *command], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CCQ_JWT_SECRET" in done.stderr
    assert "at least 32 bytes" in done.stderr
