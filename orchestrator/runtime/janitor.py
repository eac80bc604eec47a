"""Container and file housekeeping on a worker host: remove containers no run needs,
delete sessions' files, reap idle and orphaned containers.

A container is never reused once it stops: everything a session keeps lives in its host
directories (workspace and Claude home), and its next prompt runs in a new container over
them. So a container that will not serve the next prompt soon is removed, not stopped.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from orchestrator.db.models import Session, SessionStatus
from orchestrator.runtime.containers import SessionContainer, SessionDirs
from orchestrator.runtime.host import HostResources
from orchestrator.runtime.locks import SessionLock

log = logging.getLogger(__name__)


class Janitor:
    def __init__(self, host: HostResources) -> None:
        self.settings = host.settings
        self.session_factory = host.session_factory
        self.redis = host.redis
        self.runtime = host.runtime

    def remove_container(self, session_id: uuid.UUID) -> bool:
        """Remove the session's container (its files stay) unless a run is executing in
        it right now.

        The session's lock is held while the container goes, so no run starts in it
        meanwhile (a claim finding the lock taken retries a second later). A running run
        was signalled to cancel; its executor removes the container of a stopped session
        once the run is recorded.
        """
        return self._remove_unless_busy(session_id)

    def delete_session(
        self,
        session_id: uuid.UUID,
        lineage: Sequence[uuid.UUID] = (),
        descendants: Sequence[uuid.UUID] = (),
    ) -> None:
        """Remove the containers and every file of a deleted session and its descendants.

        The containers go first (none writes while its files go); the directories are
        walked without following symlinks (:meth:`SessionDirs.delete`), so nothing a
        session planted leads the deletion out of its own tree.

        Args:
            lineage: root first, the session last (a root session: empty or itself):
                where its directories lie.
            descendants: deleted with it.
        """
        for member in (session_id, *descendants):
            self.runtime.remove(str(member))
        path = [str(i) for i in lineage] or [str(session_id)]
        try:
            SessionDirs.for_lineage(self.settings.data_dir, path).delete(
                [str(d) for d in descendants]
            )
        except OSError:
            log.exception("could not delete every file of session %s", session_id)

    def reap(self, now: datetime | None = None) -> dict[str, int]:
        """Remove this instance's containers that no run will use soon.

        Removed: a container whose session is gone; one that is not running (a crashed
        run's, an older version's: never restarted, a new one replaces it); a stopped,
        failed or batch item's session's; and an idle session's once it has been idle
        past ``idle_timeout``. A session whose run is executing (its lock held) or
        claimed (``running``) is never touched.

        Returns:
            How many containers were removed, by reason (and ``removed`` in all).
        """
        now = now or datetime.now(UTC)
        idle_before = now - timedelta(seconds=self.settings.idle_timeout)
        counts = {"no_session": 0, "not_running": 0, "ended": 0, "idle": 0}
        containers = self.runtime.managed(self.settings.instance)
        ids = {c.session_id for c in containers}
        with self.session_factory() as db:
            known = {
                str(s.id): s for s in db.scalars(select(Session).where(Session.id.in_(_uuids(ids))))
            }
        for container in containers:
            session = known.get(container.session_id)
            if session is None:
                if self.runtime.remove_container(container):
                    counts["no_session"] += 1
                    log.info("removed container %s: no such session", container.name)
                continue
            reason = _removal_reason(container, session, idle_before)
            if reason is not None and self._remove_unless_busy(session.id, container):
                counts[reason] += 1
                log.info("removed the container of session %s (%s)", session.id, reason)
        return {"removed": sum(counts.values()), **counts}

    def _remove_unless_busy(
        self, session_id: uuid.UUID, container: SessionContainer | None = None
    ) -> bool:
        """Remove the session's container (or the one given) under the session's lock;
        False if a run holds the lock or the container was already gone."""
        lock = SessionLock(self.redis, session_id, f"janitor:{uuid.uuid4().hex}")
        if not lock.acquire():  # a run is executing in it
            return False
        try:
            if container is None:
                return self.runtime.remove(str(session_id))
            return self.runtime.remove_container(container)
        finally:
            lock.release()


def _removal_reason(
    container: SessionContainer, session: Session, idle_before: datetime
) -> str | None:
    """Why the container of a known session goes (None: it stays)."""
    if session.status == SessionStatus.RUNNING:
        # A run holds it (or a dead worker's run is about to be taken over, and would
        # read a lock taken here as a live run elsewhere).
        return None
    if not container.running:
        return "not_running"
    if session.status in (SessionStatus.STOPPED, SessionStatus.FAILED) or session.batch_id:
        return "ended"
    last_active = session.last_active_at or session.created_at
    if last_active < idle_before:
        return "idle"
    return None


def _uuids(values: set[str]) -> list[uuid.UUID]:
    result = []
    for value in values:
        try:
            result.append(uuid.UUID(value))
        except ValueError:
            continue
    return result
