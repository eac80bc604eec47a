"""Drive one ``claude -p`` process in a session container, with watchdogs.

The CLI can hang after its final message or stall mid-stream, and a SIGTERM can leave
its children running; so this loop polls output in short slices, enforces a silence
limit and a total time limit, honours cancellation, and when it stops a run early ends
every process the session has in its container.

**Stopping a run.** The session runs arbitrary code as the same uid as anything ccq
execs, so nothing inside the container is trusted to cooperate: a process may drop
``CCQ_RUN_ID`` from its environment, double-fork away from the CLI, plant ``sh`` or
``kill`` on its ``PATH``, or kill ccq's helper. The helper (:func:`kill_tree_command`) is
``/bin/sh`` from the read-only image with builtins only and ccq's own ``PATH``; it
SIGKILLs every process in the container but PID 1 (tini) and its idle ``sleep``, this
run's and any an earlier run left behind, in rounds until none is left. If it does not
finish cleanly in time, or the CLI's ``docker exec`` still runs after it, the container
is removed (the engine kills its whole cgroup): the session's files stay, and its next
run gets a new container.
"""

from __future__ import annotations

import logging
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
    CONTAINER_PATH,
    ContainerMissing,
    ContainerRuntime,
    ExecProcess,
    FrameDecoder,
    SessionContainer,
)

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
# After the final `result` line the CLI should exit; if it lingers this long, it is killed.
EXIT_GRACE_SECONDS = 10.0
# How long the kill helper may take, and the CLI's exec to end after it, before the
# container is removed instead.
KILL_DEADLINE_SECONDS = 10.0
KILLED_EXIT_SECONDS = 5.0
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


# Shell builtins (dash's read, kill, test, case) and /usr/bin/sleep by absolute path,
# nothing looked up on a PATH. The container's idle process is PID 1's (tini's) oldest
# child: the `sleep` with the lowest PID (a later process never gets a lower one: after a
# wrap PIDs start at 300). Every process but PID 1, that one and this shell is SIGKILLed,
# zombies aside, until a round finds none (exit 0) or the rounds run out (exit 1; ccq
# then removes the container).
_KILL_SCRIPT = """
self=$$
status() {
  state=
  ppid=
  while read -r key value rest; do
    case $key in
      State:) state=$value ;;
      PPid:) ppid=$value; break ;;
    esac
  done 2>/dev/null < "/proc/$1/status"
}
idle=
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  status "$pid"
  if [ "$ppid" = 1 ] && [ "$p/exe" -ef /usr/bin/sleep ]; then
    if [ -z "$idle" ] || [ "$pid" -lt "$idle" ]; then idle=$pid; fi
  fi
done
round=0
while [ "$round" -lt 40 ]; do
  round=$((round + 1))
  found=0
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    case $pid in 1|"$self"|"$idle") continue ;; esac
    status "$pid"
    if [ -z "$ppid" ] || [ "$state" = Z ] || [ "$ppid" = "$self" ]; then continue; fi
    kill -KILL "$pid" 2>/dev/null
    found=1
  done
  if [ "$found" = 0 ]; then exit 0; fi
  /usr/bin/sleep 0.1
done
exit 1
"""


def kill_tree_command() -> list[str]:
    """argv of ccq's kill helper: ``/bin/sh`` (on the image's read-only root) running a
    fixed script of shell builtins that SIGKILLs every process of the session in the
    container (see the module docstring); exit 0 once none is left."""
    return ["/bin/sh", "-c", _KILL_SCRIPT, "ccq-kill"]


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

    ended = False  # the CLI's own exit, or _stop's: nothing of the run is left running
    try:
        process.write_stdin_and_close(prompt.encode("utf-8"))
        while not process.eof:
            for out in process.poll(POLL_SECONDS):
                splitter = stdout_lines if out.stream == FrameDecoder.STDOUT else stderr_lines
                for line in splitter.feed(out.data):
                    handle_line(line, out.stream)
                # After handling: time ccq spent (waiting out a Redis outage) is not the
                # CLI's silence.
                last_output = time.monotonic()
            on_tick()
            now = time.monotonic()
            reason = _watchdog(
                now, started, last_output, result_seen_at, silence_timeout, time_limit
            )
            if reason is None and should_cancel():
                reason = StopReason.CANCELLED
            if reason is not None:
                stop_reason = reason
                break
        exit_code: int | None = None
        if stop_reason is StopReason.EXITED:
            exit_code = _wait_exit_code(process)
        else:
            exit_code = _stop(runtime, container, process, run_id)
        ended = True
        for line in stdout_lines.flush():
            handle_line(line, FrameDecoder.STDOUT)
        for line in stderr_lines.flush():
            handle_line(line, FrameDecoder.STDERR)
    except BaseException:
        # Whatever broke here (PostgreSQL, Redis, a soft time limit, a shutdown), the CLI
        # must not outlive this call: a later run would start a second one beside it.
        if not ended:
            log.warning("run %s: stopping its CLI after an error", run_id)
            _stop_quietly(runtime, container, process, run_id)
        raise
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


def _stop(
    runtime: ContainerRuntime, container: SessionContainer, process: ExecProcess, run_id: str
) -> int | None:
    """End every process of the session in ``container``; the CLI's exit code if known.

    The kill helper first; if it fails or the CLI's exec outlives it, the container goes.
    """
    if _kill(runtime, container):
        try:
            code = _wait_exit_code(process, KILLED_EXIT_SECONDS)
        except ContainerMissing:
            return None
        if code is not None:
            return code
    log.warning(
        "run %s: its processes did not all end; removing container %s", run_id, container.name
    )
    runtime.remove_container(container)
    return None


def _stop_quietly(
    runtime: ContainerRuntime, container: SessionContainer, process: ExecProcess, run_id: str
) -> None:
    try:
        _stop(runtime, container, process, run_id)
    except ContainerMissing:
        pass
    except Exception:
        log.exception("run %s: could not stop its CLI", run_id)


def ensure_no_cli(runtime: ContainerRuntime, container: SessionContainer) -> bool:
    """Make sure no earlier CLI is alive in ``container`` before a new one starts: one
    is ended with every other session process (the kill helper), or with the container.

    Returns:
        Whether the container is still there (False: it was removed; make a new one).

    Raises:
        ContainerError: the engine could not list or end the processes.
    """
    try:
        if not any(is_cli_command(command) for command in runtime.commands(container)):
            return True
        log.warning("container %s: an earlier CLI is still alive; ending it", container.name)
        if _kill(runtime, container):
            return True
    except ContainerMissing:
        return False
    runtime.remove_container(container)
    return False


def is_cli_command(command: str) -> bool:
    """Whether a process's command line is the CLI's (``claude`` by any path, or node
    running it); a session's own process named so is ended too, which costs it nothing
    it could rely on."""
    return any(part.rsplit("/", 1)[-1] == "claude" for part in command.split()[:2])


def _kill(runtime: ContainerRuntime, container: SessionContainer) -> bool:
    """Run the kill helper; whether it ended cleanly (exit 0) in time.

    Raises:
        ContainerMissing: the container is gone.
    """
    killer: ExecProcess = runtime.exec(
        container, kill_tree_command(), env={"PATH": CONTAINER_PATH}, workdir="/"
    )
    try:
        killer.write_stdin_and_close(b"")
        deadline = time.monotonic() + KILL_DEADLINE_SECONDS
        while not killer.eof and time.monotonic() < deadline:
            killer.poll(POLL_SECONDS)
        return killer.eof and _wait_exit_code(killer, 2.0) == 0
    except ContainerMissing:
        raise
    except Exception:
        log.exception("the kill helper failed in container %s", container.name)
        return False
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
