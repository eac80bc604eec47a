"""The load every chaos scenario runs, and the invariants checked after every fault.

A load is N sessions, each with one streaming run whose prompt carries a nonce (so the
model server's record tells the runs apart); some runs have a WebSocket tail that drops
its connection when told and resumes with ``after`` = the last ID it got.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import docker
from websockets.exceptions import ConnectionClosed, InvalidStatus

from model_server.recording import is_main_call
from model_server.server import ModelServer
from tests.api_helpers import FINAL
from tests.chaos.stack import PrivateStack
from tests.stream_helpers import history, open_tail
from tests.waiting import wait_for

# 20 s of streaming: long enough that every run of the load is mid-stream at the fault.
STREAMING = "[[stream 80 0.25]]"
# How long after the fault ends every run must be final (invariant a).
RECOVERY_SECONDS = 120
SETTLED = {"idle", "stopped"}
_never = threading.Event()


class Tail(threading.Thread):
    """One run's WebSocket tail: keeps every event it got, in order; when ``drop`` is
    set (or the server cuts it off) it reconnects with ``after`` = its last event's ID,
    until the server closes the stream because the run finished (code 1000)."""

    def __init__(self, stack: PrivateStack, run_id: str, deadline: float) -> None:
        super().__init__(daemon=True, name=f"tail-{run_id[:8]}")
        self.stack = stack
        self.path = f"/api/v1/runs/{run_id}/stream"
        self.deadline = deadline
        self.events: list[dict[str, Any]] = []
        self.connections = 0
        self.drop = threading.Event()
        self.closed = threading.Event()  # closed by the server with 1000: the run ended
        self.error: str | None = None

    @property
    def last_id(self) -> str | None:
        return self.events[-1]["id"] if self.events else None

    def run(self) -> None:
        while not self.closed.is_set() and not self.stack.closing.is_set():
            if time.monotonic() > self.deadline:
                self.error = "gave up: the run never ended"
                return
            try:
                self._follow()
            except (OSError, ConnectionClosed, InvalidStatus, TimeoutError):
                _never.wait(0.5)  # the API or its Redis is down: try again
            except Exception as exc:  # anything else fails the check, with its reason
                self.error = repr(exc)
                return

    def _follow(self) -> None:
        api, token = self.stack.api_server, self.stack.token
        with open_tail(api, self.path, token, after=self.last_id) as ws:
            self.connections += 1
            while not self.drop.is_set():
                try:
                    message = ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                except ConnectionClosed as closed:
                    if closed.rcvd is not None and closed.rcvd.code == 1000:
                        self.closed.set()
                    return
                decoded = json.loads(message)
                if "tail" not in decoded:  # each connection's opening message
                    self.events.append(decoded)
            self.drop.clear()


@dataclass
class LoadRun:
    nonce: str
    session_id: str
    run_id: str
    retry: bool  # the session's retry_on_worker_loss
    tail: Tail | None
    final: dict[str, Any] | None = None
    final_after: float | None = None  # seconds from the fault's end


@dataclass
class Load:
    stack: PrivateStack
    runs: list[LoadRun]
    max_clis: dict[str, int] = field(default_factory=dict)  # per session, ever seen
    crowded: list[str] = field(default_factory=list)  # what was seen when more than one
    _watching: threading.Event = field(default_factory=threading.Event)
    # Held for each round of sampling; held by a fault that must not meet one midway.
    _sampling: threading.Lock = field(default_factory=threading.Lock)
    _watcher: threading.Thread | None = None

    def drop_tails(self) -> None:
        for run in self.runs:
            if run.tail is not None:
                run.tail.drop.set()

    def watch_clis(self) -> None:
        """Sample each session container's processes until :meth:`stop_watching`: the
        most CLIs ever seen at once in one (invariant b, "never two at once")."""

        def sample() -> None:
            while not (self._watching.is_set() or self.stack.closing.is_set()):
                with self._sampling:
                    self._sample_once()
                _never.wait(0.3)

        self._watcher = threading.Thread(target=sample, daemon=True, name="cli-watch")
        self._watcher.start()

    def _sample_once(self) -> None:
        try:
            containers = self.stack.containers()
        except docker.errors.DockerException:  # one went while being listed
            return
        for container in containers:
            session = container.labels.get("ccq.session", "")
            seen = cli_commands(container)
            if len(seen) > 1:
                self.crowded.append(f"{time.strftime('%X')} {session}: {seen}")
            self.max_clis[session] = max(self.max_clis.get(session, 0), len(seen))

    @contextmanager
    def sampling_paused(self) -> Iterator[None]:
        """No sampling meanwhile (a Docker engine restart: calls would meet it dying)."""
        with self._sampling:
            yield

    def stop_watching(self) -> None:
        self._watching.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)


def cli_commands(container: Any) -> list[str]:
    """The CLIs running in ``container`` (none if it is not running), as ``pid ppid
    command``: ``claude`` by any path as the command or its first argument (node running
    it). A CLI's own child caught between fork and exec still shows the CLI's command
    line; it is part of that CLI, not a second one, so it is left out."""
    try:
        top = container.top(ps_args="-eo pid,ppid,args")
    except Exception:  # stopped or gone since it was listed
        return []
    titles = top["Titles"]
    pid, ppid, command = titles.index("PID"), titles.index("PPID"), titles.index("COMMAND")
    clis = [
        row
        for row in top.get("Processes") or []
        if any(part.rsplit("/", 1)[-1] == "claude" for part in row[command].split()[:2])
    ]
    pids = {row[pid] for row in clis}
    return [" ".join(row)[:200] for row in clis if row[ppid] not in pids]


def cli_count(container: Any) -> int:
    return len(cli_commands(container))


def start_load(
    stack: PrivateStack, n: int = 6, *, tails: int = 3, retry: bool = False, prompt: str = ""
) -> Load:
    """``n`` sessions each running one streaming prompt (``prompt`` when given) with a
    nonce, the first ``tails`` tailed; with ``retry`` every other session has
    ``retry_on_worker_loss``. Returns once every run's events are flowing."""
    deadline = time.monotonic() + 600
    runs = []
    for i in range(n):
        nonce = f"chaos-{uuid.uuid4().hex[:10]}"
        asks_retry = retry and i % 2 == 1
        body = {"prompt": f"{nonce} {prompt or STREAMING}", "retry_on_worker_loss": asks_retry}
        reply = stack.api.post("/sessions", body, 201)
        run_id = reply["run"]["id"]
        tail = Tail(stack, run_id, deadline) if i < tails else None
        if tail is not None:
            tail.start()
        runs.append(LoadRun(nonce, reply["session"]["id"], run_id, asks_retry, tail))
    load = Load(stack, runs)
    load.watch_clis()
    return load


def wait_streaming(load: Load, events: int = 5) -> None:
    """Until every run has streamed more than ``events`` events (not a sleep: the fault
    must land while every CLI is mid-stream)."""
    for run in load.runs:

        def streaming(run_id: str = run.run_id) -> bool:
            return len(load.stack.api.get(f"/runs/{run_id}/events")["events"]) > events

        wait_for(streaming, timeout=180, interval=0.2, what=f"run {run.run_id} to stream")


def prompt_calls(model: ModelServer, nonce: str) -> int:
    """Main-conversation model calls whose newest user message carries ``nonce``: how
    often a CLI was started on that prompt (a turn's later calls end with tool results)."""
    count = 0
    for entry in model.requests():
        messages = (entry.get("body") or {}).get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if is_main_call(entry) and users and nonce in json.dumps(users[-1]):
            count += 1
    return count


def wait_all_final(load: Load, fault_ended: float) -> float:
    """Invariant (a): every run final within RECOVERY_SECONDS of ``fault_ended`` (a
    monotonic time). Returns the seconds from the fault's end to the last one final."""

    def all_final() -> bool:
        for run in load.runs:
            if run.final is None:
                reply = load.stack.api.get(f"/runs/{run.run_id}")["run"]
                if reply["status"] in FINAL:
                    run.final, run.final_after = reply, time.monotonic() - fault_ended
        return all(run.final is not None for run in load.runs)

    remaining = max(1.0, fault_ended + RECOVERY_SECONDS - time.monotonic())
    wait_for(all_final, timeout=remaining, interval=0.2, what="every run to be final")
    return max(run.final_after or 0.0 for run in load.runs)


def check_invariants(
    load: Load, model: ModelServer, fault_ended: float, *, max_attempts: int = 3
) -> dict[str, Any]:
    """Invariants (a) to (e) after a fault that ended at ``fault_ended`` (monotonic).

    (a) is a hard stop (nothing else can be judged while runs are live); every other
    violation is collected under ``violations``, so one scenario reports all it broke.
    Returns the numbers seen, for the scenario's record: seconds from the fault's end to
    every run final, and model calls per run."""
    stack = load.stack
    problems: list[str] = []
    recovered = wait_all_final(load, fault_ended)  # (a)

    # (b) each prompt reached the model once, or once per attempt the retry rule allows.
    calls = {run.run_id: prompt_calls(model, run.nonce) for run in load.runs}
    for run in load.runs:
        assert run.final is not None
        n, attempts = calls[run.run_id], run.final["attempts"]
        allowed = min(attempts, max_attempts) if run.retry else 1
        if not 1 <= n <= allowed:
            problems.append(f"(b) run {run.run_id}: {n} model calls, {attempts} attempts")

    # (c) every tail ended with exactly the run's history: no gap, no duplicate.
    for run in load.runs:
        if run.tail is not None:
            problems += _tail_problems(load, run)

    # (d) every session takes its next prompt.
    sessions = {run.session_id for run in load.runs}
    wait_for(
        lambda: all(
            stack.api.get(f"/sessions/{s}")["session"]["status"] in SETTLED for s in sessions
        ),
        timeout=60,
        interval=0.2,
        what="every session to settle",
    )
    nxt = {s: stack.api.prompt(s, f"next-{uuid.uuid4().hex[:8]} fine?") for s in sessions}
    for session_id, run_id in nxt.items():
        done = stack.api.wait_run(run_id, timeout=120)
        if done["status"] != "succeeded":
            problems.append(f"(d) session {session_id}: next prompt {done['status']}")

    # (b) never two CLIs at once on a session, sampled from the load's start until now.
    load.stop_watching()
    problems += [f"(b) session {s}: {n} CLIs at once" for s, n in load.max_clis.items() if n > 1]
    problems += [f"(b) seen at {line}" for line in load.crowded[:5]]
    unseen = sessions - {s for s, n in load.max_clis.items() if n}
    if unseen:  # the sampler saw no CLI of a session that ran one: it is blind
        problems.append(f"(b) no CLI ever seen in the containers of {sorted(unseen)}")

    # (e) no container nothing owns, and no CLI left in any settled session's container.
    for container in stack.containers():
        session_id = container.labels.get("ccq.session")
        if session_id is None:
            continue  # a reachability probe, not a session's
        status = stack.api.get(f"/sessions/{session_id}")["session"]["status"]
        if status not in {"idle", "running"}:
            problems.append(f"(e) container {container.name} of a {status} session")
        elif status == "idle" and cli_count(container):
            problems.append(f"(e) a CLI left in {container.name}")

    return {
        "runs": len(load.runs),
        "tails": sum(run.tail is not None for run in load.runs),
        "seconds_fault_end_to_all_final": round(recovered, 1),
        "model_calls_per_run": sorted(calls.values()),
        "most_clis_at_once_per_session": max(load.max_clis.values(), default=0),
        "outcomes": sorted(
            f"{run.final['status']}:{run.final.get('error_code') or '-'}:"
            f"attempts={run.final['attempts']}"
            for run in load.runs
            if run.final is not None
        ),
        "violations": problems,
    }


def _tail_problems(load: Load, run: LoadRun) -> list[str]:
    """Invariant (c) for one tailed run: what its tail got against the run's history."""
    tail = run.tail
    assert tail is not None
    tail.join(timeout=60)
    if tail.error is not None:
        return [f"(c) tail of {run.run_id} failed: {tail.error}"]
    if not tail.closed.is_set():
        return [f"(c) tail of {run.run_id} never saw the run end"]
    path = f"/api/v1/runs/{run.run_id}/events"
    whole = [e["id"] for e in history(load.stack.api_server, path, load.stack.token)]
    got = [e["id"] for e in tail.events]
    problems = []
    if got != whole:
        only_tail = [i for i in got if i not in whole]
        only_history = [i for i in whole if i not in got]
        dups = len(got) - len(set(got))
        problems.append(
            f"(c) tail of {run.run_id} != history: {len(got)} vs {len(whole)} events, "
            f"only in the tail {only_tail}, only in history {only_history}, {dups} duplicates"
        )
    if tail.connections < 2:
        problems.append(f"(c) tail of {run.run_id} never resumed")
    return problems
