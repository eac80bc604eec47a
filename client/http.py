"""The ccq HTTP API as typed methods: the CLI, the demo and the tests call it.

Every failure comes out as :class:`~client.errors.ApiError` or
:class:`~client.errors.ApiUnreachable`. A 429 or 503 that says how long to wait is
waited out and sent again (:mod:`client.retry`), so a caller sees only what a person
must decide about.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import requests

from client.config import resolve
from client.errors import ApiError, ApiUnreachable, error_from_body
from client.pagination import collect, iter_items
from client.retry import RetryPolicy, parse_retry_after
from client.tail import Follower, Kind

JsonObject = dict[str, Any]

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# The API waits at most this long on `?wait=` (CCQ_MAX_WAIT_SECONDS, 300 s by default).
MAX_WAIT_SECONDS = 300.0
# A 10,000-item batch is checked, inserted and queued before the API answers.
BATCH_UPLOAD_READ_TIMEOUT = 300.0
# Results come in pieces as PostgreSQL gives them; lines are JSON objects, never split.
RESULTS_CHUNK_BYTES = 64 * 1024


class ApiClient:
    """The ccq API as methods; each returns the decoded JSON body of a success.

    Args:
        retry: how 429 and 503 answers are waited out (``client.retry.NO_RETRY``: never).
        sleep: how a wait is spent (tests pass a stub).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        http: requests.Session | None = None,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token  # live tails send it on their WebSocket handshake
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = http or requests.Session()
        self._http.headers["Authorization"] = f"Bearer {token}"
        self._http.headers["Accept"] = "application/json"

    @classmethod
    def from_environment(cls, api_url: str | None = None, token: str | None = None) -> ApiClient:
        """A client for the API and token ccq finds (:func:`client.config.resolve`)."""
        config = resolve(api_url, token)
        return cls(config.api_url, config.token)

    def follower(
        self,
        kind: Kind,
        object_id: str,
        *,
        after: str | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> Follower:
        """A live tail of a run, a session or a batch with this client's URL and token."""
        follower = Follower(self.base_url, self.token, kind, object_id, after=after)
        if notify is not None:
            follower.notify = notify
        return follower

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
        as ApiError or ApiUnreachable, after the retries the policy allows.

        A body read from a file is sent again from where it started, or not retried if
        the file cannot go back there (stdin).
        """
        start = _position(data)
        replayable = data is None or isinstance(data, bytes) or start is not None
        attempt = 0
        while True:
            try:
                return self._attempt(
                    method, path, params, json, data, headers, read_timeout, stream
                )
            except ApiError as error:
                delay = self.retry.delay(attempt, error.status, error.retry_after)
                if delay is None or not replayable:
                    raise
            self._sleep(delay)
            if start is not None and not isinstance(data, bytes | None):
                data.seek(start)
            attempt += 1

    def _attempt(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json: JsonObject | None,
        data: bytes | IO[bytes] | None,
        headers: dict[str, str] | None,
        read_timeout: float,
        stream: bool,
    ) -> requests.Response:
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

    def ready(self) -> JsonObject:
        """``GET /readyz``: ``{"status": "ready"}``, or ApiError 503 whose ``details`` name
        each dependency that is down."""
        return self._call("GET", "/readyz")

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

    def sessions(
        self, *, status: str | None = None, limit: int | None = None, all_pages: bool = False
    ) -> tuple[list[JsonObject], str | None]:
        """The first page of sessions (every page with ``all_pages``), and the cursor of
        the page after them (None: there is no more)."""
        found = collect(
            lambda cursor: self.list_sessions(status=status, limit=limit, cursor=cursor),
            "sessions",
            all_pages=all_pages,
        )
        return found.items, found.next_cursor

    def iter_sessions(self, **filters: Any) -> Iterator[JsonObject]:
        """Every session matching ``filters`` (as :meth:`list_sessions` takes them), newest
        first, a page read at a time."""
        return iter_items(lambda cursor: self.list_sessions(cursor=cursor, **filters), "sessions")

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

    def batches(
        self, *, limit: int | None = None, all_pages: bool = False
    ) -> tuple[list[JsonObject], str | None]:
        """The first page of batches (every page with ``all_pages``), and the next cursor."""
        found = collect(
            lambda cursor: self.list_batches(limit=limit, cursor=cursor),
            "batches",
            all_pages=all_pages,
        )
        return found.items, found.next_cursor

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


def _position(data: bytes | IO[bytes] | None) -> int | None:
    """Where a file body starts, if it can be read again from there."""
    if data is None or isinstance(data, bytes):
        return None
    try:
        return data.tell() if data.seekable() else None
    except (OSError, ValueError):
        return None


def _error_from(response: requests.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return error_from_body(response.status_code, body, response.reason or "", retry_after)


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
