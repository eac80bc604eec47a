"""Beat's reconciler task (see ``orchestrator.runtime.reconciler``)."""

from __future__ import annotations

from celery import shared_task

from orchestrator.db.unit_of_work import UnitOfWork
from tasks import names
from tasks.base import CcqTask


# Beat sends it again within seconds: an outage is not retried on top of that, and a
# pass that outlives the next one's arrival is not run twice at once by design (each
# settlement takes the session's lock).
@shared_task(
    base=CcqTask, bind=True, name=names.RECONCILE, autoretry_for=(), expires=60, acks_late=False
)
def reconcile(self: CcqTask) -> dict[str, int]:
    """Settle runs lost with their worker; dispatch again queued runs whose task was lost."""
    context = self.context
    with UnitOfWork(context.session_factory) as uow:
        return context.reconciler.reconcile(uow)
