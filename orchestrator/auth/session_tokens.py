"""Session-scoped tokens: a run's only credential, at the gateway and at ccq's API.

A token is random (opaque, not a JWT): it is minted when a run is claimed, handed only
to that run's CLI process (its model calls and ccq's MCP tools go to the gateway with
it; the tools call the API with it), and revoked when the run is recorded, so it lives
exactly as long as the run. Only its SHA-256 is stored; the operator's credentials
and the owner's JWTs never enter a container.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session as DbSession

from orchestrator.db.models import Run, RunStatus, SessionToken

# Tells a session token from a JWT at a glance (a JWT starts with "eyJ").
TOKEN_PREFIX = "ccqs_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class TokenScope:
    """Who a valid session token speaks for: the owner, within one session's tree."""

    owner: str
    session_id: uuid.UUID
    run_id: uuid.UUID


def is_session_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint(
    db: DbSession, *, session_id: uuid.UUID, run_id: uuid.UUID, owner: str, ttl: timedelta
) -> str:
    """A new token for one run of the session; the caller's transaction stores its hash."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.add(
        SessionToken(
            token_hash=_digest(token),
            session_id=session_id,
            run_id=run_id,
            owner=owner,
            expires_at=datetime.now(UTC) + ttl,
        )
    )
    return token


def resolve(db: DbSession, token: str) -> TokenScope | None:
    """The scope of a live token; None for an unknown, revoked or expired one, or one
    whose run is no longer running (a worker that died before revoking it)."""
    row = db.scalars(
        select(SessionToken)
        .join(Run, Run.id == SessionToken.run_id)
        .where(
            SessionToken.token_hash == _digest(token),
            SessionToken.expires_at > datetime.now(UTC),
            Run.status == RunStatus.RUNNING,
        )
    ).one_or_none()
    if row is None:
        return None
    return TokenScope(owner=row.owner, session_id=row.session_id, run_id=row.run_id)


def revoke_run(db: DbSession, run_id: uuid.UUID) -> None:
    """Revoke the tokens of a run that has ended."""
    db.execute(delete(SessionToken).where(SessionToken.run_id == run_id))


def purge_expired(db: DbSession, now: datetime | None = None) -> int:
    """Delete expired tokens (runs whose worker died before revoking them)."""
    result = db.execute(
        delete(SessionToken).where(SessionToken.expires_at <= (now or datetime.now(UTC)))
    )
    return int(getattr(result, "rowcount", 0) or 0)
