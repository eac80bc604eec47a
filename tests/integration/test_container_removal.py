"""Finished work leaves no containers: a stopped session's container is removed (its files
stay and the next prompt resumes), and the reaper removes leftovers but never touches a
session whose run holds its lock. (Batch items: tests/integration/test_batches.py; idle
sessions: test_run_lifecycle.py.)"""

from __future__ import annotations

import uuid

import docker
import pytest
from flask.testing import FlaskClient

from api.extensions import Services
from orchestrator.runtime.containers import ContainerRuntime
from orchestrator.runtime.janitor import Janitor
from orchestrator.runtime.locks import SessionLock
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


def test_stopping_a_session_removes_its_container_and_the_next_prompt_resumes(
    client: FlaskClient, settings: Settings, runtime: ContainerRuntime, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    created = create_session(client, headers, "the word is fig")
    session_id = created["session"]["id"]
    first = wait_run(client, headers, created["run"]["id"])
    assert first["status"] == "succeeded", first
    assert runtime.find(session_id) is not None  # an idle session keeps it until stopped

    post_json(client, f"/api/v1/sessions/{session_id}/stop", {}, headers, 202)
    wait_for(
        lambda: runtime.find(session_id) is None,
        timeout=60,
        what="the stopped session's container to be removed",
    )

    assert transcript_kept(settings, session_id)
    second = wait_run(client, headers, queue_run(client, headers, session_id, "which word?"))
    assert second["status"] == "succeeded", second
    assert message_count(second["result"]) == message_count(first["result"]) + 2 == 4


def test_a_session_stopped_during_a_run_loses_its_container_when_the_run_ends(
    client: FlaskClient, settings: Settings, runtime: ContainerRuntime, worker: WorkerProcess
) -> None:
    headers = auth(settings)
    session_id, run_id = start_streaming_run(client, headers)

    # The stop's own removal finds the run's lock held and leaves the container to the
    # run, which is cancelled and removes it once recorded.
    post_json(client, f"/api/v1/sessions/{session_id}/stop", {}, headers, 202)
    assert wait_run(client, headers, run_id, timeout=60)["status"] == "cancelled"
    wait_for(
        lambda: runtime.find(session_id) is None,
        timeout=30,
        what="the container of the session stopped mid-run to be removed",
    )

    assert run_of(client, headers, run_id)["status"] == "cancelled"
    again = wait_run(client, headers, queue_run(client, headers, session_id, "back again"))
    assert again["status"] == "succeeded", again
    assert again["result"].endswith("back again")


def test_the_reaper_removes_leftover_containers_but_not_a_locked_sessions(
    client: FlaskClient,
    settings: Settings,
    services: Services,
    runtime: ContainerRuntime,
    janitor: Janitor,
    docker_client: docker.DockerClient,
    worker: WorkerProcess,
) -> None:
    headers = auth(settings)
    leftover = create_session(client, headers, "leftover")
    active = create_session(client, headers, "still wanted")
    for created in (leftover, active):
        assert wait_run(client, headers, created["run"]["id"])["status"] == "succeeded"
    leftover_id, active_id = leftover["session"]["id"], active["session"]["id"]
    # A stopped container, as a crashed run or an older ccq left them.
    container = runtime.find(leftover_id)
    assert container is not None
    docker_client.containers.get(container.id).stop(timeout=1)

    lock = SessionLock(services.redis, uuid.UUID(leftover_id), "a run executing")
    assert lock.acquire()
    try:
        janitor.reap()
        assert runtime.find(leftover_id) is not None  # its run holds the lock: untouched
    finally:
        lock.release()
    report = janitor.reap()

    assert report["not_running"] >= 1
    assert runtime.find(leftover_id) is None
    active_container = runtime.find(active_id)  # running, idle for less than the timeout
    assert active_container is not None
    assert active_container.status == "running"
    assert transcript_kept(settings, leftover_id)
    again = wait_run(client, headers, queue_run(client, headers, leftover_id, "resumed?"))
    assert message_count(again["result"]) == 4
