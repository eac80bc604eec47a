"""A small typed client for the ccq HTTP API, used by the `ccq` client commands.

Every failure comes out as one of two exceptions, so the commands can print one clear
line instead of a traceback: :class:`ApiError` (the API answered with its error shape, or
something that was not JSON) and :class:`ApiUnreachable` (no answer at all).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import requests

JsonObject = dict[str, Any]

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# The API waits at most this long on `?wait=` (api.sessions.MAX_WAIT_SECONDS).
MAX_WAIT_SECONDS = 300.0
# A 10,000-item batch is checked, inserted and queued before the API answers.
BATCH_UPLOAD_READ_TIMEOUT = 300.0
# Results come in pieces as PostgreSQL gives them; lines are JSON objects, never split.
RESULTS_CHUNK_BYTES = 64 * 1024


class ApiError(Exception):
    """The API answered with an error: ``{"error": {"code", "message", "details"}}``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class ApiUnreachable(Exception):
    """No HTTP answer at all: refused, DNS, TLS or a timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the ccq API at {url}: {reason}")
        self.url = url
        self.reason = reason


def _error_from(response: requests.Response) -> ApiError:
    """The API's own error if the body has its shape; otherwise the bare HTTP status.

    A proxy or a crashed server may answer HTML: its body is not shown (it may be long
    and says nothing the status does not).
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return ApiError(
            response.status_code,
            str(error.get("code") or "error"),
            error["message"],
            error.get("details"),
        )
    reason = response.reason or "error"
    return ApiError(response.status_code, "http_error", f"HTTP {response.status_code} {reason}")


class ApiClient:
    """The ccq API as methods; each returns the decoded JSON body of a success."""

    def __init__(self, base_url: str, token: str, http: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token  # live tails send it on their WebSocket handshake
        self._http = http or requests.Session()
        self._http.headers["Authorization"] = f"Bearer {token}"
        self._http.headers["Accept"] = "application/json"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: JsonObject | None = None,
        data: bytes | IO[bytes] | None = None,
        headers: dict[str, str] | None = None,
        read_timeout: float = READ_TIMEOUT,
        stream: bool = False,
    ) -> requests.Response:
        """The API's answer to a success (its body unread with ``stream``); every failure
        as ApiError or ApiUnreachable."""
        url = self.base_url + path
        try:
            response = self._http.request(
                method,
                url,
                params={k: v for k, v in (params or {}).items() if v is not None},
                json=json,
                data=data,
                headers=headers,
                timeout=(CONNECT_TIMEOUT, read_timeout),
                stream=stream,
            )
        except requests.ConnectionError as exc:
            raise ApiUnreachable(self.base_url, _connection_reason(exc)) from None
        except requests.Timeout:
            raise ApiUnreachable(self.base_url, "timed out") from None
        except requests.RequestException as exc:
            raise ApiUnreachable(self.base_url, type(exc).__name__) from None
        if response.status_code >= 400:
            error = _error_from(response)
            response.close()
            raise error
        return response

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: JsonObject | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> JsonObject:
        response = self._request(method, path, params=params, json=json, read_timeout=read_timeout)
        return _json_object(response)

    # --- sessions -----------------------------------------------------------------------

    def create_session(self, body: JsonObject) -> JsonObject:
        """``{"session", "run"}``; ``run`` is set when ``body`` has a prompt."""
        return self._call("POST", "/api/v1/sessions", json=body)

    def list_sessions(
        self,
        *,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        parent_id: str | None = None,
        batch_id: str | None = None,
    ) -> JsonObject:
        """One page: ``{"sessions", "next_cursor"}``, newest first."""
        params = {
            "status": status,
            "limit": limit,
            "cursor": cursor,
            "parent_id": parent_id,
            "batch_id": batch_id,
        }
        return self._call("GET", "/api/v1/sessions", params=params)

    def get_session(self, session_id: str) -> JsonObject:
        session: JsonObject = self._call("GET", f"/api/v1/sessions/{session_id}")["session"]
        return session

    def stop_session(self, session_id: str) -> JsonObject:
        """``{"session", "stopped"}``: the session and every session stopped with it."""
        return self._call("POST", f"/api/v1/sessions/{session_id}/stop")

    def delete_session(self, session_id: str) -> JsonObject:
        return self._call("DELETE", f"/api/v1/sessions/{session_id}")

    # --- runs ---------------------------------------------------------------------------

    def queue_run(self, session_id: str, prompt: str, *, wait: float | None = None) -> JsonObject:
        """Queue a prompt; with ``wait``, the API holds the answer until the run ends or
        ``wait`` seconds pass (at most 300), so a short run costs one request."""
        params: dict[str, Any] = {}
        read_timeout = READ_TIMEOUT
        if wait is not None:
            wait = max(0.0, min(wait, MAX_WAIT_SECONDS))
            params["wait"] = f"{wait:g}"
            read_timeout += wait
        run: JsonObject = self._call(
            "POST",
            f"/api/v1/sessions/{session_id}/runs",
            params=params,
            json={"prompt": prompt},
            read_timeout=read_timeout,
        )["run"]
        return run

    def get_run(self, run_id: str) -> JsonObject:
        run: JsonObject = self._call("GET", f"/api/v1/runs/{run_id}")["run"]
        return run

    def run_events(self, run_id: str, *, after: str | None = None, limit: int = 500) -> JsonObject:
        """``{"events", "next_after"}``: the run's events after the ``after`` event id."""
        params = {"after": after, "limit": limit}
        return self._call("GET", f"/api/v1/runs/{run_id}/events", params=params)

    def cancel_run(self, run_id: str) -> JsonObject:
        run: JsonObject = self._call("POST", f"/api/v1/runs/{run_id}/cancel")["run"]
        return run

    # --- children and fan-out -------------------------------------------------------------

    def children(self, session_id: str, *, recursive: bool = True) -> JsonObject:
        """``{"session", "children"}``: the session and its children; ``recursive`` nests
        each child's own ``children`` down the whole tree."""
        params = {"recursive": "true" if recursive else None}
        return self._call("GET", f"/api/v1/sessions/{session_id}/children", params=params)

    def fanout(
        self, session_id: str, prompts: list[str], then: str | None, **options: Any
    ) -> JsonObject:
        """``{"fanout", "children", "runs"}``: one child and run per prompt; ``then`` (or
        the server's default) is queued on the session once every child's run ended.
        ``options`` (``model``, ``max_turns``) apply to the children; ``None`` values are
        left out."""
        body: JsonObject = {"prompts": prompts, "then": then, **options}
        body = {k: v for k, v in body.items() if v is not None}
        return self._call("POST", f"/api/v1/sessions/{session_id}/fanout", json=body)

    def get_fanout(self, fanout_id: str) -> JsonObject:
        """``{"fanout", "children"}``: where a fan-out is, with its children's sessions."""
        return self._call("GET", f"/api/v1/fanouts/{fanout_id}")

    # --- batches ------------------------------------------------------------------------

    def create_batch_ndjson(
        self,
        body: bytes | IO[bytes],
        *,
        max_concurrency: int | None = None,
        notify_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[JsonObject, bool]:
        """Submit a batch as NDJSON, one item object per line (a file is sent as it is
        read, not loaded first); the options go in the query string.

        Returns:
            The batch, and whether it was created now (``False``: ``idempotency_key``
            matched one submitted before, which is returned instead).
        """
        params = {
            "max_concurrency": max_concurrency,
            "notify_url": notify_url,
            "idempotency_key": idempotency_key,
        }
        response = self._request(
            "POST",
            "/api/v1/batches",
            params=params,
            data=body,
            headers={"Content-Type": "application/x-ndjson"},
            read_timeout=BATCH_UPLOAD_READ_TIMEOUT,
        )
        batch: JsonObject = _json_object(response)["batch"]
        return batch, response.status_code == 201

    def get_batch(self, batch_id: str) -> JsonObject:
        batch: JsonObject = self._call("GET", f"/api/v1/batches/{batch_id}")["batch"]
        return batch

    def list_batches(self, *, limit: int | None = None, cursor: str | None = None) -> JsonObject:
        """One page: ``{"batches", "next_cursor"}``, newest first."""
        return self._call("GET", "/api/v1/batches", params={"limit": limit, "cursor": cursor})

    def cancel_batch(self, batch_id: str) -> JsonObject:
        """The batch after the cancel: queued items are cancelled, running ones stopping."""
        batch: JsonObject = self._call("POST", f"/api/v1/batches/{batch_id}/cancel")["batch"]
        return batch

    def batch_results(self, batch_id: str) -> Iterator[bytes]:
        """The batch's results, one NDJSON line (without its newline) per item in item
        order, as they arrive: a 10,000-item batch is never held in memory whole.

        The request is made when iteration starts; a connection that breaks midway raises
        ApiUnreachable then.
        """
        response = self._request(
            "GET",
            f"/api/v1/batches/{batch_id}/results",
            headers={"Accept": "application/x-ndjson"},
            stream=True,
        )
        with response:
            try:
                for line in response.iter_lines(chunk_size=RESULTS_CHUNK_BYTES):
                    if line.strip():
                        yield line
            except requests.RequestException:
                raise ApiUnreachable(self.base_url, "the connection broke mid-answer") from None


def _json_object(response: requests.Response) -> JsonObject:
    try:
        body = response.json()
    except ValueError:
        raise ApiError(response.status_code, "bad_response", "the API answered non-JSON") from None
    if not isinstance(body, dict):
        raise ApiError(response.status_code, "bad_response", "the API answered non-object")
    return body


def _connection_reason(exc: requests.ConnectionError) -> str:
    """A short reason: requests nests urllib3's exceptions several levels deep."""
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "timed out"
    return "connection failed"
