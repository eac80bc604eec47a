"""(3) Event delivery: from the worker's append until a client has the event, with 1,
100 and 500 clients of one session at once.

A producer process appends events to the session's Redis stream exactly as the worker
does (``orchestrator.streams.events.publish``), each stamped with the wall-clock time of its
append; every client notes when each event reached it. ccq's clients are WebSocket
tails of the session through the API (one process, as `ccq api` runs by default); the
baseline's are raw ``XREAD BLOCK`` readers of the same stream key: Redis with nothing in
between. Both sets of clients run in this process on the same CPUs as the API and
Redis, so the baseline carries the same client-side cost and the ratio is ccq's own.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import websockets
from websockets.asyncio.client import ClientConnection

from api.extensions import TAIL_BLOCK_SECONDS
from bench import BenchError
from bench.machine import process_tree_cpu_seconds
from bench.report import Comparison
from bench.stack import Stack
from bench.stats import Summary
from orchestrator.streams.events import publish, stream_key

TICK = "bench.tick"  # measured
WARMUP = "bench.warmup"  # first through every path, not measured
DONE = "bench.done"  # tells each client it has everything
DONE_MARK = f'"type":"{DONE}"'  # found in a wire event without parsing it
CONNECT_CONCURRENCY = 50
CONNECT_TIMEOUT = 60.0
# After every client is in place: time for each to be parked in its blocking read.
SETTLE_SECONDS = 1.0
# After the producer's last event: how long clients may take to catch up.
DRAIN_TIMEOUT = 60.0

Arrivals = list[tuple[float, str | bytes]]  # (wall-clock arrival, the raw event)
# Reads one opened client's events into its arrivals until the producer's last one.
Reader = Callable[[Any, Arrivals], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Plan:
    events: int = 200
    rate: float = 10.0  # per second
    warmup: int = 10

    @property
    def seconds(self) -> float:
        return (self.warmup + self.events) / self.rate


@dataclass(frozen=True)
class Phase:
    """What K clients received: every measured latency and how many missed events."""

    latencies: list[float]
    clients: int
    incomplete: int  # clients (connected or not) that did not receive every tick
    connect_seconds: float
    client_cpu_seconds: float  # this process, while the events flowed
    api_cpu_seconds: float | None = None  # the API's processes, likewise (ccq only)


def produce(redis_url: str, session_id: str, plan: Plan) -> None:
    """Append the plan's events at its rate, each stamped just before its XADD (runs in a
    process of its own, so the clients' work never delays an append or its stamp)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    client = redis.Redis.from_url(redis_url)
    session, run = uuid.UUID(session_id), uuid.uuid4()
    total = plan.warmup + plan.events
    start = time.monotonic()
    for seq in range(total):
        delay = start + seq / plan.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        type_ = WARMUP if seq < plan.warmup else TICK
        publish(client, session, run, seq, type_, {"t": time.time()})
    publish(client, session, run, total, DONE, {"t": time.time()})
    client.close()


def latencies(arrivals: Arrivals) -> list[float]:
    """Seconds from append to arrival of each measured event one client received."""
    out = []
    for arrived, raw in arrivals:
        event: dict[str, Any] = json.loads(raw)
        if event["type"] == TICK:
            out.append(arrived - event["data"]["t"])
    return out


async def _measure(
    stack: Stack,
    session_id: str,
    plan: Plan,
    opened: Sequence[Any],
    read: Reader,
) -> tuple[list[Arrivals], float, float | None]:
    """Run ``read`` for every opened client while the producer appends: what each got,
    and the CPU seconds this process and the API used meanwhile."""
    received: list[Arrivals] = [[] for _ in opened]
    api_pid = stack.api.process.pid
    client_cpu, api_cpu = time.process_time(), process_tree_cpu_seconds(api_pid)
    readers = [asyncio.create_task(read(c, a)) for c, a in zip(opened, received, strict=True)]
    await asyncio.sleep(SETTLE_SECONDS)
    producer = multiprocessing.get_context("spawn").Process(
        target=produce, args=(stack.settings.redis_url, session_id, plan), daemon=True
    )
    producer.start()
    await asyncio.to_thread(producer.join, plan.seconds + 60)
    if producer.exitcode != 0:
        producer.kill()
        raise BenchError(f"the producer failed (exit code {producer.exitcode})")
    _, late = await asyncio.wait(readers, timeout=DRAIN_TIMEOUT)
    for task in late:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)  # a reader's error = missed events
    client_cpu = time.process_time() - client_cpu
    api_after = process_tree_cpu_seconds(api_pid)
    api_cpu = None if api_cpu is None or api_after is None else api_after - api_cpu
    return received, client_cpu, api_cpu


def _phase(
    k: int,
    plan: Plan,
    measured: tuple[list[Arrivals], float, float | None],
    connect_seconds: float,
) -> Phase:
    received, client_cpu, api_cpu = measured
    per_client = [latencies(a) for a in received]
    complete = sum(1 for lat in per_client if len(lat) == plan.events)
    return Phase(
        latencies=[x for lat in per_client for x in lat],
        clients=k,
        incomplete=k - complete,
        connect_seconds=connect_seconds,
        client_cpu_seconds=client_cpu,
        api_cpu_seconds=api_cpu,
    )


# --- ccq: WebSocket tails through the API -------------------------------------------------


async def _open_tail(stack: Stack, path: str, limit: asyncio.Semaphore) -> ClientConnection:
    async with limit:
        ws = await websockets.connect(
            stack.ws_url(path),
            additional_headers=stack.headers,
            proxy=None,
            compression=None,
            max_queue=None,
            open_timeout=CONNECT_TIMEOUT,
        )
        # The opening message: the server has set the tail's cursor, it is live.
        first = json.loads(await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT))
        if "tail" not in first:
            await ws.close()
            raise BenchError(f"unexpected first message: {str(first)[:200]}")
        return ws


async def _read_tail(ws: ClientConnection, arrivals: Arrivals) -> None:
    try:
        async for message in ws:
            arrivals.append((time.time(), message))
            if isinstance(message, str) and DONE_MARK in message:
                return
    finally:
        await ws.close()


async def _ccq_phase(stack: Stack, session_id: str, k: int, plan: Plan) -> Phase:
    started = time.perf_counter()
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    path = f"/api/v1/sessions/{session_id}/stream"
    attempts = await asyncio.gather(
        *(_open_tail(stack, path, limit) for _ in range(k)), return_exceptions=True
    )
    opened = [ws for ws in attempts if isinstance(ws, ClientConnection)]
    connect_seconds = time.perf_counter() - started
    if not opened:
        raise BenchError(f"no tail could connect: {attempts[0]!r}")
    measured = await _measure(stack, session_id, plan, opened, _read_tail)
    return _phase(k, plan, measured, connect_seconds)


# --- the baseline: raw XREAD BLOCK readers of the same stream ----------------------------


async def _open_reader(url: str, limit: asyncio.Semaphore) -> redis.asyncio.Redis:
    async with limit:
        client = redis.asyncio.Redis.from_url(url, single_connection_client=True)
        await client.ping()
        return client


def _reader_of(key: str, start: str) -> Reader:
    async def read(client: redis.asyncio.Redis, arrivals: Arrivals) -> None:
        last: str | bytes = start
        try:
            while True:
                reply: Any = await client.xread({key: last}, count=200, block=5000)
                now = time.time()
                for _key, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        arrivals.append((now, fields[b"e"]))
                        if fields.get(b"t") == DONE.encode():
                            return
        finally:
            await client.aclose()

    return read


async def _raw_phase(stack: Stack, session_id: str, k: int, plan: Plan) -> Phase:
    key = stream_key(session_id)
    newest: Any = stack.redis.xrevrange(key, count=1)
    start = newest[0][0].decode() if newest else "0-0"  # live, as a ccq tail starts
    started = time.perf_counter()
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    url = stack.settings.redis_url
    attempts = await asyncio.gather(
        *(_open_reader(url, limit) for _ in range(k)), return_exceptions=True
    )
    opened = [c for c in attempts if isinstance(c, redis.asyncio.Redis)]
    connect_seconds = time.perf_counter() - started
    if not opened:
        raise BenchError(f"no reader could connect: {attempts[0]!r}")
    measured = await _measure(stack, session_id, plan, opened, _reader_of(key, start))
    return _phase(k, plan, measured, connect_seconds)


# --- the comparison ------------------------------------------------------------------------


def _summary(phase: Phase, who: str) -> Summary:
    if not phase.latencies:
        raise BenchError(f"{who}: no client received any event")
    return Summary.of(phase.latencies)


def _details(k: int, plan: Plan, ccq: Phase, raw: Phase) -> dict[str, Any]:
    deliveries = k * (plan.warmup + plan.events + 1)
    api_cpu = ccq.api_cpu_seconds
    return {
        "tails": k,
        "events": plan.events,
        "rate_per_second": plan.rate,
        "ccq_incomplete_tails": ccq.incomplete,
        "baseline_incomplete_readers": raw.incomplete,
        "ccq_connect_seconds": round(ccq.connect_seconds, 3),
        "baseline_connect_seconds": round(raw.connect_seconds, 3),
        # The API's cost per event per tail: what bounds tails x events/s per process.
        "api_cpu_seconds": None if api_cpu is None else round(api_cpu, 2),
        "api_cpu_us_per_delivery": None if api_cpu is None else round(api_cpu / deliveries * 1e6),
        "ccq_client_cpu_seconds": round(ccq.client_cpu_seconds, 2),
        "baseline_client_cpu_seconds": round(raw.client_cpu_seconds, 2),
    }


def delivery(
    stack: Stack, tails: Sequence[int], plan: Plan, progress: Callable[[str], None]
) -> list[Comparison]:
    session_id = str(stack.post("/api/v1/sessions", {})["session"]["id"])
    comparisons = []
    for k in tails:
        ccq = asyncio.run(_ccq_phase(stack, session_id, k, plan))
        # The API notices a departed client after its current blocking read: let it.
        time.sleep(TAIL_BLOCK_SECONDS + 1)
        raw = asyncio.run(_raw_phase(stack, session_id, k, plan))
        comparison = Comparison(
            key=f"delivery_{k}",
            title=f"delivery, {k} tail{'s' if k != 1 else ''}",
            baseline_name=f"{k} raw XREAD BLOCK reader{'s' if k != 1 else ''}, same stream",
            ccq=_summary(ccq, "ccq"),
            baseline=_summary(raw, "baseline"),
            show_p99=True,
            details=_details(k, plan, ccq, raw),
        )
        comparisons.append(comparison)
        progress(
            f"delivery, {k} tails: p50 ccq {comparison.ccq.p50 * 1000:.2f} ms, "
            f"raw {comparison.baseline.p50 * 1000:.2f} ms; p99 ccq "
            f"{comparison.ccq.p99 * 1000:.2f} ms, raw {comparison.baseline.p99 * 1000:.2f} ms; "
            f"incomplete: ccq {ccq.incomplete}, raw {raw.incomplete}; "
            f"API CPU {comparison.details['api_cpu_seconds']} s"
        )
    return comparisons
