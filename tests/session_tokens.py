"""Session tokens for tests that act as a session from outside its container."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from orchestrator.auth import session_tokens
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Run, RunStatus, Session

# The prompt of the runs mint_live_token makes (none executes them).
ACTING_RUN_PROMPT = "(a test acting as this run)"


def mint_live_token(
    factory: sessionmaker[DbSession],
    session_id: uuid.UUID | str,
    *,
    ttl: timedelta = timedelta(minutes=10),
) -> tuple[str, uuid.UUID]:
    """A token as a running run of the session holds it: a run row in ``running`` (no
    task: nothing executes it) and its token. Returns the token and the run's ID."""
    with session_scope(factory) as db:
        session = db.get(Session, uuid.UUID(str(session_id)))
        assert session is not None, f"no session {session_id}"
        last = db.scalar(select(func.max(Run.seq)).where(Run.session_id == session.id)) or 0
        run = Run(
            session_id=session.id,
            owner=session.owner,
            seq=last + 1,
            prompt=ACTING_RUN_PROMPT,
            status=RunStatus.RUNNING,
            started_at=datetime.now(UTC),
        )
        db.add(run)
        db.flush()
        token = session_tokens.mint(
            db, session_id=session.id, run_id=run.id, owner=session.owner, ttl=ttl
        )
        return token, run.id
