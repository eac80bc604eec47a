"""What the API fuzz run (test_api_fuzz.py) found, each kept as a regular test.

They run on a real `ccq api` process whose task queue no worker reads, so the runs they
queue stay queued and the timing they need holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.settings import Settings
from tests.processes import ApiProcess, running, stack_environment
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def idle_settings(settings: Settings) -> Iterator[Settings]:
    """The test stack's settings with a task queue of their own that no worker reads."""
    name = f"{settings.instance}-idle"
    yield settings.model_copy(update={"instance": name})
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def idle_api(
    idle_settings: Settings, model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    env = stack_environment(idle_settings, model_server)
    env["CCQ_MAX_WAIT_SECONDS"] = "60"
    with running(ApiProcess(env, tmp_path_factory.mktemp("idle-api") / "api.log")) as api:
        yield api


def test_a_wait_whose_session_is_deleted_meanwhile_is_a_404(
    idle_api: ApiProcess, idle_settings: Settings
) -> None:
    """The waiting request re-read a run the session's deletion had removed: a 500
    (SQLAlchemy's ObjectDeletedError) instead of the 404 the run now is."""
    base = f"http://127.0.0.1:{idle_api.port}/api/v1"
    headers = {"Authorization": f"Bearer {mint_token(idle_settings, 'input-wait')}"}
    created = requests.post(f"{base}/sessions", json={}, headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    session_id = created.json()["session"]["id"]

    def last_run() -> dict[str, Any] | None:
        answer = requests.get(f"{base}/sessions/{session_id}", headers=headers, timeout=30)
        run: dict[str, Any] | None = answer.json()["session"]["last_run"]
        return run

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            requests.post,
            f"{base}/sessions/{session_id}/runs",
            params={"wait": "60"},
            json={"prompt": "never started"},
            headers=headers,
            timeout=90,
        )
        wait_for(last_run, timeout=30, what="the waited-for run to be queued")
        deleted = requests.delete(f"{base}/sessions/{session_id}", headers=headers, timeout=30)
        assert deleted.status_code == 202, deleted.text
        answer = waiting.result(timeout=90)

    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "not_found"
