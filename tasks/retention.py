"""Beat's retention task (see ``orchestrator.runtime.retention``)."""

from __future__ import annotations

from celery import shared_task

from orchestrator.runtime.retention import Retention
from tasks import names
from tasks.base import CcqTask


# Beat sends it again soon: an outage is not retried on top of that.
@shared_task(base=CcqTask, bind=True, name=names.ENFORCE_RETENTION, autoretry_for=())
def enforce_retention(self: CcqTask) -> dict[str, object]:
    """Delete a batch of each: old events, old stopped sessions, old sessions' files;
    measure stale workspaces."""
    context = self.context
    retention = Retention(context.settings, context.session_factory, context.redis, context.janitor)
    return retention.run_pass().to_json()
