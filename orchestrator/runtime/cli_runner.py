"""Drive one ``claude -p`` process in a session container, with watchdogs.

The CLI can hang after its final message or stall mid-stream, and a SIGTERM can leave
its children running; so this loop polls output in short slices, enforces a silence
limit and a total time limit, honours cancellation, and kills the whole process tree
(every process carrying the run's ``CCQ_RUN_ID``) when it stops a run early.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.runtime.claude_cli import (
    CliEvent,
    LineSplitter,
    RunOutcome,
    apply_event,
    parse_line,
)
from orchestrator.runtime.containers import (
    ContainerRuntime,
    ExecProcess,
    FrameDecoder,
    SessionContainer,
)

POLL_SECONDS = 0.25
# After the final `result` line the CLI should exit; if it lingers this long, it is killed.
EXIT_GRACE_SECONDS = 10.0
STDERR_TAIL_LINES = 50


class StopReason(StrEnum):
    EXITED = "exited"
    SILENCE = "silence"
    TIME_LIMIT = "time_limit"
    CANCELLED = "cancelled"


@dataclass
class CliRunResult:
    outcome: RunOutcome
    stop_reason: StopReason
    exit_code: int | None
    stderr_tail: str


def kill_tree_command(run_id: str) -> list[str]:
    """argv that SIGKILLs every process in the container whose environment names the run.

    ``run_id`` is ccq's own UUID, checked by the caller, so the script has no user input.
    """
    script = (
        "for p in /proc/[0-9]*; do "
        'if tr "\\0" "\\n" < "$p/environ" 2>/dev/null | grep -qx "CCQ_RUN_ID=$1"; then '
        'kill -KILL "${p#/proc/}" 2>/dev/null; fi; done; true'
    )
    return ["sh", "-c", script, "ccq-kill", run_id]


def run_cli(
    runtime: ContainerRuntime,
    container: SessionContainer,
    *,
    run_id: str,
    argv: list[str],
    prompt: str,
    env: Mapping[str, str],
    on_event: Callable[[CliEvent], None],
    silence_timeout: float,
    time_limit: float,
    should_cancel: Callable[[], bool] = lambda: False,
    on_tick: Callable[[], None] = lambda: None,
) -> CliRunResult:
    """Run the CLI to completion (or until a watchdog or cancel stops it).

    The runtime starts it (and the killer) in ``container``; a container gone meanwhile
    raises :class:`~orchestrator.runtime.containers.ContainerMissing`.

    Args:
        run_id: tags every process of this run (``CCQ_RUN_ID``) so it can be killed.
        argv: from :func:`orchestrator.runtime.claude_cli.build_command`.
        prompt: written to the CLI's stdin (no argv size limit, no shell).
        env: the process environment, credentials included; never logged.
        on_event: called for every parsed stdout line and every stderr line
            (``ccq.stderr``), in order, from this thread.
        silence_timeout: seconds without any output before the run is killed.
        time_limit: seconds the whole run may take.
        should_cancel: polled between reads; True kills the run as cancelled.
        on_tick: called after every poll (about four times a second), e.g. to flush.
    """
    process = runtime.exec(container, argv, env={**env, "CCQ_RUN_ID": run_id})
    outcome = RunOutcome()
    stdout_lines, stderr_lines = LineSplitter(), LineSplitter()
    stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    started = last_output = time.monotonic()
    result_seen_at: float | None = None
    stop_reason = StopReason.EXITED

    def handle_line(line: str, stream: int) -> None:
        nonlocal result_seen_at
        if stream == FrameDecoder.STDERR:
            if line.strip():
                stderr_tail.append(line)
                on_event(CliEvent("ccq.stderr", {"line": line}))
            return
        event = parse_line(line)
        if event is None:
            return
        apply_event(outcome, event)
        if event.type == "result":
            result_seen_at = time.monotonic()
        on_event(event)

    try:
        process.write_stdin_and_close(prompt.encode("utf-8"))
        while not process.eof:
            for out in process.poll(POLL_SECONDS):
                last_output = time.monotonic()
                splitter = stdout_lines if out.stream == FrameDecoder.STDOUT else stderr_lines
                for line in splitter.feed(out.data):
                    handle_line(line, out.stream)
            on_tick()
            now = time.monotonic()
            reason = _watchdog(
                now, started, last_output, result_seen_at, silence_timeout, time_limit
            )
            if reason is None and should_cancel():
                reason = StopReason.CANCELLED
            if reason is not None:
                stop_reason = reason
                _kill(runtime, container, run_id)
                break
        for line in stdout_lines.flush():
            handle_line(line, FrameDecoder.STDOUT)
        for line in stderr_lines.flush():
            handle_line(line, FrameDecoder.STDERR)
        exit_code = _wait_exit_code(process)
    finally:
        process.close()
    if stop_reason is StopReason.SILENCE and outcome.has_result:
        # Hung after its final message: the run itself finished.
        stop_reason = StopReason.EXITED
    return CliRunResult(outcome, stop_reason, exit_code, "\n".join(stderr_tail))


def _watchdog(
    now: float,
    started: float,
    last_output: float,
    result_seen_at: float | None,
    silence_timeout: float,
    time_limit: float,
) -> StopReason | None:
    if result_seen_at is not None and now - result_seen_at > EXIT_GRACE_SECONDS:
        return StopReason.SILENCE
    if now - started > time_limit:
        return StopReason.TIME_LIMIT
    if now - last_output > silence_timeout:
        return StopReason.SILENCE
    return None


def _kill(runtime: ContainerRuntime, container: SessionContainer, run_id: str) -> None:
    killer: ExecProcess = runtime.exec(container, kill_tree_command(run_id), env={})
    try:
        killer.write_stdin_and_close(b"")
        deadline = time.monotonic() + 10
        while not killer.eof and time.monotonic() < deadline:
            killer.poll(POLL_SECONDS)
    finally:
        killer.close()


def _wait_exit_code(process: ExecProcess, timeout: float = 10.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.exit_code()
        if code is not None:
            return code
        time.sleep(0.05)
    return None
