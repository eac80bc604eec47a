"""Bearer-token authentication for views.

Two kinds of bearer token reach the API: the owner's JWT, and a session token that a
session's MCP tools hold during one run (``orchestrator.auth.session_tokens``), which speaks
for the owner only within that session's tree. ``@require_principal`` passes either in;
``@require_owner`` is for owner-wide endpoints and refuses session tokens with 403.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Concatenate, ParamSpec, TypeVar

from flask import request

from api.errors import Forbidden, Unauthorized
from api.extensions import get_services, request_unit
from orchestrator.auth import session_tokens
from orchestrator.auth.owner_tokens import AuthError, verify_token

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Principal:
    owner: str
    # A session token's session: the caller sees only it and its descendants.
    scope: uuid.UUID | None = None
    # An owner JWT's exp plus the leeway (Unix time): a tail open past it is closed 4401.
    valid_until: float | None = None
    # The session token itself, so a tail can see it revoked (its run ended) and close.
    session_token: str | None = field(default=None, repr=False)


def _bearer_token(allow_query_token: bool) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and allow_query_token:
        scheme, token = "bearer", request.args.get("access_token", "")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <JWT>)")
    return token.strip()


def current_principal(*, allow_query_token: bool = False) -> Principal:
    """Who the request speaks for.

    Args:
        allow_query_token: also accept ``?access_token=`` (WebSockets, where browsers
            cannot set headers); the header wins when both are given.
    """
    token = _bearer_token(allow_query_token)
    services = get_services()
    if session_tokens.is_session_token(token):
        uow = request_unit()
        scope = session_tokens.resolve(uow.db, token)
        uow.rollback()  # a read: a long WebSocket tail must not hold its transaction
        if scope is None:
            raise Unauthorized("session token is unknown, expired or revoked (its run ended)")
        return Principal(owner=scope.owner, scope=scope.session_id, session_token=token)
    try:
        verified = verify_token(services.settings, token)
        return Principal(owner=verified.owner, valid_until=verified.valid_until)
    except AuthError as exc:
        raise Unauthorized(str(exc)) from None


def require_principal(view: Callable[Concatenate[Principal, P], R]) -> Callable[P, R]:
    """Owner tokens and session tokens alike; views scope their services by it."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return view(current_principal(), *args, **kwargs)

    return wrapper


def require_owner(view: Callable[Concatenate[str, P], R]) -> Callable[P, R]:
    """Owner-wide endpoints (create root sessions, list everything): no session tokens."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        principal = current_principal()
        if principal.scope is not None:
            raise Forbidden(
                "a session token acts only on its own session and its descendants; "
                "this endpoint needs the owner's token"
            )
        return view(principal.owner, *args, **kwargs)

    return wrapper
