"""Beat's retention pass on a worker host: old events, old stopped sessions, old files,
and workspace sizes (the rules are in :mod:`orchestrator.domain.retention`).

One pass does at most one batch of each kind (``CCQ_RETENTION_BATCH_SIZE`` rows, or
trees, or workspaces), and each batch or tree is a transaction of its own: a backlog is
worked off over several passes and never holds a long transaction or many locks. The
files of a tree are deleted after the commit that changed its rows (deleted or marked),
containers first and never through a symlink (:meth:`Janitor.delete_session`, the same
code DELETE /sessions/<id> ends in). A worker that dies between the two leaves files
whose rows are gone or marked; nothing then runs in them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import redis
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.db.unit_of_work import UnitOfWork
from orchestrator.domain import retention
from orchestrator.domain.retention import RetentionPolicy
from orchestrator.domain.sessions import Removal, SessionService
from orchestrator.errors import NotFoundError
from orchestrator.runtime.janitor import Janitor
from orchestrator.runtime.workspaces import MAX_ENTRIES, workspace_size
from orchestrator.settings import Settings
from orchestrator.streams.events import publish_pending

log = logging.getLogger(__name__)

# Entries one pass's size measurements look at in all (each workspace at most MAX_ENTRIES).
MEASURE_BUDGET_ENTRIES = 2_000_000


@dataclass
class PassReport:
    events_deleted: int = 0
    sessions_deleted: int = 0
    workspaces_deleted: int = 0
    workspaces_measured: int = 0
    over_cap: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "events_deleted": self.events_deleted,
            "sessions_deleted": self.sessions_deleted,
            "workspaces_deleted": self.workspaces_deleted,
            "workspaces_measured": self.workspaces_measured,
            "workspaces_over_cap": len(self.over_cap),
        }


class Retention:
    """Enforces the retention settings; one instance per worker process."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[DbSession],
        redis_client: redis.Redis,
        janitor: Janitor,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.redis = redis_client
        self.janitor = janitor
        self.policy = RetentionPolicy.from_settings(settings)

    def run_pass(self, now: datetime | None = None) -> PassReport:
        """One pass: a batch of each kind. ``now`` is for tests."""
        now = now or retention.utcnow()
        report = PassReport()
        limit = self.policy.batch_size
        before = retention.cutoff(now, self.policy.event_days)
        if before is not None:
            report.events_deleted = self.purge_events(before, limit)
        before = retention.cutoff(now, self.policy.stopped_session_days)
        if before is not None:
            report.sessions_deleted = self.delete_stopped(before, limit)
        before = retention.cutoff(now, self.policy.workspace_days)
        if before is not None:
            report.workspaces_deleted = self.delete_files(before, limit, now)
        self.measure(limit, now, report)
        if any(report.to_json().values()):
            log.info("retention: %s", report.to_json())
        return report

    def purge_events(self, before: datetime, limit: int) -> int:
        """One batch of old events, committed."""
        with UnitOfWork(self.session_factory) as uow:
            deleted = retention.purge_events(uow.db, before, limit)
            uow.commit()
        return deleted

    def delete_stopped(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` stopped trees quiet since ``before``, one transaction
        each, as the API's DELETE does: their rows and events, then containers and files."""
        with UnitOfWork(self.session_factory) as uow:
            roots = retention.stopped_trees(uow.db, before, limit)
        deleted = 0
        for root_id in roots:
            removal = self._delete_tree(root_id, before)
            if removal is None:
                continue
            self.janitor.delete_session(removal.session_id, removal.lineage, removal.descendants)
            deleted += 1 + len(removal.descendants)
        return deleted

    def _delete_tree(self, root_id: uuid.UUID, before: datetime) -> Removal | None:
        with UnitOfWork(self.session_factory) as uow:
            members = retention.lock_quiet_tree(uow.db, root_id, before)
            if members is None:
                return None
            root = members[0]
            service = SessionService(uow.db, root.owner)
            try:
                removal = service.delete(root.id)
            except NotFoundError:
                return None
            ttl = int(self.settings.event_stream_ttl)
            uow.after_commit(lambda db: publish_pending(self.redis, db, service.outbox, ttl))
            uow.commit()
        log.info(
            "retention deleted session %s and %d descendants", root_id, len(removal.descendants)
        )
        return removal

    def delete_files(self, before: datetime, limit: int, now: datetime) -> int:
        """Delete the files of up to ``limit`` trees quiet since ``before``; their rows
        stay, marked (``files_deleted_at``), and refuse further prompts."""
        with UnitOfWork(self.session_factory) as uow:
            roots = retention.trees_with_files(uow.db, before, limit)
        deleted = 0
        for root_id in roots:
            with UnitOfWork(self.session_factory) as uow:
                members = retention.lock_quiet_tree(uow.db, root_id, before)
                if members is None:
                    continue
                retention.mark_files_deleted(uow.db, members, now)
                uow.commit()
                descendants = [m.id for m in members[1:]]
            self.janitor.delete_session(root_id, [root_id], descendants)
            deleted += 1
        return deleted

    def measure(self, limit: int, now: datetime, report: PassReport) -> None:
        """Measure up to ``limit`` workspaces whose size is stale and record the sizes."""
        with UnitOfWork(self.session_factory) as uow:
            places = retention.workspaces_to_measure(uow.db, limit)
        cap = self.settings.workspace_max_mb * 1024 * 1024
        budget = MEASURE_BUDGET_ENTRIES
        sizes: dict[uuid.UUID, int] = {}
        for place in places:
            if budget <= 0:
                break
            try:
                size = workspace_size(
                    self.settings.data_dir, place.lineage, max_entries=min(MAX_ENTRIES, budget)
                )
            except OSError:
                log.warning("could not measure the workspace of %s", place.session_id)
                continue
            budget -= size.entries
            sizes[place.session_id] = size.bytes
            if size.bytes > cap:
                report.over_cap.append(str(place.session_id))
                log.warning(
                    "the workspace of session %s holds %d bytes, over CCQ_WORKSPACE_MAX_MB",
                    place.session_id,
                    size.bytes,
                )
        if sizes:
            with UnitOfWork(self.session_factory) as uow:
                retention.record_workspace_sizes(uow.db, sizes, now)
                uow.commit()
        report.workspaces_measured = len(sizes)
