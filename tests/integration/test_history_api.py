"""Event history over HTTP (runs and sessions, paged) and what a Redis outage does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.extensions import EXTENSION_KEY
from orchestrator.settings import Settings
from tests.api_helpers import auth, create_session, get_json, post_json, wait_run
from tests.processes import WorkerProcess
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration


def _pages(client: FlaskClient, path: str, headers: dict[str, str], limit: int) -> list[Any]:
    events: list[Any] = []
    after: str | None = None
    while True:
        query = f"?limit={limit}" + (f"&after={after}" if after else "")
        page = get_json(client, path + query, headers)
        events.extend(page["events"])
        if len(page["events"]) < limit:
            return events
        after = page["next_after"]


def _whole_run(client: FlaskClient, headers: dict[str, str], run_id: str) -> list[Any]:
    """A finished run's events, once its last one (published after the commit) is stored."""

    def settled() -> list[Any] | None:
        events = _pages(client, f"/api/v1/runs/{run_id}/events", headers, 500)
        return events if events and events[-1]["type"] == "ccq.run.finished" else None

    return wait_for(settled, timeout=30, interval=0.1, what=f"run {run_id}'s history")


def test_a_sessions_history_spans_its_runs_in_stream_order_and_pages(
    client: FlaskClient, settings: Settings, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    created = post_json(client, "/api/v1/sessions", {"prompt": "one"}, headers, 201)
    session_id, first = created["session"]["id"], created["run"]["id"]
    wait_run(client, headers, first)
    second = post_json(
        client, f"/api/v1/sessions/{session_id}/runs", {"prompt": "two"}, headers, 202
    )["run"]["id"]
    wait_run(client, headers, second)
    runs = _whole_run(client, headers, first) + _whole_run(client, headers, second)

    paged = _pages(client, f"/api/v1/sessions/{session_id}/events", headers, limit=3)

    assert [e["id"] for e in paged] == [e["id"] for e in runs]
    positions = [tuple(int(part) for part in e["id"].split("-")) for e in paged]
    assert positions == sorted(positions)
    assert [e["type"] for e in paged].count("ccq.run.finished") == 2

    # A cursor from one run's history is a position in the session's as well.
    middle = runs[len(runs) // 2]["id"]
    after = get_json(client, f"/api/v1/sessions/{session_id}/events?after={middle}", headers)
    assert [e["id"] for e in after["events"]] == [e["id"] for e in runs[len(runs) // 2 + 1 :]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("after=yesterday", "after"),
        ("after=1-2-3", "after"),
        ("after=99999999999999999999-0", "after"),  # past BIGINT: refused, not a 500
        ("limit=0", "limit"),
        ("limit=5001", "limit"),
        ("limit=ten", "limit"),
    ],
)
def test_bad_history_queries_name_the_field(
    client: FlaskClient, settings: Settings, query: str, field: str
) -> None:
    headers = auth(settings)
    session_id = post_json(client, "/api/v1/sessions", {}, headers, 201)["session"]["id"]
    response = client.get(f"/api/v1/sessions/{session_id}/events?{query}", headers=headers)
    assert response.status_code == 400, response.json
    error = response.json["error"]  # type: ignore[index]
    assert error["code"] == "invalid_input"
    assert error["details"][0]["field"] == field


def test_another_owners_history_is_not_found(client: FlaskClient, settings: Settings) -> None:
    session_id = post_json(client, "/api/v1/sessions", {}, auth(settings), 201)["session"]["id"]
    response = client.get(
        f"/api/v1/sessions/{session_id}/events", headers=auth(settings, "mallory")
    )
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"  # type: ignore[index]


@pytest.fixture
def app_without_redis(settings: Settings) -> Iterator[Flask]:
    """The API with Redis unreachable (a port nothing listens on); PostgreSQL is fine."""
    broken = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_app(broken)
    yield app
    app.extensions[EXTENSION_KEY].close()


def test_without_redis_a_prompt_answers_503_and_its_run_is_failed_not_left_queued(
    app_without_redis: Flask, client: FlaskClient, settings: Settings
) -> None:
    headers = auth(settings)
    session_id = create_session(client, headers)["session"]["id"]
    response = app_without_redis.test_client().post(
        f"/api/v1/sessions/{session_id}/runs", json={"prompt": "never queued"}, headers=headers
    )
    assert response.status_code == 503, response.json
    assert response.json["error"]["code"] == "dependency_unavailable"  # type: ignore[index]

    # Seen through a healthy API: the run exists and says why it never ran.
    last_run = get_json(client, f"/api/v1/sessions/{session_id}", headers)["session"]["last_run"]
    assert last_run["status"] == "failed"
    assert "redis" in last_run["error"]


def test_without_redis_no_session_is_created(
    app_without_redis: Flask, client: FlaskClient, settings: Settings
) -> None:
    """The owner's session rate is counted in Redis: without it nothing is created (503),
    rather than sessions made past a limit nobody could check."""
    headers = auth(settings, owner="redisless-owner")
    response = app_without_redis.test_client().post(
        "/api/v1/sessions", json={"prompt": "never queued"}, headers=headers
    )
    assert response.status_code == 503, response.json
    assert response.json["error"]["code"] == "dependency_unavailable"  # type: ignore[index]
    assert get_json(client, "/api/v1/sessions", headers)["sessions"] == []
