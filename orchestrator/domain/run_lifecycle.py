"""What a run announces as it goes, and who listens.

The executor claims, runs and records a run; it does not know that batches, fan-outs or
webhooks exist. It announces three moments and the listeners registered for them react:

- ``started``: the run was claimed and committed as running;
- ``recording``: inside the transaction that records its outcome, before the commit
  (for what must be ordered before anything the commit makes visible, such as a batch
  item's end event before the batch's own end);
- ``finished``: after that commit, or when a redelivered task finds the run already
  final (so a worker that died between the commit and the announcement loses nothing).

The worker registers its listeners in one place (``tasks/listeners.py``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session as DbSession

from orchestrator.db.models import Run
from orchestrator.db.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStarted:
    run_id: uuid.UUID
    session_id: uuid.UUID
    batch_id: uuid.UUID | None


@dataclass(frozen=True)
class RunRecording:
    """The run's row with its outcome set, in the recording transaction (``db``)."""

    db: DbSession
    run: Run
    batch_id: uuid.UUID | None


@dataclass(frozen=True)
class RunFinished:
    run_id: uuid.UUID
    status: str


@dataclass
class RunListeners:
    """The listeners of each moment, called in the order they were added."""

    started: list[Callable[[RunStarted, UnitOfWork], None]] = field(default_factory=list)
    recording: list[Callable[[RunRecording], None]] = field(default_factory=list)
    finished: list[Callable[[RunFinished, UnitOfWork], None]] = field(default_factory=list)

    def announce_started(self, event: RunStarted, uow: UnitOfWork) -> None:
        """A listener's failure is logged, never the run's: it is already running."""
        for listener in self.started:
            _call_logged(listener, event, uow)

    def announce_recording(self, event: RunRecording) -> None:
        """Part of the recording transaction: a listener that raises rolls it back."""
        for listener in self.recording:
            listener(event)

    def announce_finished(self, event: RunFinished, uow: UnitOfWork) -> None:
        """The run is recorded: a listener's failure is logged and the others still run
        (beat's sweeper completes what a batch listener could not)."""
        for listener in self.finished:
            _call_logged(listener, event, uow)


def _call_logged(
    listener: Callable[[Any, UnitOfWork], None], event: object, uow: UnitOfWork
) -> None:
    """Each listener works in the task's unit of work and commits what it changes; one
    that fails leaves it rolled back for the next."""
    try:
        listener(event, uow)
    except Exception:
        uow.rollback()
        log.exception("run listener %s failed", getattr(listener, "__qualname__", listener))
