"""Session housekeeping tasks: stop, delete, and the reaper beat runs."""

from __future__ import annotations

import uuid

from celery import shared_task

from tasks.context import worker_context


@shared_task(name="ccq.stop_session", acks_late=True)
def stop_session(session_id: str) -> dict[str, object]:
    """Remove a stopped session's container (files stay; the next prompt resumes in a
    new container)."""
    removed = worker_context().janitor.remove_container(uuid.UUID(session_id))
    return {"session_id": session_id, "container_removed": removed}


@shared_task(name="ccq.delete_session", acks_late=True)
def delete_session(
    session_id: str, lineage: list[str] | None = None, descendants: list[str] | None = None
) -> dict[str, object]:
    """Remove a deleted session's container and files, and its descendants'."""
    worker_context().janitor.delete_session(
        uuid.UUID(session_id),
        [uuid.UUID(i) for i in lineage or ()],
        [uuid.UUID(i) for i in descendants or ()],
    )
    return {"session_id": session_id, "deleted": True}


@shared_task(name="ccq.reap_containers", acks_late=True)
def reap_containers() -> dict[str, int]:
    """Remove containers no run will use soon: idle past CCQ_IDLE_TIMEOUT, not running,
    of stopped sessions and batch items, or whose session is gone."""
    return worker_context().janitor.reap()
