"""The schema exists only through migrations, which go up and down on real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect

from orchestrator.db import migrate
from orchestrator.db.models import Base
from orchestrator.settings import Settings
from tests.processes import drop_database, recreate_database

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_url(base_settings: Settings, test_label: str) -> Iterator[str]:
    name = f"ccq_migrations_{test_label[:12]}"
    yield recreate_database(base_settings.database_url, name)
    drop_database(base_settings.database_url, name)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_downgrade_removes_them(scratch_url: str) -> None:
    assert migrate.current_revision(scratch_url) is None

    migrate.upgrade(scratch_url)
    assert migrate.current_revision(scratch_url) is not None
    assert _tables(scratch_url) >= {"sessions", "runs", "events", "batches"}

    migrate.downgrade(scratch_url, "base")
    assert migrate.current_revision(scratch_url) is None
    assert _tables(scratch_url) <= {"alembic_version"}

    migrate.upgrade(scratch_url)  # and back up again: downgrades leave nothing behind
    assert _tables(scratch_url) >= {"sessions", "runs", "events", "batches"}


def test_the_migrated_schema_matches_the_models(scratch_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    migrate.upgrade(scratch_url)
    engine = create_engine(scratch_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []
