"""The one way into Celery, on a private Redis: what a sent task asks of the result
backend, and a Redis that goes away while the API keeps sending."""

from __future__ import annotations

import base64
import gc
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from functools import partial

import pytest
import redis

from orchestrator.errors import QueueUnavailable
from orchestrator.settings import load_settings
from tasks.enqueue import Enqueuer
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration

INSTANCE = "enqueue-probe"


class PrivateRedis:
    """A redis-server of this test's own, which it may stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_for(client.ping, timeout=10, what="redis-server to answer")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def enqueuer(private_redis: PrivateRedis) -> Iterator[Enqueuer]:
    settings = load_settings(
        env_file=None,
        redis_url=f"redis://127.0.0.1:{private_redis.port}/0",
        instance=INSTANCE,
        jwt_secret="x" * 32,
    )
    enqueuer = Enqueuer.from_settings(settings)
    yield enqueuer
    # A chord that failed to send during an outage leaves its members subscribed. Stop
    # listening while this test's Redis still runs, so no handle collected in a later
    # test tries to (Celery would report that as an "Exception ignored" there).
    consumer = enqueuer.celery.backend.result_consumer
    for key in list(consumer.subscribed_to):
        consumer.cancel_for(key.decode().removeprefix("celery-task-meta-"))
    gc.collect()
    enqueuer.close()


def _plain_sends(enqueuer: Enqueuer) -> list[Callable[[], None]]:
    some = uuid.uuid4()
    return [
        lambda: enqueuer.run(some),
        lambda: enqueuer.batch_items([some]),
        lambda: enqueuer.close_batch(some),
        lambda: enqueuer.stop_session(some),
        lambda: enqueuer.delete_session(some, [some], []),
        lambda: enqueuer.notify_batch(some),
        lambda: enqueuer.notify_run(some),
    ]


def test_plain_sends_ask_for_no_result_and_subscribe_to_none(
    enqueuer: Enqueuer, private_redis: PrivateRedis
) -> None:
    """A result nobody waits for is neither kept by the worker nor listened for here."""
    for send in _plain_sends(enqueuer):
        send()
    client = redis.Redis(port=private_redis.port)
    messages = client.lrange(INSTANCE, 0, -1) + client.lrange(f"{INSTANCE}.batch", 0, -1)
    assert len(messages) == 7
    for raw in messages:
        headers = json.loads(raw)["headers"]
        assert headers["ignore_result"] is True, headers["task"]
    assert client.pubsub_channels() == []
    assert not enqueuer.celery.backend.result_consumer.subscribed_to


def test_a_chord_is_joined_without_results_kept(
    enqueuer: Enqueuer, private_redis: PrivateRedis
) -> None:
    """The chord is carried by its members (the join needs no stored result), and the
    API does not listen for their results."""
    enqueuer.fanout([uuid.uuid4(), uuid.uuid4()], uuid.uuid4())
    assert not enqueuer.celery.backend.result_consumer.subscribed_to  # nobody here waits
    client = redis.Redis(port=private_redis.port)
    messages = [json.loads(raw) for raw in client.lrange(INSTANCE, 0, -1)]
    assert len(messages) == 2
    for message in messages:
        assert message["headers"]["ignore_result"] is True
        _args, _kwargs, embed = json.loads(base64.b64decode(message["body"]))
        assert embed["chord"]["task"] == "ccq.resume_parent"


# A chord's group handle still listens for its members (Celery's GroupResult does, however
# they are sent) and stops when collected; during the outage that stop fails, and Celery
# reports it as an "Exception ignored" from AsyncResult.__del__: noise, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_send_during_a_redis_outage_is_queue_unavailable(
    enqueuer: Enqueuer, private_redis: PrivateRedis
) -> None:
    """Never Celery's bare RuntimeError ("the Celery application must be restarted"),
    which the API would answer with a 500; and sending works again once Redis is back."""
    enqueuer.fanout([uuid.uuid4()], uuid.uuid4())  # the result consumer is now listening
    private_redis.stop()
    sends: list[Callable[[], None]] = [
        *_plain_sends(enqueuer),
        lambda: enqueuer.fanout([uuid.uuid4()], uuid.uuid4()),
    ]
    for _ in range(2):
        for send in sends:
            with pytest.raises(QueueUnavailable):
                send()
    private_redis.start()
    for send in sends:
        wait_for(partial(_sent, send), timeout=30, what="sending once Redis is back")
    enqueuer.fanout([uuid.uuid4()], uuid.uuid4())


def _sent(send: Callable[[], None]) -> bool:
    try:
        send()
    except QueueUnavailable:
        return False
    return True
