"""The client's two failures, so a caller prints one clear line instead of a traceback.

:class:`ApiError`: the API answered with its error shape ``{"error": {"code", "message",
"details"}}`` (or with something that was not JSON). :class:`ApiUnreachable`: no answer
at all.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """The API answered with an error: ``{"error": {"code", "message", "details"}}``.

    Attributes:
        retry_after: seconds the API asked to wait (a 429 or 503 ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


class ApiUnreachable(Exception):
    """No HTTP answer at all: refused, DNS, TLS or a timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the ccq API at {url}: {reason}")
        self.url = url
        self.reason = reason


def error_from_body(
    status: int, body: object, reason: str = "", retry_after: float | None = None
) -> ApiError:
    """The API's own error if ``body`` has its shape; otherwise the bare HTTP status.

    A proxy or a crashed server may answer HTML: its body is not shown (it may be long
    and says nothing the status does not).
    """
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return ApiError(
            status,
            str(error.get("code") or "error"),
            error["message"],
            error.get("details"),
            retry_after,
        )
    return ApiError(
        status, "http_error", f"HTTP {status} {reason or 'error'}", retry_after=retry_after
    )
