"""The chaos suite: faults injected under load, then the same invariants every time.

Every scenario runs six concurrent streaming runs on six sessions of a private stack
(three of them tailed over WebSockets), injects its fault once every run's events are
flowing, ends it, and checks :func:`tests.chaos.load.check_invariants`: every run final
within 120 s, each prompt sent to the model once (or once per attempt the retry rule
allows) and never two CLIs at once on a session, every resumed tail exactly the run's
history, every session taking its next prompt, and no CLI or container left unowned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import docker
import pytest

from model_server.server import ModelServer
from tests.api_helpers import FINAL
from tests.chaos.load import Load, check_invariants, start_load, wait_streaming
from tests.chaos.stack import PrivateStack, kill, restart_docker_engine
from tests.http_api import bash
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

Record = Callable[[dict[str, Any]], None]


def test_pool_processes_sigkilled_mid_stream(
    stack: PrivateStack, model: ModelServer, record: Record
) -> None:
    """Scenario 1, and the regression test of the wedge: runs streaming for 20 s lose
    their pool processes (the main process respawns them). Each run ends (failed
    worker_lost, or run again where the session asked for it), and a prompt queued
    behind one runs, instead of staying queued for good."""
    load = start_load(stack, retry=True)
    wait_streaming(load)
    first = load.runs[0]
    behind = stack.api.prompt(first.session_id, "queued behind the lost run")
    pool = stack.pool_pids()
    assert pool, "the worker has pool processes"

    load.drop_tails()
    fault_started = time.monotonic()
    kill(pool)
    fault_ended = time.monotonic()

    numbers = check_invariants(load, model, fault_ended)
    numbers["fault_seconds"] = round(fault_ended - fault_started, 1)
    problems = numbers["violations"] + _lost_run_problems(load)
    for run in load.runs:
        events = stack.api.get(f"/runs/{run.run_id}/events")["events"]
        if len(events) <= 5:
            problems.append(f"run {run.run_id}: what it streamed before the loss was lost")
    if stack.api.wait_run(behind, timeout=30)["status"] != "succeeded":
        problems.append("the prompt queued behind a lost run did not succeed")
    record(numbers)
    assert not problems, problems


def _lost_run_problems(load: Load) -> list[str]:
    """Runs that did not end by the lost-run rule: failed ``worker_lost``, or succeeded
    on a later attempt where the session asked for retries."""
    problems = []
    for run in load.runs:
        assert run.final is not None
        expected = ("succeeded", None) if run.retry else ("failed", "worker_lost")
        if (run.final["status"], run.final["error_code"]) != expected:
            problems.append(f"run {run.run_id} ended {run.final}, not {expected}")
    return problems


def test_whole_worker_sigkilled_then_restarted(
    stack: PrivateStack, model: ModelServer, record: Record
) -> None:
    """Scenario 2: the worker and its pool die at once (a host lost), and a worker starts
    again; the CLIs it left behind in the session containers are ended before anything
    runs there again."""
    load = start_load(stack, retry=True)
    wait_streaming(load)

    load.drop_tails()
    fault_started = time.monotonic()
    stack.kill_worker()
    stack.worker.restart()
    fault_ended = time.monotonic()

    numbers = check_invariants(load, model, fault_ended)
    numbers["fault_seconds"] = round(fault_ended - fault_started, 1)
    problems = numbers["violations"] + _lost_run_problems(load)
    record(numbers)
    assert not problems, problems


def test_redis_restarted_mid_stream(
    stack: PrivateStack, model: ModelServer, record: Record
) -> None:
    """Scenario 3: the stack's Redis (append-only) is SIGKILLed mid-stream and started
    again on the same port and files once every run has noticed (its events wait)."""
    load = start_load(stack)
    wait_streaming(load)
    log = stack.worker.log_path

    def every_run_noticed() -> bool:
        """Each run's event sink has found Redis gone (and waits for it)."""
        text = log.read_bytes()
        return all(f"run {run.run_id}: Redis unreachable".encode() in text for run in load.runs)

    fault_started = time.monotonic()
    stack.redis.kill()
    load.drop_tails()
    wait_for(every_run_noticed, timeout=60, what="every run to notice that Redis is gone")
    stack.redis.start()
    fault_ended = time.monotonic()

    numbers = check_invariants(load, model, fault_ended)
    numbers["fault_seconds"] = round(fault_ended - fault_started, 1)
    record(numbers)
    assert not numbers["violations"], numbers["violations"]


def test_nul_byte_in_cli_output(stack: PrivateStack, model: ModelServer, record: Record) -> None:
    """Scenario 7: every CLI streams, then runs a command printing a NUL byte. The byte
    is stored as U+FFFD and each run ends as it would have, its session going on."""
    nul = bash("printf 'before\\000after'")
    load = start_load(stack, prompt=f"[[stream 40 0.25]] {nul}")
    wait_streaming(load)
    load.drop_tails()
    fault_started = fault_ended = time.monotonic()  # the NUL comes in-band, after the stream

    numbers = check_invariants(load, model, fault_ended)
    numbers["fault_seconds"] = round(fault_ended - fault_started, 1)
    problems = numbers["violations"]
    for run in load.runs:
        assert run.final is not None
        if run.final["status"] != "succeeded":
            problems.append(f"run {run.run_id} ended {run.final}")
        events = stack.api.get(f"/runs/{run.run_id}/events")["events"]
        if "before\ufffdafter" not in json.dumps(events, ensure_ascii=False):
            problems.append(f"run {run.run_id}: no U+FFFD where the NUL was")
    record(numbers)
    assert not problems, problems


def test_postgresql_restarted_mid_stream(
    pg_stack: PrivateStack, model: ModelServer, record: Record
) -> None:
    """Scenario 4: the stack's own PostgreSQL cluster stops at once (no checkpoint) mid-
    stream and starts again once the worker has noticed: events wait in the run's sink."""
    stack = pg_stack
    assert stack.postgres is not None
    load = start_load(stack)
    wait_streaming(load)
    log = stack.worker.log_path
    seen = log.read_bytes().count(b"wait for PostgreSQL")

    fault_started = time.monotonic()
    stack.postgres.kill()
    load.drop_tails()
    wait_for(
        lambda: log.read_bytes().count(b"wait for PostgreSQL") > seen,
        timeout=60,
        what="the worker to notice that PostgreSQL is gone",
    )
    stack.postgres.start()
    fault_ended = time.monotonic()

    numbers = check_invariants(load, model, fault_ended)
    numbers["fault_seconds"] = round(fault_ended - fault_started, 1)
    record(numbers)
    assert not numbers["violations"], numbers["violations"]


def test_docker_daemon_restarted_mid_stream(
    stack: PrivateStack,
    model: ModelServer,
    record: Record,
    docker_client: docker.DockerClient,
    test_label: str,
) -> None:
    """Scenario 5: the Docker engine stops mid-stream (every container with it: the CLIs
    die) and starts again. Each run ends, failed with the reason, its prompt sent once,
    and its session's next prompt runs in a new container.

    The host's own engine is restarted, so the scenario runs only when every container
    on it belongs to this test run (as in CI); beside anyone else's it skips.
    """
    foreign = [
        c.name
        for c in docker_client.containers.list()
        if c.labels.get("ccq.instance") != stack.settings.instance
        and c.labels.get("ccq.test") != test_label
    ]
    if foreign:
        pytest.skip(f"restarting the Docker engine would stop containers of others: {foreign}")
    load = start_load(stack)
    wait_streaming(load)

    load.drop_tails()
    fault_started = time.monotonic()
    with load.sampling_paused():  # no CLI runs while the engine is down
        restart_docker_engine(docker_client)
    fault_ended = time.monotonic()

    numbers = check_invariants(load, model, fault_ended)
    numbers["fault_seconds"] = round(fault_ended - fault_started, 1)
    problems = numbers["violations"]
    for run in load.runs:
        assert run.final is not None
        if run.final["status"] != "failed" or not run.final["error"]:
            problems.append(f"run {run.run_id} ended {run.final}, not failed with a reason")
    record(numbers)
    assert not problems, problems


def test_data_dir_disk_full_mid_stream(
    disk_stack: PrivateStack, model: ModelServer, record: Record
) -> None:
    """Scenario 6: the stack's data dir (workspaces, the CLIs' homes and transcripts) is
    filled to the last byte mid-stream and kept full until every run has ended (each CLI
    writes its transcript there at the end of its turn), then freed."""
    stack = disk_stack
    assert stack.disk is not None
    load = start_load(stack)
    wait_streaming(load)

    fault_started = time.monotonic()
    stack.disk.fill()
    load.drop_tails()
    for run in load.runs:  # every CLI finishes its turn (and writes its transcript) on it

        def ended(run_id: str = run.run_id) -> bool:
            return stack.api.get(f"/runs/{run_id}")["run"]["status"] in FINAL

        wait_for(ended, timeout=90, interval=0.2, what=f"run {run.run_id} to end, disk full")
    stack.disk.free()
    fault_ended = time.monotonic()

    numbers = check_invariants(load, model, fault_ended)
    numbers["fault_seconds"] = round(fault_ended - fault_started, 1)
    record(numbers)
    assert not numbers["violations"], numbers["violations"]
