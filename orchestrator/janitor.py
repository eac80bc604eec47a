"""Container and file housekeeping on a worker host: stop, delete, reap idle and orphans."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from orchestrator.containers import LABEL_SESSION, SessionDirs
from orchestrator.host import HostResources
from orchestrator.locks import is_locked
from orchestrator.models import Session, SessionStatus

log = logging.getLogger(__name__)


class Janitor:
    def __init__(self, host: HostResources) -> None:
        self.settings = host.settings
        self.session_factory = host.session_factory
        self.redis = host.redis
        self.runtime = host.runtime

    def stop_container(self, session_id: uuid.UUID) -> bool:
        """Stop the session's container unless a run is executing in it right now.

        A running run was signalled to cancel; its executor ends it, and the reaper
        stops the container afterwards.
        """
        if is_locked(self.redis, session_id):
            return False
        return self.runtime.stop(str(session_id))

    def delete_session(
        self,
        session_id: uuid.UUID,
        lineage: Sequence[uuid.UUID] = (),
        descendants: Sequence[uuid.UUID] = (),
    ) -> None:
        """Remove the containers and every file of a deleted session and its descendants.

        Args:
            lineage: root first, the session last (a root session: empty or itself);
                children's workspaces lie inside their parent's.
            descendants: deleted with it; their workspaces lie inside its own.
        """
        path = [str(i) for i in lineage] or [str(session_id)]
        shutil.rmtree(
            SessionDirs.for_lineage(self.settings.data_dir, path).workspace, ignore_errors=True
        )
        for member in (session_id, *descendants):
            self.runtime.remove(str(member))
            # Each session's own directory: its Claude home (and a root's workspace).
            shutil.rmtree(self.settings.data_dir / "sessions" / str(member), ignore_errors=True)

    def reap(self, now: datetime | None = None) -> dict[str, int]:
        """Stop containers idle past ``idle_timeout``; remove those with no session.

        Returns:
            ``{"stopped": n, "removed": m}``.
        """
        now = now or datetime.now(UTC)
        idle_before = now - timedelta(seconds=self.settings.idle_timeout)
        stopped = removed = 0
        containers = list(self.runtime.managed(self.settings.instance))
        ids = {c.labels.get(LABEL_SESSION, "") for c in containers}
        with self.session_factory() as db:
            known = {
                str(s.id): s for s in db.scalars(select(Session).where(Session.id.in_(_uuids(ids))))
            }
        for container in containers:
            session_id = container.labels.get(LABEL_SESSION, "")
            session = known.get(session_id)
            if session is None:
                container.remove(force=True)
                removed += 1
                log.info("removed container %s: no such session", container.name)
                continue
            if container.status != "running" or is_locked(self.redis, session.id):
                continue
            last_active = session.last_active_at or session.created_at
            if session.status != SessionStatus.RUNNING and last_active < idle_before:
                container.stop(timeout=5)
                stopped += 1
                log.info("stopped idle container of session %s", session_id)
        return {"stopped": stopped, "removed": removed}


def _uuids(values: set[str]) -> list[uuid.UUID]:
    result = []
    for value in values:
        try:
            result.append(uuid.UUID(value))
        except ValueError:
            continue
    return result
