"""(4) Submitting N prompts: one ``POST /api/v1/batches`` of N items until its 201, against
the same N prompts as N ``POST /api/v1/sessions`` one after another over one keep-alive
connection until the last 201: what a client without batches does. Rounds alternate
which side goes first, so a machine that slows down mid-run weighs on both alike.

What each side does before its 201s: the batch inserts every item's session and run in
one transaction and hands Celery its first window of items (``max_concurrency``, at most
``CCQ_MAX_RUNS_PER_OWNER``; the rest wait in PostgreSQL until items end); each session
inserts its session and run, publishes ``ccq.run.queued`` and sends its run's task, N
tasks in all. The benchmark checks both counts in the queues after each sample.

Nothing runs. The benchmark has a stack of its own without a worker
(``running_stack(with_worker=False)``): nothing consumes its Celery queues, so no run
starts and no container is ever created. After each sample it checks that the instance's
queues hold the tasks the sample published, cancels what it submitted (the batch with
``POST /batches/<id>/cancel``, each session's run with ``POST /runs/<id>/cancel``), so
the next sample starts with no run pending, and purges the queues (Celery's ``purge``).
At the end it checks that both queues are empty; the stack then flushes its Redis
database and drops its PostgreSQL one.

Before each sample the scratch database is vacuumed and analysed (untimed), as autovacuum
keeps a long-lived one: the benchmark adds thousands of rows a sample to tables that
start empty, and with no statistics yet PostgreSQL plans the pending-limit count of
``POST /sessions`` (``orchestrator.domain.admission.pending_interactive``) as a nested loop over
every pending run times every interactive session: 23 ms a request at 900 pending
instead of 0.35 ms: the first sample's baseline took up to 1.7 times the next ones'.

The baseline would hit the owner's limit of pending interactive runs
(``CCQ_MAX_PENDING_RUNS_PER_OWNER``, 200 by default) past 200 prompts: this stack raises
it to ``PENDING_LIMIT``, so every ``POST /sessions`` still pays the check but none is
refused. (On a default deployment a client without batches cannot have more than 200
prompts queued at all.)

The details also time the status reads while the items are queued: ``GET
/batches/<id>`` (counts by state: one grouped query over the N items) and, for scale,
``GET /sessions/<id>`` of one session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from celery import Celery
from requests.adapters import HTTPAdapter
from sqlalchemy import text

from bench import BenchError
from bench.machine import process_tree_cpu_seconds
from bench.report import Comparison
from bench.stack import Stack
from bench.stats import Summary, percentile
from orchestrator.db.engine import make_engine
from orchestrator.db.models import Batch
from orchestrator.domain.batches import window
from tasks.celery_app import batch_queue, make_celery

# The stack's CCQ_MAX_PENDING_RUNS_PER_OWNER: the baseline queues every prompt at once.
PENDING_LIMIT = 1_000_000
STATUS_CALLS = 20
# Untimed, first: connections, the API's compiled queries and PostgreSQL's caches warm.
WARMUP_ITEMS = 20
REQUEST_TIMEOUT = 300.0


def _prompts(n: int, round_: int) -> list[str]:
    # Distinct prompts, short like the turns' (their size is not what is measured).
    return [f"Reply with one short line: benchmark item {round_}.{i}." for i in range(n)]


def _call(
    http: requests.Session, method: str, url: str, expect: int, body: Any = None
) -> dict[str, Any]:
    response = http.request(method, url, json=body, timeout=REQUEST_TIMEOUT)
    if response.status_code != expect:
        raise BenchError(f"{method} {url}: {response.status_code} {response.text[:500]}")
    reply: dict[str, Any] = response.json()
    return reply


class Submitter:
    """Submits, reads and cancels through one keep-alive HTTP session of the stack's
    owner, and checks and purges the stack's Celery queues."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = f"{stack.api.url}/api/v1"
        self.http = requests.Session()
        self.http.headers.update(stack.headers)
        self.celery: Celery = make_celery(stack.settings)
        self.queues = (stack.settings.instance, batch_queue(stack.settings))
        self.engine = make_engine(stack.settings)

    def close(self) -> None:
        self.engine.dispose()
        self.celery.close()
        self.http.close()

    # --- the timed steps ---------------------------------------------------------------

    def batch(self, prompts: list[str]) -> tuple[float, str]:
        """One batch of the prompts: seconds until its 201, and its ID."""
        body = {"items": [{"prompt": p} for p in prompts]}
        started = time.perf_counter()
        reply = _call(self.http, "POST", f"{self.url}/batches", 201, body)
        elapsed = time.perf_counter() - started
        batch = reply["batch"]
        if batch["total_items"] != len(prompts) or batch["counts"]["queued"] != len(prompts):
            raise BenchError(f"batch {batch['id']}: not every item queued: {batch['counts']}")
        return elapsed, str(batch["id"])

    def sessions(self, prompts: list[str]) -> tuple[float, list[str], list[str]]:
        """A session per prompt, one after another: seconds until the last 201, and the
        sessions' and their runs' IDs."""
        url = f"{self.url}/sessions"
        started = time.perf_counter()
        replies = [_call(self.http, "POST", url, 201, {"prompt": p}) for p in prompts]
        elapsed = time.perf_counter() - started
        sessions = [str(r["session"]["id"]) for r in replies]
        runs = [str(r["run"]["id"]) for r in replies]
        return elapsed, sessions, runs

    # --- untimed ------------------------------------------------------------------------

    def status_seconds(self, path: str, calls: int = STATUS_CALLS) -> list[float]:
        out = []
        for _ in range(calls):
            started = time.perf_counter()
            _call(self.http, "GET", f"{self.url}{path}", 200)
            out.append(time.perf_counter() - started)
        return out

    def cancel_batch(self, batch_id: str, n: int) -> None:
        reply = _call(self.http, "POST", f"{self.url}/batches/{batch_id}/cancel", 202)
        counts = reply["batch"]["counts"]
        if counts["cancelled"] != n:
            raise BenchError(f"batch {batch_id}: {counts['cancelled']} of {n} cancelled")

    def cancel_runs(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            reply = _call(self.http, "POST", f"{self.url}/runs/{run_id}/cancel", 202)
            if reply["run"]["status"] != "cancelled":
                raise BenchError(f"run {run_id} is {reply['run']['status']}, not cancelled")

    def vacuum_analyze(self) -> None:
        """Fresh statistics (and no dead rows) in the scratch database, as autovacuum
        keeps a long-lived one; VACUUM runs outside a transaction."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))

    def queued(self) -> int:
        """Tasks waiting in the instance's queues (interactive and batch)."""
        return sum(int(self.stack.redis.llen(name)) for name in self.queues)

    def expect_queued(self, n: int, who: str) -> int:
        found = self.queued()
        if found != n:
            raise BenchError(f"{who}: {found} tasks queued, expected {n}")
        return found

    def batch_window(self, items: int) -> int:
        """How many of a new batch's items its POST hands Celery (no max_concurrency)."""
        limit = self.stack.settings.max_runs_per_owner
        return min(items, window(Batch(max_concurrency=None), limit))

    def purge(self) -> int:
        """Delete every task of the instance's queues; how many there were."""
        purged: int = self.celery.control.purge()
        return purged

    def connections_opened(self) -> int:
        """New HTTP connections this client has opened so far: unchanged across a sample
        when every request of it reused the open one."""
        adapter = self.http.get_adapter(self.url)
        if not isinstance(adapter, HTTPAdapter):
            return -1
        pool = adapter.poolmanager.connection_from_url(self.url)
        return int(pool.num_connections)


def _api_cpu(stack: Stack) -> float:
    return process_tree_cpu_seconds(stack.api.process.pid) or 0.0


def _median_ms(samples: list[float]) -> float:
    return round(percentile(samples, 50) * 1000, 2)


def submit(stack: Stack, items: int, rounds: int, progress: Callable[[str], None]) -> Comparison:
    """(4) N prompts as one batch against N sessions, on a stack that runs nothing."""
    if stack.worker is not None:
        raise BenchError("the submit benchmark needs a stack without a worker")
    client = Submitter(stack)
    ccq: list[float] = []
    baseline: list[float] = []
    ccq_cpu: list[float] = []
    baseline_cpu: list[float] = []
    batch_status: list[float] = []
    session_status: list[float] = []
    connections: list[int] = []
    purged = left = batch_tasks = 0

    def ccq_once(round_: int) -> None:
        nonlocal purged, batch_tasks
        cpu = _api_cpu(stack)
        elapsed, batch_id = client.batch(_prompts(items, round_))
        ccq_cpu.append(_api_cpu(stack) - cpu)
        ccq.append(elapsed)
        batch_tasks = client.expect_queued(client.batch_window(items), "batch")
        batch_status.extend(client.status_seconds(f"/batches/{batch_id}"))
        client.cancel_batch(batch_id, items)
        purged += client.purge()

    def baseline_once(round_: int) -> None:
        nonlocal purged
        cpu, opened = _api_cpu(stack), client.connections_opened()
        elapsed, sessions, runs = client.sessions(_prompts(items, round_))
        baseline_cpu.append(_api_cpu(stack) - cpu)
        connections.append(client.connections_opened() - opened)
        baseline.append(elapsed)
        client.expect_queued(items, "sessions")
        session_status.extend(client.status_seconds(f"/sessions/{sessions[len(sessions) // 2]}"))
        client.cancel_runs(runs)
        purged += client.purge()

    try:
        warmup = _prompts(WARMUP_ITEMS, -1)
        _, batch_id = client.batch(warmup)
        client.cancel_batch(batch_id, WARMUP_ITEMS)
        client.cancel_runs(client.sessions(warmup)[2])
        client.purge()
        for i in range(rounds):
            steps = (ccq_once, baseline_once) if i % 2 == 0 else (baseline_once, ccq_once)
            for step in steps:
                client.vacuum_analyze()
                step(i)
            progress(
                f"submit {items} prompts, round {i + 1}/{rounds}: batch {ccq[-1]:.3f} s, "
                f"sessions {baseline[-1]:.3f} s"
            )
        left = client.queued()
        if left:
            raise BenchError(f"{left} tasks still queued after the last purge")
    finally:
        client.close()
    return Comparison(
        key=f"submit_{items}",
        title=f"submit, {items} prompts",
        baseline_name=f"{items} x POST /sessions, one keep-alive connection",
        ccq=Summary.of(ccq),
        baseline=Summary.of(baseline),
        details={
            "items": items,
            "rounds": rounds,
            "ccq_seconds": ccq,
            "baseline_seconds": baseline,
            "ccq_ms_per_item": round(percentile(ccq, 50) / items * 1000, 3),
            "baseline_ms_per_item": round(percentile(baseline, 50) / items * 1000, 3),
            # The API's processes' CPU during each sample: its own cost, apart from
            # PostgreSQL's and Redis's.
            "ccq_api_cpu_seconds": [round(x, 2) for x in ccq_cpu],
            "baseline_api_cpu_seconds": [round(x, 2) for x in baseline_cpu],
            "baseline_connections_opened": connections,
            # Tasks in the queues at the 201s: the batch's first window, a task a session.
            "ccq_tasks_queued": batch_tasks,
            "baseline_tasks_queued": items,
            "tasks_purged": purged,
            # Every sample's tasks (and each batch cancel's close_batch), purged.
            "tasks_left": left,
            "status_calls": len(batch_status),
            "batch_status_ms_p50": _median_ms(batch_status),
            "session_status_ms_p50": _median_ms(session_status),
            "batch_status_ms": [round(x * 1000, 2) for x in batch_status],
            "session_status_ms": [round(x * 1000, 2) for x in session_status],
        },
    )
