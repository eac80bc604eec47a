"""Beat's sweeper task (see ``orchestrator.domain.sweeper``)."""

from __future__ import annotations

from celery import shared_task

from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain.sweeper import Sweeper
from tasks import names
from tasks.base import CcqTask


# Beat sends it again within a minute: an outage is not retried on top of that.
@shared_task(base=CcqTask, bind=True, name=names.SWEEP, autoretry_for=())
def sweep(self: CcqTask) -> dict[str, int]:
    """Complete fan-outs whose chord was lost, move stalled batches on; purge expired
    session tokens."""
    context = self.context
    with UnitOfWork(context.session_factory) as uow:
        return Sweeper(context.fanouts, context.batches, context.enqueue).sweep(uow)
