"""Warm turns and cold sessions: ccq from POST to the CLI's ``result`` on a tail, against
the CLI run by hand. ccq and baseline iterations alternate (and swap which goes first),
so a machine that slows down or speeds up mid-run weighs on both alike."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from websockets.sync.client import ClientConnection, connect

from bench import BenchError
from bench.cli_baseline import (
    check_result,
    exec_command,
    run_command,
    start_idle_container,
    time_to_result,
)
from bench.report import Comparison
from bench.stack import Stack
from bench.stats import Summary
from orchestrator.runtime.containers import SessionDirs
from orchestrator.streams.events import RUN_FINISHED

TURN_TIMEOUT = 120.0


def _prompt(n: int) -> str:
    # No directive: the scripted model server echoes it, as a short real answer would be.
    return f"Reply with one short line: benchmark turn {n}."


def _tail(stack: Stack, path: str) -> ClientConnection:
    return connect(
        stack.ws_url(path),
        additional_headers=stack.headers,
        proxy=None,
        compression=None,
        open_timeout=30,
    )


def _read_until(ws: ClientConnection, stop: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first event for which ``stop`` holds (the opening message is not an event)."""
    deadline = time.monotonic() + TURN_TIMEOUT
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=deadline - time.monotonic()))
        if "tail" in message:
            continue
        if message["type"] == RUN_FINISHED and message["data"].get("status") != "succeeded":
            raise BenchError(f"run {message['run_id']} ended {message['data']}")
        if stop(message):
            return message


def _result_of(run_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "result" and e["run_id"] == run_id


def _finished(run_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == RUN_FINISHED and e["run_id"] == run_id


def ccq_warm_turn(stack: Stack, session_id: str, prompt: str) -> float:
    """POST a prompt to a live session; seconds until its ``result`` is on the tail."""
    with _tail(stack, f"/api/v1/sessions/{session_id}/stream") as ws:
        # A session stream is live from the cursor its opening message names.
        opening = json.loads(ws.recv(timeout=30))
        if "tail" not in opening:
            raise BenchError(f"unexpected first message: {str(opening)[:200]}")
        started = time.perf_counter()
        run = stack.post(f"/api/v1/sessions/{session_id}/runs", {"prompt": prompt})["run"]
        result = _read_until(ws, _result_of(run["id"]))
        elapsed = time.perf_counter() - started
        check_result(result["data"], "ccq")
        # Untimed: the next prompt must not queue behind this run.
        _read_until(ws, _finished(run["id"]))
    return elapsed


def ccq_cold_session(stack: Stack, prompt: str) -> tuple[float, str]:
    """POST a new session with a prompt; seconds until its ``result`` is on the run's tail
    (container creation included), and the session's ID."""
    started = time.perf_counter()
    reply = stack.post("/api/v1/sessions", {"prompt": prompt})
    run_id = reply["run"]["id"]
    # A run stream replays the run from its first event: opened late, it misses nothing.
    with _tail(stack, f"/api/v1/runs/{run_id}/stream") as ws:
        result = _read_until(ws, _result_of(run_id))
        elapsed = time.perf_counter() - started
        check_result(result["data"], "ccq")
        _read_until(ws, _finished(run_id))
    return elapsed, str(reply["session"]["id"])


def _session_container(stack: Stack, session_id: str) -> str:
    found = stack.runtime.find(session_id)
    if found is None or not found.running:
        raise BenchError(f"no running container for session {session_id}")
    return found.id


def _delete_session(stack: Stack, session_id: str) -> None:
    """Delete a session and wait until its container is gone (a quiet machine again)."""
    stack.delete(f"/api/v1/sessions/{session_id}")
    deadline = time.monotonic() + 60
    while stack.runtime.find(session_id) is not None:
        if time.monotonic() > deadline:
            raise BenchError(f"session {session_id}'s container outlived its deletion by 60 s")
        time.sleep(0.2)


def _alternate(i: int, first: Callable[[], None], second: Callable[[], None]) -> None:
    for step in (first, second) if i % 2 == 0 else (second, first):
        step()


def warm_turn(stack: Stack, iterations: int, progress: Callable[[str], None]) -> Comparison:
    """(1) A turn in a session whose container is up, against ``docker exec`` there."""
    created = stack.post("/api/v1/sessions", {"prompt": _prompt(0)})
    session_id = str(created["session"]["id"])
    with _tail(stack, f"/api/v1/runs/{created['run']['id']}/stream") as ws:
        _read_until(ws, _finished(created["run"]["id"]))
    _session_container(stack, session_id)  # up, and staying up between turns
    env = stack.baseline_environment()
    # Both sides resume a conversation, as ccq does from its second prompt on: the
    # baseline's first call creates its own (with --session-id), untimed like ccq's.
    # Its container is one of its own, configured like a session's (see cli_baseline).
    baseline_session = str(uuid.uuid4())
    dirs = SessionDirs.for_session(stack.settings.data_dir / "baseline", baseline_session)
    dirs.create()
    container = start_idle_container(stack.settings.worker_image, stack.settings.instance, dirs)
    time_to_result(exec_command(container, baseline_session, resume=False, env=env), "hi", env)
    ccq_warm_turn(stack, session_id, _prompt(1))

    def ccq_once(prompt: str) -> None:
        ccq.append(ccq_warm_turn(stack, session_id, prompt))

    def baseline_once(prompt: str) -> None:
        command = exec_command(container, baseline_session, resume=True, env=env)
        baseline.append(time_to_result(command, prompt, env))

    ccq: list[float] = []
    baseline: list[float] = []
    for i in range(iterations):
        prompt = _prompt(i + 2)
        _alternate(i, partial(ccq_once, prompt), partial(baseline_once, prompt))
        progress(f"warm turn {i + 1}/{iterations}: ccq {ccq[-1]:.3f} s, exec {baseline[-1]:.3f} s")
    _delete_session(stack, session_id)
    return Comparison(
        key="warm_turn",
        title="warm turn",
        baseline_name="docker exec + claude -p --resume, in an idle container",
        ccq=Summary.of(ccq),
        baseline=Summary.of(baseline),
        details={"iterations": iterations, "ccq_seconds": ccq, "baseline_seconds": baseline},
    )


def cold_session(stack: Stack, iterations: int, progress: Callable[[str], None]) -> Comparison:
    """(2) A new session's first turn, container included, against ``docker run``."""
    env = stack.baseline_environment()
    settings = stack.settings

    def ccq_once(prompt: str) -> None:
        elapsed, session_id = ccq_cold_session(stack, prompt)
        ccq.append(elapsed)
        _delete_session(stack, session_id)

    def baseline_once(prompt: str) -> None:
        session_id = str(uuid.uuid4())
        dirs = SessionDirs.for_session(settings.data_dir / "baseline", session_id)
        dirs.create()
        command = run_command(settings.worker_image, settings.instance, dirs, session_id, env)
        baseline.append(time_to_result(command, prompt, env))

    ccq: list[float] = []
    baseline: list[float] = []
    for i in range(iterations):
        prompt = _prompt(i)
        _alternate(i, partial(ccq_once, prompt), partial(baseline_once, prompt))
        progress(f"cold {i + 1}/{iterations}: ccq {ccq[-1]:.3f} s, run {baseline[-1]:.3f} s")
    return Comparison(
        key="cold_session",
        title="cold session",
        baseline_name="docker run + claude -p, same image and container settings",
        ccq=Summary.of(ccq),
        baseline=Summary.of(baseline),
        details={"iterations": iterations, "ccq_seconds": ccq, "baseline_seconds": baseline},
    )
