"""Prompts through the API become Celery tasks that run the real CLI (real worker)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from api.extensions import EXTENSION_KEY, Services
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db.models import Run, Session
from orchestrator.settings import Settings
from tests.api_helpers import auth, get_json, message_count, post_json, wait_run
from tests.processes import WorkerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_two_prompts_on_one_session_the_second_resumed(
    client: FlaskClient, settings: Settings, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    created = client.post(
        "/api/v1/sessions", json={"prompt": "the word is tangerine"}, headers=headers
    )
    assert created.status_code == 201, created.json
    body = created.json
    assert body is not None
    session_id, first_id = body["session"]["id"], body["run"]["id"]
    assert body["run"]["status"] == "queued"

    first = wait_run(client, headers, first_id)
    assert first["status"] == "succeeded", first
    queued = client.post(
        f"/api/v1/sessions/{session_id}/runs",
        json={"prompt": "what was the word?"},
        headers=headers,
    )
    assert queued.status_code == 202, queued.json
    second = wait_run(client, headers, queued.json["run"]["id"])  # type: ignore[index]
    assert second["status"] == "succeeded", second

    counts = [message_count(r["result"]) for r in (first, second)]
    assert counts[1] == counts[0] + 2  # the second prompt reached the model with the first
    assert second["result"].endswith("what was the word?")
    assert first["total_cost_usd"] > 0
    assert second["total_cost_usd"] > 0
    assert (first["num_turns"], second["num_turns"]) == (1, 1)

    session = client.get(f"/api/v1/sessions/{session_id}", headers=headers).json["session"]  # type: ignore[index]
    assert session["runs_count"] == 2
    assert session["status"] == "idle"
    assert session["total_cost_usd"] == pytest.approx(
        first["total_cost_usd"] + second["total_cost_usd"]
    )
    assert session["last_run"]["id"] == second["id"]


def test_a_run_records_its_events_in_order(
    client: FlaskClient, settings: Settings, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    created = client.post(
        "/api/v1/sessions", json={"prompt": "[[stream 5 0.01]]"}, headers=headers
    ).json
    assert created is not None
    run = wait_run(client, headers, created["run"]["id"])
    assert run["status"] == "succeeded", run

    def whole() -> list[Any] | None:
        # ccq.run.finished is published, then stored, right after the run's row commits.
        path = f"/api/v1/runs/{run['id']}/events"
        events: list[Any] = client.get(path, headers=headers).json["events"]  # type: ignore[index]
        return events if events[-1]["type"] == "ccq.run.finished" else None

    events = wait_for(whole, timeout=30, interval=0.1, what="the run's last event")
    types = [e["type"] for e in events]
    assert types[:2] == ["ccq.run.queued", "ccq.run.started"]
    assert "result" in types
    assert "system" in types
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert all(
        e["run_id"] == run["id"] and e["session_id"] == created["session"]["id"] for e in events
    )
    page = client.get(
        f"/api/v1/runs/{run['id']}/events?after={events[1]['id']}&limit=2", headers=headers
    ).json["events"]  # type: ignore[index]
    assert [e["id"] for e in page] == [e["id"] for e in events[2:4]]


def _counts(services: Services) -> tuple[int, int]:
    with services.session_factory() as db:
        return (
            db.scalar(select(func.count()).select_from(Session)) or 0,
            db.scalar(select(func.count()).select_from(Run)) or 0,
        )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "hi", "colour": "blue"}, "colour"),
        ({"prompt": "hi", "max_turns": 0}, "max_turns"),
        ({"prompt": "hi", "allowed_tools": "Bash"}, "allowed_tools"),
    ],
)
def test_bad_bodies_are_refused_naming_the_field_and_write_nothing(
    app: Flask, client: FlaskClient, settings: Settings, body: dict[str, Any], field: str
) -> None:
    before = _counts(app.extensions[EXTENSION_KEY])
    response = client.post("/api/v1/sessions", json=body, headers=auth(settings))
    assert response.status_code == 400
    error = response.json["error"]  # type: ignore[index]
    assert error["code"] == "invalid_input"
    assert any(d["field"].startswith(field) for d in error["details"]), error
    assert _counts(app.extensions[EXTENSION_KEY]) == before


def test_an_oversized_prompt_is_413_and_writes_nothing(
    app: Flask, client: FlaskClient, settings: Settings
) -> None:
    before = _counts(app.extensions[EXTENSION_KEY])
    response = client.post(
        "/api/v1/sessions", json={"prompt": "é" * (128 * 1024 + 1)}, headers=auth(settings)
    )
    assert response.status_code == 413
    assert response.json["error"]["details"] == [  # type: ignore[index]
        {"field": "prompt", "reason": "at most 262144 bytes of UTF-8"}
    ]
    assert _counts(app.extensions[EXTENSION_KEY]) == before


def test_malformed_json_and_missing_prompt(client: FlaskClient, settings: Settings) -> None:
    headers = {**auth(settings), "Content-Type": "application/json"}
    response = client.post("/api/v1/sessions", data=b"{not json", headers=headers)
    assert response.status_code == 400
    assert response.json["error"]["details"][0]["field"] == "(body)"  # type: ignore[index]

    session_id = client.post("/api/v1/sessions", json={}, headers=headers).json["session"]["id"]  # type: ignore[index]
    response = client.post(f"/api/v1/sessions/{session_id}/runs", json={}, headers=headers)
    assert response.status_code == 400
    assert response.json["error"]["details"][0]["field"] == "prompt"  # type: ignore[index]


def test_tokens_are_checked_and_other_owners_see_nothing(
    client: FlaskClient, settings: Settings
) -> None:
    session_id = client.post("/api/v1/sessions", json={}, headers=auth(settings, "alice")).json[
        "session"
    ]["id"]  # type: ignore[index]

    assert client.get(f"/api/v1/sessions/{session_id}").status_code == 401
    forged = {"Authorization": "Bearer " + mint_token(settings, "alice")[:-4] + "abcd"}
    assert client.get(f"/api/v1/sessions/{session_id}", headers=forged).status_code == 401

    as_bob = auth(settings, "bob")
    assert client.get(f"/api/v1/sessions/{session_id}", headers=as_bob).status_code == 404
    response = client.post(
        f"/api/v1/sessions/{session_id}/runs", json={"prompt": "hi"}, headers=as_bob
    )
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"  # type: ignore[index]
    assert client.get(f"/api/v1/sessions/{uuid.uuid4()}", headers=as_bob).status_code == 404
    assert client.get("/api/v1/sessions/not-a-uuid", headers=as_bob).status_code == 404


def test_a_200_kb_prompt_goes_through(
    client: FlaskClient, settings: Settings, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    prompt = "".join(f"line {i:06d} of a long prompt\n" for i in range(200 * 1024 // 28))
    assert len(prompt.encode()) > 200_000
    created = client.post("/api/v1/sessions", json={"prompt": prompt}, headers=headers).json
    assert created is not None
    run = wait_run(client, headers, created["run"]["id"])
    assert run["status"] == "succeeded", run
    assert run["result"].endswith(prompt.strip()[-40:])
    assert "line 000000 of a long prompt" in run["result"]


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": 1}, "expired"),
        ({"aud": "another-service"}, "audience"),
        ({"iss": "someone-else"}, "issuer"),
    ],
)
def test_expired_and_misdirected_tokens_are_401(
    client: FlaskClient, settings: Settings, claims: dict[str, object], reason: str
) -> None:
    import jwt

    secret = settings.jwt_secret
    assert secret is not None
    base = {"sub": "alice", "aud": "ccq", "iss": "ccq", "iat": 0, "exp": 4_000_000_000}
    token = jwt.encode({**base, **claims}, secret.get_secret_value(), algorithm="HS256")
    response = client.post(
        "/api/v1/sessions", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert reason in response.json["error"]["message"]  # type: ignore[index]


def test_session_options_keep_only_the_cli_knobs(client: FlaskClient, settings: Settings) -> None:
    body = {
        "prompt": "secret plan",
        "max_turns": 3,
        "allowed_tools": ["Read"],
        "metadata": {"team": "a"},
        "idempotency_key": "k-1",
        "model": "claude-sonnet-5-5",
    }
    session = client.post("/api/v1/sessions", json=body, headers=auth(settings)).json["session"]  # type: ignore[index]
    assert session["options"] == {"max_turns": 3, "allowed_tools": ["Read"]}
    assert session["model"] == "claude-sonnet-5-5"
    assert session["metadata"] == {"team": "a"}


def test_a_resumed_run_costs_its_own_spend_not_the_conversations_running_total(
    client: FlaskClient, settings: Settings, worker: WorkerProcess
) -> None:
    """The CLI reports a resumed conversation's running total; ccq records each run's part."""
    headers = auth(settings)
    created = post_json(client, "/api/v1/sessions", {"prompt": "[[stream 400]] long"}, headers, 201)
    session_id = created["session"]["id"]
    long = wait_run(client, headers, created["run"]["id"])
    queued = post_json(
        client, f"/api/v1/sessions/{session_id}/runs", {"prompt": "short"}, headers, 202
    )
    short = wait_run(client, headers, queued["run"]["id"])
    assert (long["status"], short["status"]) == ("succeeded", "succeeded")

    # 400 chunks of output cost far more than a short echo, even with the longer context.
    assert 0 < short["total_cost_usd"] < long["total_cost_usd"]
    events = get_json(client, f"/api/v1/runs/{short['id']}/events?limit=5000", headers)["events"]
    reported = next(e["data"]["total_cost_usd"] for e in events if e["type"] == "result")
    assert reported == pytest.approx(long["total_cost_usd"] + short["total_cost_usd"])
    session = get_json(client, f"/api/v1/sessions/{session_id}", headers)["session"]
    assert session["total_cost_usd"] == pytest.approx(reported)


def test_wait_answers_with_the_finished_run_and_gives_up_after_its_seconds(
    client: FlaskClient, settings: Settings, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    session_id = post_json(client, "/api/v1/sessions", {}, headers, 201)["session"]["id"]
    path = f"/api/v1/sessions/{session_id}/runs"

    done = client.post(path + "?wait=120", json={"prompt": "quick"}, headers=headers)
    assert done.status_code == 200, done.json
    assert done.json is not None
    assert done.json["run"]["status"] == "succeeded"
    assert done.json["run"]["result"].endswith("quick")

    slow = client.post(path + "?wait=0.5", json={"prompt": "[[sleep 5]] slow"}, headers=headers)
    assert slow.status_code == 202, slow.json
    assert slow.json is not None
    assert slow.json["run"]["status"] in ("queued", "running")
    assert wait_run(client, headers, slow.json["run"]["id"])["status"] == "succeeded"
