"""The run announcements' rules, on plain listeners: order, isolation, and what a failure
does at each moment."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from orchestrator.domain.run_lifecycle import RunFinished, RunListeners, RunRecording, RunStarted


class FakeUnit:
    """Only what the announcer touches: a rollback after a failed listener."""

    def __init__(self) -> None:
        self.rollbacks = 0

    def rollback(self) -> None:
        self.rollbacks += 1


RUN = uuid.uuid4()


def test_finished_listeners_run_in_order_and_a_failure_stops_none_of_the_others() -> None:
    heard: list[str] = []

    def first(event: RunFinished, _uow: Any) -> None:
        heard.append(f"first {event.status}")
        raise RuntimeError("the batch listener broke")

    def second(event: RunFinished, _uow: Any) -> None:
        heard.append(f"second {event.status}")

    unit = FakeUnit()
    RunListeners(finished=[first, second]).announce_finished(
        RunFinished(RUN, "succeeded"),
        unit,  # type: ignore[arg-type]
    )
    assert heard == ["first succeeded", "second succeeded"]
    assert unit.rollbacks == 1  # the failed listener's half-done work is not left behind


def test_a_started_listener_failing_does_not_fail_the_run() -> None:
    heard: list[uuid.UUID | None] = []

    def broken(_event: RunStarted, _uow: Any) -> None:
        raise ConnectionError("redis went away")

    def batch(event: RunStarted, _uow: Any) -> None:
        heard.append(event.batch_id)

    batch_id = uuid.uuid4()
    RunListeners(started=[broken, batch]).announce_started(
        RunStarted(RUN, uuid.uuid4(), batch_id),
        FakeUnit(),  # type: ignore[arg-type]
    )
    assert heard == [batch_id]


def test_a_recording_listener_failing_fails_the_recording_transaction() -> None:
    def broken(_event: RunRecording) -> None:
        raise ValueError("postgresql refused the item's row")

    with pytest.raises(ValueError, match="refused"):
        RunListeners(recording=[broken]).announce_recording(
            RunRecording(db=None, run=None, batch_id=None)  # type: ignore[arg-type]
        )


def test_nobody_listening_is_fine() -> None:
    listeners = RunListeners()
    listeners.announce_finished(RunFinished(RUN, "failed"), FakeUnit())  # type: ignore[arg-type]
    assert listeners.finished == []
