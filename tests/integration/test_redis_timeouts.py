"""A hung Redis (connection accepted, never an answer) makes worker-side calls raise a
timeout instead of hanging the thread that made them.

The "Redis" here is a listener on loopback that this test makes: it accepts every
connection and never writes a byte. Each call runs in a thread of its own, so a call that
hung would fail the test at the deadline instead of hanging the suite; what is asserted is
the exception the call raised. The deadline is twice the client's own bound: redis-py's
defaults (ten retries of a timed-out command, about a minute) would miss it.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError as KombuOperationalError

from orchestrator.domain.cancellation import cancel_signalled
from orchestrator.runtime import locks
from orchestrator.runtime.redis_client import WORST_CASE_CALL_SECONDS, worker_redis
from orchestrator.settings import Settings
from tasks import names
from tasks.celery_app import (
    CELERY_REDIS_CONNECT_TIMEOUT_SECONDS,
    CELERY_REDIS_SOCKET_TIMEOUT_SECONDS,
    make_celery,
)

pytestmark = pytest.mark.integration

# Only a deadline for a call that hangs (then the test fails): never a measurement.
HANG_DEADLINE_SECONDS = 2 * WORST_CASE_CALL_SECONDS


@pytest.fixture
def hung_redis_url() -> Iterator[str]:
    """redis:// URL of a loopback listener that accepts and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)  # the accept loop looks at `stop` this often
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, name="hung-redis", daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        for conn in held:
            conn.close()


def _raised(call: Callable[[], Any]) -> BaseException | None:
    """What ``call`` raised, from a thread of its own, failing the test if it hangs."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).exception(timeout=HANG_DEADLINE_SECONDS)
    finally:
        pool.shutdown(wait=False)


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda c: c.get("ccq:test:hung"), id="get"),
        # What the run's thread asks every poll, next to its watchdog.
        pytest.param(lambda c: cancel_signalled(c, uuid.uuid4()), id="cancel-signal"),
        # What the lock's thread sends (a Lua compare-and-set).
        pytest.param(
            lambda c: locks.take_unless_held(c, "ccq:test:hung", "holder", 30), id="lua-lock"
        ),
    ],
)
def test_a_worker_client_raises_a_timeout_on_a_hung_redis(
    hung_redis_url: str, use: Callable[[redis.Redis], object]
) -> None:
    client = worker_redis(hung_redis_url)
    try:
        raised = _raised(lambda: use(client))
        assert isinstance(raised, redis.TimeoutError), raised
    finally:
        client.close()


def test_a_worker_side_publish_raises_on_a_hung_broker(hung_redis_url: str) -> None:
    """Celery's broker connection has timeouts too: an enqueue from a task (fan-outs,
    batches, webhooks) fails, to be retried by its task, instead of hanging it."""
    assert CELERY_REDIS_SOCKET_TIMEOUT_SECONDS + CELERY_REDIS_CONNECT_TIMEOUT_SECONDS < (
        HANG_DEADLINE_SECONDS
    )
    app = make_celery(Settings(redis_url=hung_redis_url))
    try:
        # ignore_result: as inside a worker, no result subscription; straight to the broker.
        raised = _raised(
            lambda: app.send_task(names.NOTIFY_RUN, args=[str(uuid.uuid4())], ignore_result=True)
        )
        assert isinstance(raised, KombuOperationalError), raised
        assert "Timeout" in str(raised)
    finally:
        app.close()
