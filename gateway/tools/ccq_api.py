"""The ccq API, as the ccq tools need it: a few JSON calls, every failure as text.

Kept apart from the MCP wiring (server.py) and from the wording (render.py) so that the
HTTP side can be exercised with any transport and read on its own. Every way a call can
fail (API unreachable, slow, or answering an error) surfaces as one exception,
:class:`CcqApiError`, whose message is written for the model to read: the server turns it
into a tool error instead of crashing.

A client is built per tool call (:meth:`Config.for_run`): the API's URL is the one the
gateway is configured with, the session and the bearer token are the caller's (the
:class:`~gateway.credentials.RunCredential` the gateway's authentication verified). The
token may act only on that session and its descendants; ccq's API checks its scope again.
It is sent in the ``Authorization`` header and nowhere else: not in messages, not in
reprs, not in logs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2

from gateway.credentials import RunCredential

# Creating a child or fanning out only writes rows and enqueues tasks: answers come in
# well under a second. A minute covers a busy API without leaving the model hanging.
TIMEOUT_SECONDS = 60.0
# How much of an unexpected (non-JSON) error body goes into the message.
_BODY_EXCERPT_CHARS = 300

JsonObject = dict[str, Any]


class CcqApiError(Exception):
    """A call to the ccq API failed; ``str(error)`` says why, in words for the model."""


@dataclass(frozen=True)
class Config:
    """Where the API is, which session calls, and its token (kept out of the repr)."""

    api_url: str
    session_id: str
    token: str = field(repr=False)

    @classmethod
    def for_run(cls, api_url: str, credential: RunCredential) -> Config:
        """Calls to the API at ``api_url`` as the run ``credential`` speaks for."""
        return cls(
            api_url=api_url.strip().rstrip("/"),
            session_id=str(credential.session_id),
            token=credential.token,
        )


def session_id_arg(value: str, name: str = "child_id") -> str:
    """``value`` as a canonical session UUID, so it is safe to put in a URL path.

    Raises:
        CcqApiError: it is not a UUID (the model passed something else, e.g. a run ID
            is a UUID too, but a name or a path is not).
    """
    try:
        return str(uuid.UUID(value.strip()))
    except (ValueError, AttributeError):
        raise CcqApiError(
            f"{name} must be a session ID (a UUID such as the one spawn_child or "
            f"list_children returned), got {value!r}"
        ) from None


class CcqApi:
    """The calls behind the seven tools; each returns the API's JSON object.

    One short-lived HTTP client per call: a tool call is rare next to a model turn, and a
    fresh client cannot carry a broken connection over from an earlier call.
    """

    def __init__(
        self,
        config: Config,
        *,
        timeout: float = TIMEOUT_SECONDS,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._timeout = timeout
        self._transport = transport  # tests pass a mock transport

    async def spawn_child(
        self,
        prompt: str,
        *,
        model: str | None = None,
        max_turns: int | None = None,
        append_system_prompt: str | None = None,
    ) -> JsonObject:
        """``POST /sessions/{me}/children`` → ``{"session", "run"}``."""
        body: JsonObject = {"prompt": prompt}
        optional = {
            "model": model,
            "max_turns": max_turns,
            "append_system_prompt": append_system_prompt,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return await self._request("POST", f"/sessions/{self.config.session_id}/children", body)

    async def send_to_child(self, child_id: str, prompt: str) -> JsonObject:
        """``POST /sessions/{child}/runs`` → ``{"run"}``."""
        child = session_id_arg(child_id)
        return await self._request("POST", f"/sessions/{child}/runs", {"prompt": prompt})

    async def get_session(self, child_id: str) -> JsonObject:
        """``GET /sessions/{child}`` → ``{"session"}`` (with ``last_run``)."""
        return await self._request("GET", f"/sessions/{session_id_arg(child_id)}")

    async def get_events(self, child_id: str, *, after: str | None, limit: int) -> JsonObject:
        """``GET /sessions/{child}/events`` → ``{"events", "next_after"}``."""
        params: dict[str, str] = {"limit": str(limit)}
        if after:
            params["after"] = after
        child = session_id_arg(child_id)
        return await self._request("GET", f"/sessions/{child}/events", params=params)

    async def list_children(self) -> JsonObject:
        """``GET /sessions/{me}/children`` → ``{"children"}``."""
        return await self._request("GET", f"/sessions/{self.config.session_id}/children")

    async def stop_child(self, child_id: str) -> JsonObject:
        """``POST /sessions/{child}/stop`` → ``{"session"}``."""
        return await self._request("POST", f"/sessions/{session_id_arg(child_id)}/stop")

    async def fanout(self, prompts: list[str], then: str | None) -> JsonObject:
        """``POST /sessions/{me}/fanout`` → ``{"fanout", "children", "runs"}``.

        ``then`` is left out when None, so the server's default wording applies.
        """
        body: JsonObject = {"prompts": prompts}
        if then is not None:
            body["then"] = then
        return await self._request("POST", f"/sessions/{self.config.session_id}/fanout", body)

    async def _request(
        self,
        method: str,
        path: str,
        body: JsonObject | None = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> JsonObject:
        url = f"{self.config.api_url}/api/v1{path}"
        headers = {
            "Authorization": f"Bearer {self.config.token}",
            "Accept": "application/json",
            "User-Agent": "ccq-gateway-tools",
        }
        try:
            async with httpx2.AsyncClient(
                timeout=self._timeout, transport=self._transport
            ) as client:
                response = await client.request(
                    method, url, json=body, params=params, headers=headers
                )
        except httpx2.TimeoutException:
            raise CcqApiError(
                f"the ccq API at {self.config.api_url} did not answer {method} {path} "
                f"within {self._timeout:g}s; try again later"
            ) from None
        except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
            raise CcqApiError(
                f"cannot reach the ccq API at {self.config.api_url} "
                f"({type(exc).__name__}: {exc or 'no details'})"
            ) from None
        return _json_or_error(response, method, path)


def _json_or_error(response: httpx2.Response, method: str, path: str) -> JsonObject:
    """The JSON object of a 2xx answer; otherwise a :class:`CcqApiError` with its message."""
    try:
        payload: Any = response.json()
    except ValueError:
        payload = None
    if response.is_success:
        if isinstance(payload, dict):
            return payload
        raise CcqApiError(
            f"the ccq API answered {method} {path} with HTTP {response.status_code} but no "
            f"JSON object: {_excerpt(response.text)}"
        )
    raise CcqApiError(_error_message(response.status_code, payload, response.text))


def _error_message(status: int, payload: Any, text: str) -> str:
    """``ccq API error 409 (limit_exceeded): <message>`` plus any details, compactly."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return f"ccq API error {status}: {_excerpt(text) or 'no message'}"
    code = error.get("code")
    message = str(error.get("message") or "no message")
    lines = [f"ccq API error {status}" + (f" ({code})" if code else "") + f": {message}"]
    details = error.get("details")
    if details:
        rendered = json.dumps(details, sort_keys=True, default=str)
        if rendered not in message:
            lines.append(f"details: {_excerpt(rendered)}")
    return "\n".join(lines)


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) <= _BODY_EXCERPT_CHARS:
        return flat
    return flat[: _BODY_EXCERPT_CHARS - 1] + "…"
