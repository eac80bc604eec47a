"""Domain errors; the API maps each to its status code and error code."""

from __future__ import annotations


class DomainError(Exception):
    def __init__(self, message: str, details: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFoundError(DomainError):
    """Missing, or owned by someone else (the two are indistinguishable on purpose)."""


class ConflictError(DomainError):
    """The object's state does not allow the operation."""


class ForbiddenError(DomainError):
    """The caller is known but may not do this (a session token outside its reach)."""


class LimitExceeded(DomainError):
    """A tree limit (depth, children per session, sessions per tree) would be passed."""


class QueueUnavailable(Exception):
    """The task queue (Redis, through Celery) could not take a task; nothing was sent."""
