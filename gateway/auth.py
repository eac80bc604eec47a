"""The gateway's door: every request carries a live session token, or gets a 401.

A pure ASGI middleware (it must not buffer the streamed responses behind it). It reads
the token from ``x-api-key`` or ``Authorization: Bearer``, resolves it in PostgreSQL (a
thread, so the event loop never waits on the database) and puts the
:class:`~gateway.credentials.RunCredential` in ``scope["state"]``. A missing, unknown,
expired or revoked token never reaches the model proxy or the tools. The token is never
logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker
from starlette.datastructures import Headers

from gateway.credentials import STATE_KEY, RunCredential
from gateway.metrics import Metrics
from gateway.wire import anthropic_error, session_token_of
from orchestrator.auth import session_tokens
from orchestrator.db.engine import session_scope

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

# Longer than any token ccq mints; anything longer is refused without a query.
MAX_TOKEN_CHARS = 200


# A token found live is trusted this long without asking again: a CLI's turn sends a
# handful of requests (MCP handshake, tool list, model calls) within a second. So a
# revoked token may pass for up to this long after its run was recorded.
VERIFIED_FOR_SECONDS = 1.0
MAX_CACHED = 10_000


class TokenVerifier:
    """Resolves session tokens against the database, remembering live ones briefly."""

    def __init__(
        self,
        session_factory: sessionmaker[DbSession],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = session_factory
        self._clock = clock
        self._live: dict[str, tuple[RunCredential, float]] = {}

    async def verify(self, token: str | None) -> RunCredential | None:
        if (
            not token
            or len(token) > MAX_TOKEN_CHARS
            or not session_tokens.is_session_token(token)
            or not token.isascii()
        ):
            return None
        now = self._clock()
        cached = self._live.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        scope = await anyio.to_thread.run_sync(self._resolve, token)
        if scope is None:
            self._live.pop(token, None)
            return None
        credential = RunCredential(
            token=token, owner=scope.owner, session_id=scope.session_id, run_id=scope.run_id
        )
        if len(self._live) >= MAX_CACHED:
            self._live = {k: v for k, v in self._live.items() if v[1] > now}
            if len(self._live) >= MAX_CACHED:
                self._live.clear()
        self._live[token] = (credential, now + VERIFIED_FOR_SECONDS)
        return credential

    def _resolve(self, token: str) -> session_tokens.TokenScope | None:
        with session_scope(self._factory) as db:
            return session_tokens.resolve(db, token)


class RequireSessionToken:
    """ASGI middleware: only requests with a live session token get through."""

    def __init__(self, app: Asgi, verifier: TokenVerifier, metrics: Metrics) -> None:
        self.app = app
        self.verifier = verifier
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = session_token_of(Headers(scope=scope))
        try:
            credential = await self.verifier.verify(token)
        except SQLAlchemyError:
            log.exception("cannot check a session token: the database is unavailable")
            refusal = anthropic_error(
                529, "ccq's gateway cannot check credentials right now", retry=True
            )
            await refusal(scope, receive, send)
            return
        if credential is None:
            self.metrics.count("unauthenticated_total")
            reason = "missing" if token is None else "invalid, expired or revoked"
            await anthropic_error(401, f"ccq session token {reason}")(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = credential
        await self.app(scope, receive, send)
