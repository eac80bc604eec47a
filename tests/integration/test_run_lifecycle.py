"""Ordering, redelivery, cancel, watchdogs, reaping and restarts on the real stack."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import docker
import pytest
from celery import Celery
from flask.testing import FlaskClient

from model_server.server import ModelServer
from orchestrator.runtime.containers import ContainerRuntime, SessionContainerSpec, SessionDirs
from orchestrator.runtime.janitor import Janitor
from orchestrator.settings import Settings
from tests.api_helpers import (
    auth,
    create_session,
    message_count,
    post_json,
    queue_run,
    run_of,
    start_streaming_run,
    transcript_kept,
    wait_run,
)
from tests.processes import WorkerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _main_calls(model: ModelServer) -> int:
    return sum(
        1 for r in model.requests() if r.get("path") == "/v1/messages" and r.get("has_tools")
    )


def test_five_prompts_at_once_finish_in_order_without_overlap(
    client: FlaskClient, settings: Settings, worker: WorkerProcess, second_worker: WorkerProcess
) -> None:
    headers = auth(settings)
    session_id = create_session(client, headers)["session"]["id"]
    run_ids = [
        queue_run(client, headers, session_id, f"prompt {i} [[sleep 0.3]]") for i in range(5)
    ]

    runs = [wait_run(client, headers, run_id) for run_id in run_ids]

    assert [r["status"] for r in runs] == ["succeeded"] * 5, runs
    assert [r["seq"] for r in runs] == [1, 2, 3, 4, 5]
    for earlier, later in itertools.pairwise(runs):
        assert earlier["finished_at"] <= later["started_at"], (earlier, later)
    # Each prompt saw all the earlier ones: they ran in order on one conversation.
    counts = [message_count(r["result"]) for r in runs]
    assert counts == [counts[0] + 2 * i for i in range(5)]
    assert [r["result"].rsplit(": ", 1)[1] for r in runs] == [f"prompt {i}" for i in range(5)]


def test_ten_sessions_run_in_parallel(
    client: FlaskClient, settings: Settings, worker: WorkerProcess, second_worker: WorkerProcess
) -> None:
    headers = auth(settings)
    run_ids = [
        create_session(client, headers, "[[sleep 2]] parallel")["run"]["id"] for _ in range(10)
    ]
    runs = [wait_run(client, headers, run_id) for run_id in run_ids]
    assert all(r["status"] == "succeeded" for r in runs), runs
    # With 8 worker slots, many runs overlap: the first to finish ended after others began.
    first_finish = min(r["finished_at"] for r in runs)
    overlapping = [r for r in runs if r["started_at"] < first_finish]
    assert len(overlapping) >= 4


def test_a_redelivered_run_does_not_start_the_cli_again(
    client: FlaskClient,
    settings: Settings,
    celery_app: Celery,
    model: ModelServer,
    worker: WorkerProcess,
    second_worker: WorkerProcess,
) -> None:
    headers = auth(settings)
    run_id = create_session(client, headers, "[[sleep 3]] once only")["run"]["id"]
    wait_for(lambda: run_of(client, headers, run_id)["status"] == "running", timeout=60)

    # A second delivery while the first runs is not acked and forgotten: it looks again
    # once the lock could have run out, and reports the run's end.
    during = celery_app.send_task("ccq.run_prompt", args=[run_id])
    finished = wait_run(client, headers, run_id)
    assert during.get(timeout=120) == {"run_id": run_id, "status": "succeeded"}
    after = celery_app.send_task("ccq.run_prompt", args=[run_id]).get(timeout=60)

    assert after == {"run_id": run_id, "status": "succeeded"}
    assert finished["attempts"] == 1
    assert _main_calls(model) == 1


def test_cancel_during_a_streaming_run_kills_the_cli_and_the_session_goes_on(
    client: FlaskClient,
    settings: Settings,
    docker_client: docker.DockerClient,
    runtime: ContainerRuntime,
    worker: WorkerProcess,
) -> None:
    headers = auth(settings)
    session_id, run_id = start_streaming_run(client, headers)

    post_json(client, f"/api/v1/runs/{run_id}/cancel", {}, headers, 202)
    cancelled = wait_run(client, headers, run_id, timeout=30)

    assert cancelled["status"] == "cancelled"
    found = runtime.find(session_id)
    assert found is not None
    container = docker_client.containers.get(found.id)
    leftover = container.exec_run(["pgrep", "-f", "claude"], user="1000")
    assert leftover.exit_code == 1, leftover.output
    next_run = wait_run(client, headers, queue_run(client, headers, session_id, "still there?"))
    assert next_run["status"] == "succeeded"
    assert next_run["result"].endswith("still there?")
    response = client.post(f"/api/v1/runs/{run_id}/cancel", headers=headers)
    assert response.status_code == 409


def test_a_queued_run_cancelled_never_starts(
    client: FlaskClient, settings: Settings, model: ModelServer, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    created = create_session(client, headers, "[[sleep 2]] first")
    session_id = created["session"]["id"]
    queued = queue_run(client, headers, session_id, "never sent to the model")
    post_json(client, f"/api/v1/runs/{queued}/cancel", {}, headers, 202)

    assert wait_run(client, headers, created["run"]["id"])["status"] == "succeeded"
    assert run_of(client, headers, queued)["status"] == "cancelled"
    assert "never sent to the model" not in str(model.requests())


def test_a_hanging_model_times_out_by_the_silence_watchdog(
    client: FlaskClient, settings: Settings, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    run = wait_run(
        client, headers, create_session(client, headers, "[[hang]]")["run"]["id"], timeout=120
    )
    assert run["status"] == "timed_out"
    assert run["result"] is None


def test_a_reaped_container_and_a_restarted_worker_still_resume(
    client: FlaskClient,
    settings: Settings,
    runtime: ContainerRuntime,
    janitor: Janitor,
    worker: WorkerProcess,
) -> None:
    headers = auth(settings)
    created = create_session(client, headers, "the word is plum")
    session_id = created["session"]["id"]
    first = wait_run(client, headers, created["run"]["id"])
    janitor.reap()  # not idle long enough yet: it stays
    assert runtime.find(session_id) is not None
    later = datetime.now(UTC) + timedelta(seconds=settings.idle_timeout + 1)
    assert janitor.reap(now=later)["idle"] >= 1
    assert runtime.find(session_id) is None  # removed, not left stopped
    assert transcript_kept(settings, session_id)

    worker.restart()
    second = wait_run(client, headers, queue_run(client, headers, session_id, "which word?"))

    assert second["status"] == "succeeded", second
    assert message_count(second["result"]) == message_count(first["result"]) + 2


def test_the_reaper_removes_containers_whose_session_is_gone(
    settings: Settings, runtime: ContainerRuntime, janitor: Janitor
) -> None:
    orphan_id = str(uuid.uuid4())
    runtime.ensure_running(
        SessionContainerSpec(
            session_id=orphan_id,
            owner="nobody",
            image=settings.worker_image,
            dirs=SessionDirs.for_session(settings.data_dir, orphan_id),
            instance=settings.instance,
        )
    )
    report = janitor.reap()
    assert report["no_session"] >= 1
    assert runtime.find(orphan_id) is None
