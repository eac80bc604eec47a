"""Batches on the real stack: submission, fairness between owners, cancel, export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from api.app import create_app
from api.extensions import EXTENSION_KEY
from orchestrator.auth import mint_token
from orchestrator.settings import Settings
from tests.api_helpers import FINAL
from tests.processes import ApiProcess, WorkerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

BIG = 200


class Api:
    def __init__(self, server: ApiProcess, token: str) -> None:
        self.url = f"{server.url}/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = requests.request(
            method, self.url + path, json=body, headers=self.headers, timeout=60
        )
        assert response.status_code == status, f"{method} {path}: {response.text[:2000]}"
        return response.json()

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


@pytest.fixture(scope="module")
def alice(api_server: ApiProcess, settings: Settings, worker: WorkerProcess) -> Api:
    return Api(api_server, mint_token(settings, "batch-alice"))


@pytest.fixture(scope="module")
def bob(api_server: ApiProcess, settings: Settings) -> Api:
    return Api(api_server, mint_token(settings, "batch-bob"))


@pytest.fixture(scope="module")
def big_batch(alice: Api) -> Iterator[str]:
    """A 200-item batch of one owner, submitted once for the tests that watch it."""
    items = [{"prompt": f"item {i}"} for i in range(BIG)]
    reply = alice.call("POST", "/batches", {"items": items, "metadata": {"n": BIG}}, 201)
    batch = reply["batch"]
    assert batch["total_items"] == BIG
    assert batch["counts"]["queued"] + batch["counts"]["running"] == BIG
    yield batch["id"]
    if not alice.batch(batch["id"])["finished_at"]:
        alice.call("POST", f"/batches/{batch['id']}/cancel", {}, 202)


def test_another_owners_prompt_starts_within_one_run_of_a_big_batch(
    big_batch: str, alice: Api, bob: Api
) -> None:
    wait_for(
        lambda: alice.batch(big_batch)["done"] >= 8,
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
    assert alice.batch(big_batch)["done"] < BIG, "the batch ended before bob's run started"

    # Ordered by events: batch items that started after bob's prompt was accepted and
    # before it started. The worker has already reserved one task per slot (4) and then
    # takes from the interactive and batch queues in turn, so at most 2 x 4 items go
    # first; a first-in-first-out queue would let the rest of the batch go first.
    started = [r["started_at"] for r in alice.runs(big_batch) if r["started_at"]]
    went_first = [s for s in started if run["created_at"] < s < run["started_at"]]
    assert len(went_first) <= 8, f"{len(went_first)} batch items started before bob's prompt"


def test_a_200_item_batch_completes_with_counts_results_and_cost(
    big_batch: str, alice: Api
) -> None:
    batch = alice.wait_batch(big_batch)

    assert batch["status"] == "succeeded"
    assert batch["counts"]["succeeded"] == BIG
    assert batch["done"] == BIG
    assert batch["progress"] == 1.0
    results = alice.results(big_batch)
    assert [r["index"] for r in results] == list(range(BIG))  # each exactly once, in order
    assert all(r["status"] == "succeeded" for r in results)
    assert all(r["result"].endswith(f"item {r['index']}") for r in results)
    assert batch["total_cost_usd"] == pytest.approx(sum(r["total_cost_usd"] for r in results))
    assert batch["total_cost_usd"] > 0
    listed = alice.call("GET", "/batches")["batches"]
    assert big_batch in [b["id"] for b in listed]


def test_cancel_mid_batch_starts_nothing_after_the_cancel_and_states_add_up(
    alice: Api,
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
