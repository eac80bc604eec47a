"""Bearer-token authentication for views: ``@require_owner`` passes the owner in."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Concatenate, ParamSpec, TypeVar

from flask import request

from api.errors import Unauthorized
from api.extensions import get_services
from orchestrator.auth import AuthError, verify_token

P = ParamSpec("P")
R = TypeVar("R")


def current_owner(*, allow_query_token: bool = False) -> str:
    """The verified token's owner.

    Args:
        allow_query_token: also accept ``?access_token=`` (WebSockets, where browsers
            cannot set headers); the header wins when both are given.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and allow_query_token:
        scheme, token = "bearer", request.args.get("access_token", "")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <JWT>)")
    try:
        return verify_token(get_services().settings, token.strip()).owner
    except AuthError as exc:
        raise Unauthorized(str(exc)) from None


def require_owner(view: Callable[Concatenate[str, P], R]) -> Callable[P, R]:
    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return view(current_owner(), *args, **kwargs)

    return wrapper
