"""The upstream gate: the stream bound, the waiting bounds, rate-limit pauses and the probe.

Real asyncio, no pytest-asyncio: each test is ``asyncio.run`` of a coroutine. Time is a
fake clock that only the test moves, so nothing ends a wait or a pause until the test says
so; the gate's timers, set from that clock, then look at it again within a few hundredths
of a second of real time (pauses and timeouts here are 0.05 fake seconds). No test asserts
how long anything took; every real wait is bounded by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gateway.upstream_gate import GateFull, GateTimeout, Slot, UpstreamGate

BOUND = 5.0  # real seconds any awaited step may take before the test fails
SHORT = 0.05  # fake seconds: pauses and timeouts the tests let run out


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), BOUND * 4))


def make_gate(
    clock: FakeClock,
    *,
    max_streams: int = 1,
    max_waiting: int = 100,
    wait_timeout: float = 600.0,
    default_retry_after: float = SHORT,
) -> UpstreamGate:
    return UpstreamGate(max_streams, max_waiting, wait_timeout, default_retry_after, clock=clock)


async def settle() -> None:
    """Let every ready task run until it blocks again (no real time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


class Caller:
    """A model call in its own task: enters the gate, stays inside until told to leave."""

    def __init__(self, gate: UpstreamGate) -> None:
        self.waits: list[tuple[str, float | None]] = []
        self.inside = asyncio.Event()
        self.leave = asyncio.Event()
        self.slot: Slot | None = None
        self.task = asyncio.create_task(self._run(gate))

    def _on_wait(self, reason: str, until: float | None) -> None:
        self.waits.append((reason, until))

    async def _run(self, gate: UpstreamGate) -> None:
        async with gate.slot(on_wait=self._on_wait) as slot:
            self.slot = slot
            self.inside.set()
            await self.leave.wait()

    @property
    def held(self) -> Slot:
        assert self.slot is not None
        assert self.slot.held
        return self.slot

    async def enter(self) -> None:
        await asyncio.wait_for(self.inside.wait(), BOUND)

    async def exit(self) -> None:
        self.leave.set()
        await asyncio.wait_for(self.task, BOUND)

    async def cancel(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, BOUND)


def test_a_free_gate_lets_a_call_through_without_waiting() -> None:
    async def test() -> None:
        gate = make_gate(FakeClock())
        waits: list[tuple[str, float | None]] = []
        async with gate.slot(on_wait=lambda *w: waits.append(w)) as slot:
            assert slot.held
            assert not slot.is_probe
            assert gate.metrics()["streams_open"] == 1
        assert waits == []
        assert gate.metrics() == {
            "streams_open": 0,
            "waiting": 0,
            "waits_total": 0,
            "rate_limit_pauses_total": 0,
            "paused_seconds_remaining": 0.0,
            "half_open": 0,
            "refused_full_total": 0,
            "timed_out_total": 0,
        }

    run(test)


def test_past_the_stream_bound_a_call_waits_for_one_to_leave_first_come_first_served() -> None:
    async def test() -> None:
        gate = make_gate(FakeClock(), max_streams=2)
        first, second = Caller(gate), Caller(gate)
        await first.enter()
        await second.enter()
        late = [Caller(gate) for _ in range(3)]
        await settle()
        assert [c.inside.is_set() for c in late] == [False, False, False]
        assert [c.waits for c in late] == [[("concurrency", None)]] * 3
        assert gate.metrics()["waiting"] == 3
        assert gate.metrics()["streams_open"] == 2

        await second.exit()
        await late[0].enter()
        await settle()
        assert [c.inside.is_set() for c in late] == [True, False, False]
        assert gate.metrics()["waiting"] == 2  # the one served no longer counts
        await first.exit()
        await late[1].enter()
        await late[0].exit()
        await late[2].enter()
        assert [c.waits for c in late] == [[("concurrency", None)]] * 3  # once each
        assert gate.metrics()["waits_total"] == 3
        assert gate.metrics()["waiting"] == 0
        assert first.waits == second.waits == []
        for caller in late[1:]:
            await caller.exit()
        assert gate.metrics()["streams_open"] == 0

    run(test)


def test_a_call_past_max_waiting_is_refused_at_once() -> None:
    async def test() -> None:
        gate = make_gate(FakeClock(), max_waiting=1)
        holder, waiter = Caller(gate), Caller(gate)
        await settle()
        waits: list[tuple[str, float | None]] = []
        with pytest.raises(GateFull):
            async with gate.slot(on_wait=lambda *w: waits.append(w)):
                pytest.fail("entered a full gate")
        assert waits == []  # it never waited
        metrics = gate.metrics()
        assert (metrics["waiting"], metrics["refused_full_total"]) == (1, 1)
        await holder.exit()
        await waiter.enter()
        await waiter.exit()

    run(test)


def test_with_max_waiting_zero_no_call_waits() -> None:
    async def test() -> None:
        gate = make_gate(FakeClock(), max_waiting=0)
        async with gate.slot():
            with pytest.raises(GateFull):
                await gate.slot().__aenter__()
        assert gate.metrics()["refused_full_total"] == 1

    run(test)


def test_a_call_that_waits_too_long_times_out_and_the_counts_are_restored() -> None:
    async def test() -> None:
        clock = FakeClock()
        gate = make_gate(clock, wait_timeout=SHORT)
        holder, waiter = Caller(gate), Caller(gate)
        await settle()
        assert gate.metrics()["waiting"] == 1
        clock.advance(SHORT)
        with pytest.raises(GateTimeout):
            await asyncio.wait_for(waiter.task, BOUND)
        metrics = gate.metrics()
        assert (metrics["waiting"], metrics["timed_out_total"]) == (0, 1)
        assert metrics["streams_open"] == 1  # the holder's
        await holder.exit()
        assert gate.metrics()["streams_open"] == 0
        async with gate.slot():  # the gate is free again
            pass

    run(test)


def test_a_waiter_cancelled_leaves_the_queue_and_the_others_keep_their_turn() -> None:
    async def test() -> None:
        gate = make_gate(FakeClock())
        holder = Caller(gate)
        a, b, c = Caller(gate), Caller(gate), Caller(gate)
        await settle()
        assert gate.metrics()["waiting"] == 3
        await b.cancel()
        assert gate.metrics()["waiting"] == 2
        await holder.exit()
        await a.enter()
        assert not c.inside.is_set()
        await a.exit()
        await c.enter()
        await c.exit()
        assert gate.metrics()["streams_open"] == gate.metrics()["waiting"] == 0

    run(test)


def test_a_waiter_cancelled_after_its_grant_gives_the_slot_on() -> None:
    async def test() -> None:
        gate = make_gate(FakeClock())
        async with gate.slot():
            a, b = Caller(gate), Caller(gate)
            await settle()
        # Leaving granted a's slot synchronously; a is cancelled before it can run.
        await a.cancel()
        assert a.slot is None  # never got inside
        await b.enter()
        metrics = gate.metrics()
        assert (metrics["streams_open"], metrics["waiting"]) == (1, 0)
        await b.exit()
        assert gate.metrics()["streams_open"] == 0

    run(test)


def test_a_rate_limit_pauses_new_calls_then_one_probe_goes_and_ok_releases_everyone() -> None:
    async def test() -> None:
        clock = FakeClock()
        gate = make_gate(clock, max_streams=10)
        limited = Caller(gate)
        await limited.enter()
        assert limited.held.rate_limited(429, "0.05") == pytest.approx(SHORT)
        metrics = gate.metrics()
        assert metrics["rate_limit_pauses_total"] == 1
        assert metrics["paused_seconds_remaining"] == pytest.approx(SHORT)
        await limited.exit()

        callers = [Caller(gate) for _ in range(3)]
        await settle()
        assert [c.waits for c in callers] == [[("rate_limited", SHORT)]] * 3
        assert gate.metrics()["waiting"] == 3

        clock.advance(SHORT)  # the pause is over: only the first waiter goes
        probe = callers[0]
        await probe.enter()
        await settle()
        assert probe.held.is_probe
        assert [c.inside.is_set() for c in callers[1:]] == [False, False]
        metrics = gate.metrics()
        assert (metrics["waiting"], metrics["half_open"]) == (2, 1)
        assert metrics["paused_seconds_remaining"] == 0.0

        probe.held.upstream_ok()
        for caller in callers[1:]:
            await caller.enter()
        assert not callers[1].held.is_probe
        metrics = gate.metrics()
        assert (metrics["waiting"], metrics["half_open"], metrics["streams_open"]) == (0, 0, 3)
        for caller in callers:
            await caller.exit()

    run(test)


def test_a_probe_limited_again_starts_a_new_pause_and_retries_first() -> None:
    async def test() -> None:
        clock = FakeClock()
        gate = make_gate(clock, max_streams=10)
        async with gate.slot() as slot:
            slot.rate_limited(529, None)  # no retry-after: the default pause
        probe, other = Caller(gate), Caller(gate)
        await settle()
        clock.advance(SHORT)
        await probe.enter()

        retry = asyncio.create_task(probe.held.retry_after_limit(429, None))
        await settle()
        assert not retry.done()
        metrics = gate.metrics()
        assert metrics["rate_limit_pauses_total"] == 2
        assert metrics["paused_seconds_remaining"] == pytest.approx(SHORT)
        assert (metrics["waiting"], metrics["streams_open"]) == (2, 0)
        assert probe.waits == [("rate_limited", SHORT)]  # still once

        clock.advance(SHORT)
        await asyncio.wait_for(retry, BOUND)  # the retrying call goes first, as the probe
        await settle()
        assert probe.held.is_probe
        assert not other.inside.is_set()
        probe.held.upstream_ok()
        await other.enter()
        await probe.exit()
        await other.exit()

    run(test)


@pytest.mark.parametrize("how", ["cancelled", "left without an answer"])
def test_a_probe_that_goes_away_hands_the_probe_to_the_next_waiter(how: str) -> None:
    async def test() -> None:
        clock = FakeClock()
        gate = make_gate(clock, max_streams=10)
        async with gate.slot() as slot:
            slot.rate_limited(429, "0.05")
        first, second, third = Caller(gate), Caller(gate), Caller(gate)
        await settle()
        clock.advance(SHORT)
        await first.enter()
        assert first.held.is_probe
        if how == "cancelled":
            await first.cancel()
        else:
            await first.exit()
        await second.enter()
        await settle()
        assert second.held.is_probe
        assert not third.inside.is_set()
        metrics = gate.metrics()
        assert (metrics["streams_open"], metrics["waiting"], metrics["half_open"]) == (1, 1, 1)
        second.held.upstream_ok()
        await third.enter()
        await second.exit()
        await third.exit()

    run(test)


def test_a_limit_during_a_pause_extends_it_and_ok_from_a_non_probe_ends_nothing() -> None:
    async def test() -> None:
        clock = FakeClock()
        gate = make_gate(clock, max_streams=10)
        a, b = Caller(gate), Caller(gate)
        await a.enter()
        await b.enter()
        assert a.held.rate_limited(429, "0.05") == pytest.approx(SHORT)
        assert b.held.rate_limited(429, "0.1") == pytest.approx(0.1)
        assert a.held.rate_limited(529, "0") == pytest.approx(0.1)  # never shortened
        assert gate.metrics()["rate_limit_pauses_total"] == 1
        b.held.upstream_ok()  # an old call's answer: not the probe's
        waiter = Caller(gate)
        await settle()
        assert waiter.waits == [("rate_limited", 0.1)]
        clock.advance(SHORT)
        await settle()
        assert gate.metrics()["paused_seconds_remaining"] == pytest.approx(SHORT)
        assert not waiter.inside.is_set()
        clock.advance(SHORT)
        await waiter.enter()
        for caller in (a, b, waiter):
            await caller.exit()
        with pytest.raises(ValueError, match="429"):
            gate.slot().rate_limited(500, None)

    run(test)


def test_a_pause_longer_than_the_wait_timeout_times_the_call_out() -> None:
    async def test() -> None:
        clock = FakeClock()
        gate = make_gate(clock, wait_timeout=SHORT)
        async with gate.slot() as slot:
            slot.rate_limited(429, "3600")
        waiter = Caller(gate)
        await settle()
        assert waiter.waits == [("rate_limited", 3600.0)]
        clock.advance(SHORT)
        with pytest.raises(GateTimeout):
            await asyncio.wait_for(waiter.task, BOUND)
        metrics = gate.metrics()
        assert (metrics["waiting"], metrics["timed_out_total"]) == (0, 1)
        assert metrics["paused_seconds_remaining"] == pytest.approx(3600 - SHORT)

    run(test)


def test_the_wait_timeout_counts_all_of_a_calls_waits() -> None:
    async def test() -> None:
        clock = FakeClock()
        gate = make_gate(clock, max_streams=1, wait_timeout=0.1)
        holder, call = Caller(gate), Caller(gate)
        await settle()
        clock.advance(0.06)  # waits 0.06 for a stream
        await holder.exit()
        await call.enter()
        assert call.waits == [("concurrency", None)]

        retry = asyncio.create_task(call.held.retry_after_limit(429, "3600"))
        await settle()
        clock.advance(0.05)  # 0.11 in all
        with pytest.raises(GateTimeout):
            await asyncio.wait_for(retry, BOUND)
        assert call.slot is not None
        assert not call.slot.held
        assert call.waits == [("concurrency", None)]  # on_wait once per call
        await call.exit()  # leaving a slot no longer held changes nothing
        metrics = gate.metrics()
        assert (metrics["streams_open"], metrics["waiting"], metrics["waits_total"]) == (0, 0, 2)

    run(test)


def test_a_call_first_held_up_by_a_rate_limit_is_told_so_once() -> None:
    async def test() -> None:
        clock = FakeClock()
        gate = make_gate(clock, max_streams=10)
        call = Caller(gate)
        await call.enter()
        assert call.waits == []
        retry = asyncio.create_task(call.held.retry_after_limit(429, "0.05"))
        await settle()
        assert call.waits == [("rate_limited", SHORT)]
        clock.advance(SHORT)
        await asyncio.wait_for(retry, BOUND)
        assert call.held.is_probe
        call.held.upstream_ok()
        assert gate.metrics()["half_open"] == 0
        await call.exit()

    run(test)


def test_a_retry_after_date_in_the_past_lets_one_probe_go_at_once() -> None:
    async def test() -> None:
        gate = make_gate(FakeClock(), max_streams=10)
        a = Caller(gate)
        await a.enter()
        a.held.rate_limited(429, "Wed, 21 Oct 2015 07:28:00 GMT")
        b, c = Caller(gate), Caller(gate)
        await b.enter()
        await settle()
        assert b.held.is_probe
        assert b.waits == []
        assert c.waits == [("rate_limited", None)]  # waits for the probe's answer
        b.held.upstream_ok()
        await c.enter()
        for caller in (a, b, c):
            await caller.exit()

    run(test)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_streams"):
        UpstreamGate(0, 1, 1.0, 1.0)
    with pytest.raises(ValueError, match="max_waiting"):
        UpstreamGate(1, -1, 1.0, 1.0)
    with pytest.raises(ValueError, match="wait_timeout"):
        UpstreamGate(1, 1, 0.0, 1.0)
