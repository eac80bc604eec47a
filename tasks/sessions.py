"""Session housekeeping tasks: stop, delete, and the reaper beat runs."""

from __future__ import annotations

import uuid

from celery import shared_task

from tasks import names
from tasks.base import CcqTask


@shared_task(base=CcqTask, bind=True, name=names.STOP_SESSION)
def stop_session(self: CcqTask, session_id: str) -> dict[str, object]:
    """Remove a stopped session's container (files stay; the next prompt resumes in a
    new container)."""
    removed = self.context.janitor.remove_container(uuid.UUID(session_id))
    return {"session_id": session_id, "container_removed": removed}


@shared_task(base=CcqTask, bind=True, name=names.DELETE_SESSION)
def delete_session(
    self: CcqTask,
    session_id: str,
    lineage: list[str] | None = None,
    descendants: list[str] | None = None,
) -> dict[str, object]:
    """Remove a deleted session's container and files, and its descendants'."""
    self.context.janitor.delete_session(
        uuid.UUID(session_id),
        [uuid.UUID(i) for i in lineage or ()],
        [uuid.UUID(i) for i in descendants or ()],
    )
    return {"session_id": session_id, "deleted": True}


# Beat sends it again soon: an outage is not retried on top of that.
@shared_task(base=CcqTask, bind=True, name=names.REAP_CONTAINERS, autoretry_for=())
def reap_containers(self: CcqTask) -> dict[str, int]:
    """Remove containers no run will use soon: idle past CCQ_IDLE_TIMEOUT, not running,
    of stopped sessions and batch items, or whose session is gone."""
    return self.context.janitor.reap()
