"""One engine per process, and its sessions.

Services take a :class:`sqlalchemy.orm.Session` argument and never commit on their own;
the caller (a request, a task) owns the transactions through its
:class:`~orchestrator.db.unit_of_work.UnitOfWork`. :func:`session_scope` is the plain
commit-or-roll-back block, for scripts and tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, func, literal, select, text
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.settings import Settings


def make_engine(settings: Settings, *, pool_timeout: float = 30.0) -> Engine:
    """Build the process's engine; ``pool_pre_ping`` survives a PostgreSQL restart.

    ``pool_timeout``: how long a checkout waits for a free connection before
    :class:`sqlalchemy.exc.TimeoutError` (the API answers it 503 and waits less).
    """
    return create_engine(
        settings.database_url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        pool_timeout=pool_timeout,
        connect_args={"connect_timeout": 5},
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: views serialise objects after the commit that saved them.
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def ping(engine: Engine) -> None:
    """Raise if PostgreSQL cannot answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


# Row locks for updates that never change a key: FOR NO KEY UPDATE. Inserting an event
# takes FOR KEY SHARE on its run and session rows (the foreign keys); plain FOR UPDATE
# would conflict with that and let an event insert and a run claim deadlock.
ROW_LOCK: dict[str, Any] = {"key_share": True}


def lock_key(db: Session, *parts: str) -> None:
    """Hold a transaction-scoped advisory lock on ``parts`` until commit or rollback.

    Serialises what a unique constraint alone would turn into an error: two requests
    with the same idempotency key both look, find nothing and insert; with the lock the
    second finds the first's row.
    """
    key = ":".join(("ccq", *parts))
    db.execute(select(func.pg_advisory_xact_lock(func.hashtext(literal(key)))))
