"""One error shape for every response: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify, request
from psycopg.errors import DeadlockDetected, SerializationFailure
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from orchestrator.errors import (
    ConflictError,
    ForbiddenError,
    LimitExceeded,
    NotFoundError,
    QueueUnavailable,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the client can act on; rendered with its status and code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: Any = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if status is not None:
            self.status = status


class InvalidInput(ApiError):
    status, code = 400, "invalid_input"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class TooLarge(ApiError):
    status, code = 413, "too_large"


def too_large(field: str, reason: str, setting: str, limit: int) -> TooLarge:
    """A 413 whose details name the field, and the setting and limit it went past."""
    detail = {"field": field, "reason": reason, "setting": setting, "limit": limit}
    return TooLarge(f"{field}: {reason} ({setting})", [detail])


# A pool timeout's Retry-After: connections come back as soon as requests end.
POOL_RETRY_AFTER = 2


class TooManyRequests(ApiError):
    status, code = 429, "too_many_requests"

    def __init__(self, message: str, retry_after: int, details: Any = None) -> None:
        super().__init__(message, details)
        self.headers = {"Retry-After": str(retry_after)}


class DependencyDown(ApiError):
    status, code = 503, "dependency_unavailable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``[{"field": "a.b", "reason": "..."}]`` without echoing input."""
    return [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "(body)",
            # A validator's ValueError reads "Value error, <reason>": the reason is enough.
            "reason": err["msg"].removeprefix("Value error, "),
        }
        for err in exc.errors(include_url=False, include_input=False)
    ]


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        response = jsonify(error_body(exc.code, exc.message, exc.details))
        response.headers.update(getattr(exc, "headers", {}))
        return response, exc.status

    @app.errorhandler(NotFoundError)
    def _not_found(exc: NotFoundError) -> tuple[Response, int]:
        return jsonify(error_body(NotFound.code, exc.message, exc.details)), NotFound.status

    @app.errorhandler(ConflictError)
    def _conflict(exc: ConflictError) -> tuple[Response, int]:
        return jsonify(error_body(Conflict.code, exc.message, exc.details)), Conflict.status

    @app.errorhandler(ForbiddenError)
    def _forbidden(exc: ForbiddenError) -> tuple[Response, int]:
        return jsonify(error_body(Forbidden.code, exc.message, exc.details)), Forbidden.status

    @app.errorhandler(LimitExceeded)
    def _limit_exceeded(exc: LimitExceeded) -> tuple[Response, int]:
        # A structural limit of the session tree: retrying will not help, so not a 429.
        return jsonify(error_body("limit_exceeded", exc.message, exc.details)), 409

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> tuple[Response, int]:
        details = validation_details(exc)
        first = details[0] if details else {"field": "(body)", "reason": "invalid"}
        message = f"{first['field']}: {first['reason']}"
        return jsonify(error_body("invalid_input", message, details)), 400

    @app.errorhandler(RequestEntityTooLarge)
    def _body_too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
        # Flask's MAX_CONTENT_LENGTH (batches set their own, request.max_content_length).
        limit = request.max_content_length or 0
        reason = f"a request body is at most {limit} bytes"
        return _api_error(too_large("(body)", reason, "CCQ_MAX_REQUEST_BYTES", limit))

    @app.errorhandler(PoolTimeout)
    def _database_busy(exc: PoolTimeout) -> tuple[Response, int]:
        # Every pooled connection is in use: shed this request rather than queue it.
        log.warning("database pool exhausted: %s", exc)
        message = "every database connection is busy; retry shortly"
        response = jsonify(error_body("database_busy", message))
        response.headers["Retry-After"] = str(POOL_RETRY_AFTER)
        return response, 503

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(error_body(code, exc.description or exc.name)), status

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(OperationalError)
    @app.errorhandler(QueueUnavailable)
    def _dependency_down(exc: Exception) -> tuple[Response, int]:
        # Redis or PostgreSQL unreachable: the client may retry; nothing half-written stays.
        log.warning("dependency unavailable: %s: %s", type(exc).__name__, exc)
        if isinstance(getattr(exc, "orig", None), DeadlockDetected | SerializationFailure):
            # A deadlock or serialization failure: the database is fine, the request lost.
            message = "a concurrent change conflicted with this request; retry it"
        else:
            postgres = isinstance(exc, OperationalError)
            name = "postgresql" if postgres else "redis"
            message = f"{name} is unavailable; retry later"
        body = error_body(DependencyDown.code, message)
        return jsonify(body), DependencyDown.status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        # Logged with its traceback for operators; the client learns nothing internal.
        log.exception("unhandled error")
        return jsonify(error_body("internal_error", "internal server error")), 500
