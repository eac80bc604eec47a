"""The run task: hands the run's ID to this worker's executor, and waits its turn."""

from __future__ import annotations

import random
import uuid
from typing import Any

from celery import shared_task

from orchestrator.domain.admission import NoSlot
from orchestrator.runtime import reconciler
from orchestrator.runtime.executor import NotYourTurn, StillRunning
from tasks import names
from tasks.base import CcqTask

# How often a run whose turn has not come looks again; it holds no worker slot meanwhile.
TURN_RETRY_SECONDS = 1.0
# A run waiting for its owner's (or batch's) concurrency slot: longer, with jitter, so
# runs waiting for the same owner's slots do not all come back at once.
SLOT_RETRY_SECONDS = (2.0, 5.0)


# Results can be kept for a sender that waits on one (tests do); ccq's own sends ignore
# them (tasks.enqueue), and chords join on a list of their own.
@shared_task(base=CcqTask, bind=True, name=names.RUN_PROMPT, ignore_result=False)
def run_prompt(self: CcqTask, run_id: str) -> dict[str, Any]:
    """Execute one run of a session (idempotent: a redelivery never runs the CLI twice)."""
    reconciler.touch(self.context.redis, run_id)  # this run's task is alive
    try:
        return self.context.executor.execute(uuid.UUID(run_id))
    except NotYourTurn as exc:
        raise self.retry(countdown=TURN_RETRY_SECONDS, exc=exc) from None
    except StillRunning as exc:
        # Another delivery has it: look again once its lease and lock could have run out
        # (then it has finished, or it was lost and is settled here).
        raise self.retry(countdown=exc.retry_after, exc=exc) from None
    except NoSlot as exc:
        wait = random.uniform(*SLOT_RETRY_SECONDS)  # noqa: S311 - jitter, not a secret
        raise self.retry(countdown=wait, exc=exc) from None
