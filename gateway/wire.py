"""The gateway's HTTP conventions: which headers cross it, the operator's credential
upstream, and errors in the Anthropic API's own shape (the CLI shows them as they are).

Pure functions and small values; no sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from starlette.responses import JSONResponse, Response

from orchestrator.settings import Settings

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The session's credential is replaced by the operator's; `host` and `content-length`
# are the gateway's own to set; the upstream is asked for identity encoding so the bytes
# relayed are the bytes metered.
_NOT_UPSTREAM = HOP_BY_HOP | {
    "host",
    "content-length",
    "x-api-key",
    "authorization",
    "accept-encoding",
    "cookie",
}
# The body is re-framed by the gateway's server (chunked).
_NOT_DOWNSTREAM = HOP_BY_HOP | {"content-length", "set-cookie"}

OAUTH_BETA = "oauth-2025-04-20"
# Without it the CLI retries 401, 429, 5xx and 529 on its own for minutes.
SHOULD_RETRY = "x-should-retry"


@dataclass(frozen=True)
class UpstreamCredential:
    """The operator's Claude credential, as the headers that carry it upstream."""

    api_key: str | None = field(default=None, repr=False)
    oauth_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> UpstreamCredential:
        key, oauth = settings.anthropic_api_key, settings.claude_code_oauth_token
        return cls(
            api_key=key.get_secret_value() if key is not None else None,
            oauth_token=oauth.get_secret_value() if oauth is not None else None,
        )

    @property
    def kind(self) -> str:
        return "api_key" if self.api_key else "oauth_token" if self.oauth_token else "none"

    def apply(self, headers: dict[str, str]) -> None:
        """Add the credential (an API key wins when both are set)."""
        if self.api_key:
            headers["x-api-key"] = self.api_key
        elif self.oauth_token:
            headers["authorization"] = f"Bearer {self.oauth_token}"
            betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()]
            if OAUTH_BETA not in betas:
                betas.append(OAUTH_BETA)
            headers["anthropic-beta"] = ",".join(betas)


def upstream_headers(
    incoming: Iterable[tuple[str, str]], credential: UpstreamCredential
) -> dict[str, str]:
    """The session's request headers as the upstream gets them."""
    out = {name.lower(): value for name, value in incoming if name.lower() not in _NOT_UPSTREAM}
    out["accept-encoding"] = "identity"
    credential.apply(out)
    return out


def downstream_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's response headers as the session gets them."""
    return [(name, value) for name, value in headers if name.lower() not in _NOT_DOWNSTREAM]


def session_token_of(headers: Mapping[str, str]) -> str | None:
    """The credential a session sent: ``x-api-key`` (the CLI's ``ANTHROPIC_API_KEY``) or
    ``Authorization: Bearer`` (its MCP client, or ``ANTHROPIC_AUTH_TOKEN``)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str, *, retry: bool = False) -> Response:
    """``{"type": "error", "error": {"type", "message"}}``, as the Messages API answers, with
    ``x-should-retry`` saying whether the CLI should try again."""
    error = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
    return JSONResponse(
        {"type": "error", "error": error},
        status,
        headers={SHOULD_RETRY: "true" if retry else "false"},
    )
