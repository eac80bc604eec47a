"""Batches on the real stack: submission, fairness between owners, cancel, export."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker
import pytest
import redis
import requests
from flask.testing import FlaskClient

from api.app import create_app
from api.extensions import EXTENSION_KEY
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.runtime.labels import LABEL_BATCH, LABEL_INSTANCE
from orchestrator.settings import Settings
from orchestrator.streams.stream_ids import parse_stream_id
from tests.api_helpers import FINAL
from tests.http_api import HttpApi
from tests.processes import ApiProcess, WorkerProcess
from tests.stream_helpers import Received, open_tail, read_until_closed
from tests.waiting import wait_for
from tests.webhooks import SECRET, ScriptedReceiver

pytestmark = pytest.mark.integration

BIG = 200
# The big batch's window: at most this many of its items are with Celery at once.
BIG_WINDOW = 8


class Api(HttpApi):
    """The API as one owner sees it, with the batch calls these tests make."""

    def batch(self, batch_id: str) -> dict[str, Any]:
        reply: dict[str, Any] = self.call("GET", f"/batches/{batch_id}")["batch"]
        return reply

    def wait_batch(self, batch_id: str, timeout: float = 600) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            batch = self.batch(batch_id)
            return batch if batch["finished_at"] else None

        return wait_for(finished, timeout=timeout, interval=0.5, what=f"batch {batch_id}")

    def results(self, batch_id: str) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.url}/batches/{batch_id}/results", headers=self.headers, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in response.text.splitlines()]

    def runs(self, batch_id: str) -> list[dict[str, Any]]:
        return [self.call("GET", f"/runs/{r['run_id']}")["run"] for r in self.results(batch_id)]

    def stream(self, batch_id: str, after: str | None = None) -> Received:
        """The batch's stream from ``after`` (else a snapshot of now) until it closes."""
        path = f"/api/v1/batches/{batch_id}/stream"
        with open_tail(self.server, path, self.token, after=after) as ws:
            return read_until_closed(ws, timeout=600)


class BatchContainers:
    """Counts each batch's containers (label ``ccq.batch``) every ~100 ms from a thread,
    keeping the most seen at once per batch."""

    def __init__(self, instance: str, interval: float = 0.1) -> None:
        self._client = docker.from_env(timeout=60)
        self._filters = {"label": [f"{LABEL_INSTANCE}={instance}", LABEL_BATCH]}
        self._interval = interval
        self._done = threading.Event()
        self.peak: Counter[str] = Counter()
        self.samples = 0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._sample, name="batch-containers")
        self._thread.start()

    def now(self) -> Counter[str]:
        listed = self._client.api.containers(all=True, filters=self._filters)
        return Counter(c["Labels"][LABEL_BATCH] for c in listed)

    def _sample(self) -> None:
        while not self._done.wait(self._interval):
            try:
                counts = self.now()
            except Exception as exc:  # the test reads it: a blind sampler proves nothing
                self.error = exc
                return
            self.peak |= counts  # the larger count of each batch
            self.samples += 1

    def stop(self) -> None:
        """Stop sampling (again: nothing happens)."""
        if not self._done.is_set():
            self._done.set()
            self._thread.join(timeout=60)
            self._client.close()


@dataclass(frozen=True)
class BigBatch:
    id: str
    # Its progress stream, followed from the moment it was created to its close.
    stream: Future[Received]
    # Its containers, counted from before it was submitted.
    containers: BatchContainers


@pytest.fixture(scope="module")
def alice(api_server: ApiProcess, settings: Settings, worker: WorkerProcess) -> Api:
    return Api(api_server, mint_token(settings, "batch-alice"))


@pytest.fixture(scope="module")
def bob(api_server: ApiProcess, settings: Settings) -> Api:
    return Api(api_server, mint_token(settings, "batch-bob"))


@pytest.fixture(scope="module")
def big_batch(alice: Api, settings: Settings) -> Iterator[BigBatch]:
    """A 200-item batch of one owner, submitted once for the tests that watch it."""
    containers = BatchContainers(settings.instance)
    try:
        items = [{"prompt": f"item {i}"} for i in range(BIG)]
        body = {"items": items, "metadata": {"n": BIG}, "max_concurrency": BIG_WINDOW}
        batch = alice.call("POST", "/batches", body, 201)["batch"]
        assert batch["total_items"] == BIG
        assert batch["counts"]["queued"] + batch["counts"]["running"] == BIG
        with ThreadPoolExecutor(max_workers=1) as pool:
            yield BigBatch(batch["id"], pool.submit(alice.stream, batch["id"]), containers)
            if not alice.batch(batch["id"])["finished_at"]:
                alice.call("POST", f"/batches/{batch['id']}/cancel", {}, 202)
    finally:
        containers.stop()


def test_another_owners_prompt_starts_within_one_run_of_a_big_batch(
    big_batch: BigBatch, alice: Api, bob: Api
) -> None:
    wait_for(
        lambda: alice.batch(big_batch.id)["done"] >= 8,
        timeout=300,
        interval=0.5,
        what="the batch to be well under way",
    )
    created = bob.call("POST", "/sessions", {"prompt": "bob's interactive prompt"}, 201)
    run = wait_for(
        lambda: (r := bob.call("GET", f"/runs/{created['run']['id']}")["run"])["started_at"] and r,
        timeout=120,
        interval=0.2,
        what="bob's run to start",
    )
    assert alice.batch(big_batch.id)["done"] < BIG, "the batch ended before bob's run started"

    # Ordered by events: batch items that started after bob's prompt was accepted and
    # before it started. The worker has already reserved one task per slot (4) and then
    # takes from the interactive and batch queues in turn, so at most 2 x 4 items go
    # first; a first-in-first-out queue would let the rest of the batch go first.
    started = [r["started_at"] for r in alice.runs(big_batch.id) if r["started_at"]]
    went_first = [s for s in started if run["created_at"] < s < run["started_at"]]
    assert len(went_first) <= 8, f"{len(went_first)} batch items started before bob's prompt"


def test_a_200_item_batch_completes_with_counts_results_and_cost(
    big_batch: BigBatch, alice: Api
) -> None:
    batch = alice.wait_batch(big_batch.id)

    assert batch["status"] == "succeeded"
    assert batch["counts"]["succeeded"] == BIG
    assert batch["done"] == BIG
    assert batch["progress"] == 1.0
    results = alice.results(big_batch.id)
    assert [r["index"] for r in results] == list(range(BIG))  # each exactly once, in order
    assert all(r["status"] == "succeeded" for r in results)
    assert all(r["result"].endswith(f"item {r['index']}") for r in results)
    assert batch["total_cost_usd"] == pytest.approx(sum(r["total_cost_usd"] for r in results))
    assert batch["total_cost_usd"] > 0
    listed = alice.call("GET", "/batches")["batches"]
    assert big_batch.id in [b["id"] for b in listed]


def test_a_big_batch_never_has_more_containers_than_its_window_and_none_once_finished(
    big_batch: BigBatch, alice: Api
) -> None:
    alice.wait_batch(big_batch.id)
    containers = big_batch.containers

    assert containers.error is None, containers.error
    assert containers.samples > 50, f"only {containers.samples} samples of its containers"
    # Each item's container is removed before its end lets the next item go, so the
    # window bounds the containers as it bounds the items (0 would mean no label).
    assert 1 <= containers.peak[big_batch.id] <= BIG_WINDOW
    wait_for(
        lambda: containers.now()[big_batch.id] == 0,
        timeout=30,
        what="the finished batch's containers to be removed",
    )
    containers.stop()
    assert containers.peak[big_batch.id] <= BIG_WINDOW


def test_the_progress_stream_reports_every_item_and_ends_with_the_final_state(
    big_batch: BigBatch, alice: Api
) -> None:
    batch = alice.wait_batch(big_batch.id)
    received = big_batch.stream.result(timeout=120)

    assert received.close_code == 1000
    assert received.opening is not None
    assert received.opening["batch_id"] == big_batch.id
    snapshot, *live = received.events
    assert snapshot["id"] is None  # a snapshot of the batch when the stream opened
    assert snapshot["data"]["batch"]["total_items"] == BIG
    final = live[-1]
    assert final["type"] == "ccq.batch.finished"
    assert final["data"]["batch"]["status"] == "succeeded"
    assert final["data"]["batch"]["counts"] == batch["counts"]
    assert final["data"]["batch"]["total_cost_usd"] == pytest.approx(batch["total_cost_usd"])
    # Every item reported once when it ended, and when it started unless that was
    # before the stream opened (the snapshot counted those).
    items = [e["data"]["item"] for e in live if e["data"]["item"]]
    ended = sorted(i["index"] for i in items if i["status"] in FINAL)
    started = sorted(i["index"] for i in items if i["status"] == "running")
    assert ended == list(range(BIG))
    assert len(set(started)) == len(started)
    before = snapshot["data"]["batch"]
    assert len(started) >= BIG - before["counts"]["running"] - before["done"]
    # Live events are stream entries, in order, none repeated.
    ids = [parse_stream_id(e["id"]) for e in live]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)

    # Replayed from the middle: exactly what followed, then the close.
    middle = len(live) // 2
    replayed = alice.stream(big_batch.id, after=live[middle]["id"])
    assert replayed.ids == [e["id"] for e in live[middle + 1 :]]
    assert replayed.close_code == 1000
    # Opened after the end: the final state at once.
    late = alice.stream(big_batch.id)
    assert [e["type"] for e in late.events] == ["ccq.batch.finished"]
    assert late.events[0]["data"]["batch"]["counts"] == batch["counts"]
    assert late.close_code == 1000


def test_cancel_mid_batch_starts_nothing_after_the_cancel_and_states_add_up(
    alice: Api, worker: WorkerProcess
) -> None:
    items = [{"prompt": f"[[sleep 1]] slow item {i}"} for i in range(30)]
    batch_id = alice.call("POST", "/batches", {"items": items, "max_concurrency": 2}, 201)["batch"][
        "id"
    ]
    wait_for(lambda: alice.batch(batch_id)["done"] >= 3, timeout=120, what="a few items to finish")

    cancelled = alice.call("POST", f"/batches/{batch_id}/cancel", {}, 202)["batch"]
    acknowledged = datetime.now(UTC).isoformat()
    assert cancelled["status"] == "cancelled"

    batch = alice.wait_batch(batch_id)
    counts = batch["counts"]
    assert batch["status"] == "cancelled"
    assert sum(counts.values()) == 30
    assert counts["queued"] == counts["running"] == 0
    assert counts["cancelled"] >= 30 - 3 - 2 - 2  # the rest never ran (or were killed)
    runs = alice.runs(batch_id)
    assert not [r for r in runs if r["started_at"] and r["started_at"] > acknowledged]
    # max_concurrency 2: no moment had three of its items running.
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs if r["started_at"])
    for i, (start, _) in enumerate(spans):
        overlapping = [1 for s, f in spans[:i] if f > start]
        assert len(overlapping) <= 1, spans
    alice.call("POST", f"/batches/{batch_id}/cancel", {}, 409)  # already finished
    # Items past the window waited in PostgreSQL, not in Celery: no task of this batch
    # ever had to be turned away for want of a slot.
    assert f"batch {batch_id} has" not in worker.log_path.read_text(errors="replace")


def test_one_invalid_item_among_1000_rejects_the_batch_naming_it(
    api_server: ApiProcess, settings: Settings
) -> None:
    carol = Api(api_server, mint_token(settings, "batch-carol"))
    items: list[Any] = [{"prompt": f"p{i}"} for i in range(1000)]
    items[537] = {"prompt": "", "max_turns": 3}

    refused = carol.call("POST", "/batches", {"items": items}, 400)["error"]

    assert refused["code"] == "invalid_input"
    assert refused["details"] == [
        {
            "index": 537,
            "field": "items.537.prompt",
            "reason": "String should have at least 1 character",
        }
    ]
    assert "item 537" in refused["message"]
    assert carol.call("GET", "/batches")["batches"] == []
    assert carol.call("GET", "/sessions", status=200)["sessions"] == []


def test_a_batch_of_10001_items_is_too_large(alice: Api) -> None:
    refused = alice.call("POST", "/batches", {"items": [{"prompt": "x"}] * 10_001}, 413)
    assert refused["error"]["details"][0]["field"] == "items"


def test_an_ndjson_upload_with_defaults_from_the_query(alice: Api, api_server: ApiProcess) -> None:
    body = "\n".join(json.dumps({"prompt": f"line {i}"}) for i in range(3)) + "\n"
    response = requests.post(
        f"{alice.url}/batches?max_concurrency=2&idempotency_key=nd-1",
        data=body,
        headers={**alice.headers, "Content-Type": "application/x-ndjson"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    batch = alice.wait_batch(response.json()["batch"]["id"])
    assert batch["max_concurrency"] == 2
    assert [r["result"].split(": ")[-1] for r in alice.results(batch["id"])] == [
        "line 0",
        "line 1",
        "line 2",
    ]
    again = requests.post(
        f"{alice.url}/batches?idempotency_key=nd-1",
        data=body,
        headers={**alice.headers, "Content-Type": "application/x-ndjson"},
        timeout=60,
    )
    assert again.status_code == 200
    assert again.json()["batch"]["id"] == batch["id"]

    bad = requests.post(
        f"{alice.url}/batches",
        data='{"prompt": "ok"}\n{not json\n',
        headers={**alice.headers, "Content-Type": "application/x-ndjson"},
        timeout=60,
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][0]["index"] == 1


@pytest.fixture
def strict_client(settings: Settings) -> Iterator[FlaskClient]:
    """The API with a hard limit of one pending interactive run per owner."""
    app = create_app(settings.model_copy(update={"max_pending_runs_per_owner": 1}))
    yield app.test_client()
    app.extensions[EXTENSION_KEY].close()


def test_interactive_prompts_past_the_hard_limit_get_429_with_retry_after(
    strict_client: FlaskClient, settings: Settings, worker: WorkerProcess
) -> None:
    headers = {"Authorization": f"Bearer {mint_token(settings, 'batch-dave')}"}
    first = strict_client.post(
        "/api/v1/sessions", json={"prompt": "[[sleep 5]] slow"}, headers=headers
    )
    assert first.status_code == 201

    second = strict_client.post(
        "/api/v1/sessions", json={"prompt": "one too many"}, headers=headers
    )

    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) > 0
    assert second.json is not None
    assert second.json["error"]["code"] == "too_many_requests"
    run_id = first.json["run"]["id"] if first.json else ""
    wait_for(
        lambda: (
            strict_client.get(f"/api/v1/runs/{run_id}", headers=headers).json["run"][  # type: ignore[index]
                "status"
            ]
            in FINAL
        ),
        timeout=120,
        what="the first run to finish",
    )


@pytest.fixture
def receiver() -> Iterator[ScriptedReceiver]:
    server = ScriptedReceiver()
    yield server
    server.close()


def test_a_finished_batch_notifies_its_webhook_once_after_a_failed_first_attempt(
    alice: Api, receiver: ScriptedReceiver, settings: Settings
) -> None:
    receiver.script = [(503, {})]
    items = {"items": [{"prompt": "one"}, {"prompt": "two"}], "notify_url": receiver.hook("b")}
    created = alice.call("POST", "/batches", items, 201)["batch"]
    assert SECRET not in json.dumps(created)  # the webhook's secret is never shown
    assert created["notify_url"] == f"{receiver.url}/…"

    batch = alice.wait_batch(created["id"])
    wait_for(
        lambda: any(r.status == 200 for r in receiver.seen("b")),
        timeout=120,
        what="the notification to be accepted",
    )
    client = redis.Redis.from_url(settings.redis_url)
    wait_for(
        lambda: client.get(f"ccq:notify:batch:{batch['id']}"),
        timeout=30,
        what="the delivery to be recorded",
    )
    client.close()

    seen = receiver.seen("b")
    assert [r.status for r in seen] == [503, 200]
    body = seen[-1].body
    assert body["ccq"]["batch"]["id"] == batch["id"]
    assert body["ccq"]["batch"]["status"] == "succeeded"
    assert body["text"]  # Slack's field
    assert body["content"]  # Discord's


def test_invalid_notify_urls_are_refused_naming_the_field(alice: Api) -> None:
    for url, reason in [
        ("ftp://example.com/x", "http"),
        ("https://user:pw@example.com/x", "credentials"),
        ("https://example.com/x#frag", "fragment"),
    ]:
        refused = alice.call(
            "POST", "/batches", {"items": [{"prompt": "x"}], "notify_url": url}, 400
        )["error"]
        assert refused["details"][0]["field"] == "notify_url"
        assert reason in refused["details"][0]["reason"]
    refused = alice.call(
        "POST", "/sessions", {"prompt": "x", "notify_url": "mailto:me@example.com"}, 400
    )["error"]
    assert refused["details"][0]["field"] == "notify_url"


def test_a_sessions_notify_url_hears_of_each_finished_run(
    alice: Api, receiver: ScriptedReceiver
) -> None:
    created = alice.call(
        "POST", "/sessions", {"prompt": "tell me", "notify_url": receiver.hook("s")}, 201
    )
    assert SECRET not in json.dumps(created)

    seen = wait_for(lambda: receiver.seen("s"), timeout=120, what="the run's notification")

    assert seen[0].body["ccq"]["run"]["id"] == created["run"]["id"]
    assert seen[0].body["ccq"]["run"]["status"] == "succeeded"


def _at_once(api: Api, path: str, body: dict[str, Any], times: int = 4) -> list[Any]:
    """The same POST sent ``times`` times at the same moment."""
    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(
            pool.map(
                lambda _: requests.post(
                    f"{api.url}{path}", json=body, headers=api.headers, timeout=60
                ),
                range(times),
            )
        )


def test_concurrent_submissions_with_one_idempotency_key_make_one_batch(alice: Api) -> None:
    body = {"items": [{"prompt": "once"}], "idempotency_key": "same-moment"}

    replies = _at_once(alice, "/batches", body)

    assert sorted(r.status_code for r in replies) == [200, 200, 200, 201]
    assert len({r.json()["batch"]["id"] for r in replies}) == 1
    alice.wait_batch(replies[0].json()["batch"]["id"])


def test_concurrent_sessions_with_one_idempotency_key_make_one_session(alice: Api) -> None:
    body = {"prompt": "once", "idempotency_key": "session-same-moment"}

    replies = _at_once(alice, "/sessions", body)

    assert sorted(r.status_code for r in replies) == [200, 200, 200, 201]
    assert len({r.json()["session"]["id"] for r in replies}) == 1


def test_another_owner_sees_none_of_a_batch(
    alice: Api, bob: Api, api_server: ApiProcess, settings: Settings
) -> None:
    batch_id = alice.call("POST", "/batches", {"items": [{"prompt": "mine"}]}, 201)["batch"]["id"]
    alice.wait_batch(batch_id)

    for method, path in [
        ("GET", f"/batches/{batch_id}"),
        ("GET", f"/batches/{batch_id}/results"),
        ("POST", f"/batches/{batch_id}/cancel"),
    ]:
        assert (
            bob.call(method, path, {} if method == "POST" else None, 404)["error"]["code"]
            == "not_found"
        )
    assert batch_id not in [b["id"] for b in bob.call("GET", "/batches")["batches"]]
    refused = bob.stream(batch_id)
    assert refused.close_code == 4404
    assert refused.events == []
    # A bad cursor names the field; a missing token is refused before anything is read.
    bad = alice.stream(batch_id, after="not-an-id")
    assert bad.close_code == 4400
    assert (bad.close_reason or "").startswith("after:")
    anonymous = Api(api_server, "not-a-token").stream(batch_id)
    assert anonymous.close_code == 4401
