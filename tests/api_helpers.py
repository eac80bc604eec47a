"""Small helpers for tests that drive the API: tokens, waiting for runs, reading echoes."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask.testing import FlaskClient

from orchestrator.auth.owner_tokens import mint_token
from orchestrator.runtime.containers import SessionDirs
from orchestrator.runtime.executor import transcript_path
from orchestrator.settings import Settings
from tests.waiting import wait_for

FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def auth(settings: Settings, owner: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, owner)}"}


def get_json(client: FlaskClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def post_json(
    client: FlaskClient, path: str, body: dict[str, Any], headers: dict[str, str], status: int
) -> dict[str, Any]:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == status, response.json
    reply: dict[str, Any] = response.json  # type: ignore[assignment]
    return reply


def create_session(
    client: FlaskClient, headers: dict[str, str], prompt: str | None = None, **options: Any
) -> dict[str, Any]:
    """``POST /sessions`` (with its first run when ``prompt`` is given, and the session
    ``options``): the reply."""
    body = {**options, "prompt": prompt} if prompt else dict(options)
    return post_json(client, "/api/v1/sessions", body, headers, 201)


def queue_run(client: FlaskClient, headers: dict[str, str], session_id: str, prompt: str) -> str:
    """Queue a prompt on a session; its run's ID."""
    run_id: str = post_json(
        client, f"/api/v1/sessions/{session_id}/runs", {"prompt": prompt}, headers, 202
    )["run"]["id"]
    return run_id


def start_streaming_run(
    client: FlaskClient,
    headers: dict[str, str],
    prompt: str = "[[stream 200 0.1]]",
    **options: Any,
) -> tuple[str, str]:
    """A new session (with ``options``) whose run streams for about 20 s, once its events
    are flowing: ``(session_id, run_id)``, for tests that stop, cancel or lose a run
    midway."""
    created = create_session(client, headers, prompt, **options)
    session_id, run_id = created["session"]["id"], created["run"]["id"]
    wait_for(
        lambda: len(get_json(client, f"/api/v1/runs/{run_id}/events", headers)["events"]) > 3,
        timeout=120,
        what="the run to stream",
    )
    return session_id, run_id


def run_of(client: FlaskClient, headers: dict[str, str], run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = get_json(client, f"/api/v1/runs/{run_id}", headers)["run"]
    return run


def wait_run(
    client: FlaskClient, headers: dict[str, str], run_id: str, timeout: float = 180
) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        run = run_of(client, headers, run_id)
        return run if run["status"] in FINAL else None

    return wait_for(final, timeout=timeout, interval=0.2, what=f"run {run_id} to finish")


def message_count(echo: str) -> int:
    """How many messages the scripted model saw, from its echo reply."""
    match = re.match(r"echo \(messages=(\d+)\)", echo)
    assert match is not None, echo
    return int(match.group(1))


def transcript_kept(settings: Settings, session_id: str) -> bool:
    """Whether the session's conversation is still on disk (it outlives its container)."""
    dirs = SessionDirs.for_session(settings.data_dir, session_id)
    return transcript_path(dirs, uuid.UUID(session_id)).exists()
