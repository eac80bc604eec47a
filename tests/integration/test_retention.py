"""Retention on real PostgreSQL, Redis, Docker and files: old events go in batches, live
runs' events stay; old stopped trees are deleted with their files, recent or live ones
stay; old trees lose their files (containers first, no symlink followed) but keep their
rows and refuse prompts; workspace sizes are measured and shown; every stream the API
writes to expires.

Rows are arranged directly and made 400 days old, and each pass looks back further than
399 days: nothing another test made is old enough to be touched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from api.extensions import Services
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Event, Run, RunStatus, Session, SessionStatus
from orchestrator.domain import retention
from orchestrator.domain.sessions import SessionService
from orchestrator.errors import ConflictError
from orchestrator.runtime.containers import ContainerRuntime, SessionContainerSpec, SessionDirs
from orchestrator.runtime.janitor import Janitor
from orchestrator.runtime.retention import PassReport, Retention
from orchestrator.settings import Settings
from orchestrator.streams.events import stream_key
from tests.api_helpers import auth, create_session, get_json, post_json
from tests.processes import WorkerProcess

pytestmark = pytest.mark.integration

OWNER = "retention-owner"
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)
KEEP_DAYS = 399  # older than this goes: only what these tests made 400 days old


@pytest.fixture
def retention_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "event_retention_days": KEEP_DAYS,
            "workspace_retention_days": KEEP_DAYS,
            "stopped_session_retention_days": KEEP_DAYS,
            "retention_batch_size": 10,
        }
    )


@pytest.fixture
def enforcer(
    retention_settings: Settings,
    db_factory: sessionmaker[DbSession],
    services: Services,
    janitor: Janitor,
) -> Retention:
    return Retention(retention_settings, db_factory, services.redis, janitor)


@pytest.fixture
def made(db_factory: sessionmaker[DbSession]) -> Iterator[list[uuid.UUID]]:
    """Roots this test made; deleted afterwards with their trees (rows only)."""
    roots: list[uuid.UUID] = []
    yield roots
    with session_scope(db_factory) as db:
        for root in db.scalars(select(Session).where(Session.id.in_(roots))):
            db.delete(root)


def _session(
    db: DbSession,
    *,
    status: SessionStatus = SessionStatus.IDLE,
    active: datetime = OLD,
    parent: Session | None = None,
) -> Session:
    session_id = uuid.uuid4()
    session = Session(
        id=session_id,
        owner=OWNER,
        status=status,
        parent_id=parent.id if parent else None,
        root_id=(parent.root_id if parent else session_id),
        depth=parent.depth + 1 if parent else 0,
        created_at=active,
        last_active_at=active,
    )
    db.add(session)
    db.flush()
    return session


def _run(
    db: DbSession,
    session: Session,
    status: RunStatus,
    *,
    finished: datetime | None = OLD,
    events: int = 0,
) -> Run:
    seq = (db.scalar(select(func.max(Run.seq)).where(Run.session_id == session.id)) or 0) + 1
    run = Run(
        id=uuid.uuid4(),
        session_id=session.id,
        owner=OWNER,
        seq=seq,
        prompt="p",
        status=status,
        created_at=OLD,
        finished_at=finished if RunStatus(status).is_final else None,
    )
    db.add(run)
    db.flush()
    base = int(OLD.timestamp() * 1000) + seq * 100_000
    db.add_all(
        Event(
            session_id=session.id,
            run_id=run.id,
            stream_id=f"{base}-{n}",
            stream_ms=base,
            stream_n=n,
            seq=n,
            type="assistant",
            data={"n": n},
            created_at=OLD,
        )
        for n in range(events)
    )
    return run


def _event_count(db_factory: sessionmaker[DbSession], run_id: uuid.UUID) -> int:
    with db_factory() as db:
        return db.scalar(select(func.count()).where(Event.run_id == run_id)) or 0


def _exists(db_factory: sessionmaker[DbSession], session_id: uuid.UUID) -> bool:
    with db_factory() as db:
        return db.get(Session, session_id) is not None


def _with_files(settings: Settings, lineage: list[uuid.UUID], content: str) -> SessionDirs:
    dirs = SessionDirs.for_lineage(settings.data_dir, [str(i) for i in lineage])
    dirs.create()
    (dirs.workspace / "notes.md").write_text(content)
    dirs.claude_home.joinpath("transcript.jsonl").write_text("{}\n")
    return dirs


# --- events ----------------------------------------------------------------------------


def test_old_events_go_in_batches_of_the_batch_size_and_live_runs_keep_theirs(
    db_factory: sessionmaker[DbSession], enforcer: Retention, made: list[uuid.UUID]
) -> None:
    with session_scope(db_factory) as db:
        session = _session(db)
        made.append(session.id)
        ended = _run(db, session, RunStatus.SUCCEEDED, events=25).id
        recent = _run(db, session, RunStatus.FAILED, finished=NOW, events=4).id
        # Queued or running for 400 days (a wedge): their events stay whatever their age.
        running = _run(db, session, RunStatus.RUNNING, events=6).id
        queued = _run(db, session, RunStatus.QUEUED, events=2).id

    passes = [enforcer.run_pass().events_deleted for _ in range(4)]

    assert passes == [10, 10, 5, 0]
    assert _event_count(db_factory, ended) == 0
    assert [_event_count(db_factory, r) for r in (recent, running, queued)] == [4, 6, 2]
    with db_factory() as db:  # the runs themselves stay
        assert db.get(Run, ended) is not None


def test_a_batch_deletes_at_most_its_limit_in_one_statement(
    db_factory: sessionmaker[DbSession], made: list[uuid.UUID]
) -> None:
    with session_scope(db_factory) as db:
        session = _session(db)
        made.append(session.id)
        ended = _run(db, session, RunStatus.CANCELLED, events=7).id
    before = NOW - timedelta(days=KEEP_DAYS)

    with session_scope(db_factory) as db:
        assert retention.purge_events(db, before, 3) == 3
    assert _event_count(db_factory, ended) == 4


# --- stopped sessions ------------------------------------------------------------------


def test_old_stopped_trees_are_deleted_with_their_files_and_recent_or_live_ones_stay(
    db_factory: sessionmaker[DbSession],
    settings: Settings,
    enforcer: Retention,
    services: Services,
    made: list[uuid.UUID],
) -> None:
    stopped = SessionStatus.STOPPED
    with session_scope(db_factory) as db:
        old = _session(db, status=stopped)
        old_child = _session(db, status=stopped, parent=old)
        _run(db, old_child, RunStatus.SUCCEEDED, events=3)
        recent = _session(db, status=stopped, active=NOW)
        # Old and stopped, but a child has a queued run / was active today.
        live = _session(db, status=stopped)
        live_child = _session(db, status=stopped, parent=live)
        _run(db, live_child, RunStatus.QUEUED)
        busy = _session(db, status=stopped)
        _session(db, status=SessionStatus.IDLE, active=NOW, parent=busy)
        # Old, but never stopped: its files may go, its rows stay.
        idle = _session(db)
        ids = [old.id, old_child.id, recent.id, live.id, live_child.id, busy.id, idle.id]
        made.extend([old.id, recent.id, live.id, busy.id, idle.id])
    old_dirs = _with_files(settings, [old.id], "old")
    child_dirs = _with_files(settings, [old.id, old_child.id], "old child")
    recent_dirs = _with_files(settings, [recent.id], "recent")

    report = enforcer.run_pass()

    assert report.sessions_deleted == 2
    assert [_exists(db_factory, i) for i in ids] == [False, False, True, True, True, True, True]
    for gone in (old_dirs.workspace, child_dirs.workspace, old_dirs.claude_home):
        assert not gone.exists(), gone
    assert not child_dirs.claude_home.exists()
    assert (recent_dirs.workspace / "notes.md").read_text() == "recent"
    # As the API's DELETE: tails of the deleted sessions learn it, and the stream goes soon.
    assert 0 < services.redis.ttl(stream_key(old.id)) <= 60


# --- files of old trees ----------------------------------------------------------------


def test_old_trees_lose_their_files_containers_first_but_no_symlinked_file_outside(
    db_factory: sessionmaker[DbSession],
    settings: Settings,
    enforcer: Retention,
    runtime: ContainerRuntime,
    test_label: str,
    tmp_path: Path,
    made: list[uuid.UUID],
) -> None:
    with session_scope(db_factory) as db:
        root = _session(db, status=SessionStatus.IDLE)
        child = _session(db, status=SessionStatus.STOPPED, parent=root)
        _run(db, root, RunStatus.SUCCEEDED, finished=OLD)
        recent = _session(db, status=SessionStatus.IDLE, active=NOW)
        made.extend([root.id, recent.id])
    root_dirs = _with_files(settings, [root.id], "old root")
    child_dirs = _with_files(settings, [root.id, child.id], "old child")
    recent_dirs = _with_files(settings, [recent.id], "recent")
    # What a session could plant: links to a file and a directory outside its tree.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (root_dirs.workspace / "to-file").symlink_to(outside / "precious.txt")
    (child_dirs.workspace / "to-dir").symlink_to(outside)
    container = runtime.ensure_running(
        SessionContainerSpec(
            session_id=str(root.id),
            owner=OWNER,
            image=settings.worker_image,
            dirs=root_dirs,
            instance=settings.instance,
            extra_labels={"ccq.test": test_label},
        )
    )
    assert container.running

    report = enforcer.run_pass()

    assert report.workspaces_deleted >= 1
    assert runtime.find(str(root.id)) is None
    assert not root_dirs.workspace.exists()
    assert not child_dirs.workspace.exists()
    assert not root_dirs.claude_home.exists()
    assert not child_dirs.claude_home.exists()
    assert (outside / "precious.txt").read_text() == "keep me"
    assert (recent_dirs.workspace / "notes.md").read_text() == "recent"
    with db_factory() as db:
        for member in (root.id, child.id):
            row = db.get(Session, member)
            assert row is not None
            assert row.files_deleted_at is not None
        assert db.get(Session, recent.id).files_deleted_at is None  # type: ignore[union-attr]
        with pytest.raises(ConflictError, match="files were deleted"):
            SessionService(db, OWNER).queue_run(root.id, "are you there?")
    # Marked once: the next pass has nothing of theirs left to do.
    with db_factory() as db:
        assert root.id not in retention.trees_with_files(db, NOW - timedelta(days=KEEP_DAYS), 1000)


def test_a_tree_with_a_live_run_keeps_its_files_whatever_its_age(
    db_factory: sessionmaker[DbSession],
    settings: Settings,
    enforcer: Retention,
    made: list[uuid.UUID],
) -> None:
    with session_scope(db_factory) as db:
        root = _session(db)
        child = _session(db, parent=root)
        _run(db, child, RunStatus.RUNNING)
        made.append(root.id)
    dirs = _with_files(settings, [root.id, child.id], "busy")

    enforcer.run_pass()

    assert (dirs.workspace / "notes.md").read_text() == "busy"
    assert _exists(db_factory, root.id)


# --- workspace sizes and streams -------------------------------------------------------


def test_workspace_sizes_are_measured_and_shown_on_the_session(
    client: FlaskClient,
    settings: Settings,
    db_factory: sessionmaker[DbSession],
    enforcer: Retention,
) -> None:
    headers = auth(settings, OWNER)
    session_id = create_session(client, headers)["session"]["id"]
    dirs = SessionDirs.for_session(settings.data_dir, session_id)
    dirs.create()
    (dirs.workspace / "data.bin").write_bytes(b"x" * 4321)
    (dirs.workspace / "etc").symlink_to("/etc")  # counted as a link, never walked

    report = PassReport()
    enforcer.measure(100_000, datetime.now(UTC), report)

    shown = get_json(client, f"/api/v1/sessions/{session_id}", headers)["session"]
    assert shown["workspace_bytes"] == 4321 + len("/etc")
    assert shown["workspace_measured_at"] is not None
    assert shown["files_deleted_at"] is None
    assert report.workspaces_measured >= 1


def test_a_stream_the_api_writes_to_expires(
    client: FlaskClient, settings: Settings, services: Services, worker: WorkerProcess
) -> None:
    headers = auth(settings, OWNER)
    session_id = create_session(client, headers)["session"]["id"]

    post_json(client, f"/api/v1/sessions/{session_id}/stop", {}, headers, 202)

    key = stream_key(session_id)
    assert services.redis.xlen(key) == 1  # the API's ccq.session.status, nothing else yet
    assert 0 < services.redis.ttl(key) <= settings.event_stream_ttl


def test_beat_runs_the_retention_task_on_the_worker(
    celery_app: Celery, worker: WorkerProcess
) -> None:
    result = celery_app.send_task("ccq.enforce_retention", ignore_result=False).get(timeout=60)

    assert set(result) == {
        "events_deleted",
        "sessions_deleted",
        "workspaces_deleted",
        "workspaces_measured",
        "workspaces_over_cap",
    }
