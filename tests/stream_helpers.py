"""Helpers for tests that tail streams: WebSocket connections and reading until close."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.processes import ApiProcess
from tests.waiting import wait_for


def open_tail(
    api: ApiProcess, path: str, token: str | None, *, after: str | None = None
) -> ClientConnection:
    """A WebSocket to ``path`` (e.g. ``/api/v1/runs/<id>/stream``), token in the header.

    Reading with ``read_until`` / ``read_until_closed`` keeps the opening message apart."""
    query = f"?after={after}" if after is not None else ""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return connect(
        f"{api.ws_url}{path}{query}",
        additional_headers=headers,
        proxy=None,
        compression=None,
        open_timeout=10,
    )


@dataclass
class Received:
    events: list[dict[str, Any]] = field(default_factory=list)
    opening: dict[str, Any] | None = None  # the stream's first message, {"tail": {...}}
    close_code: int | None = None
    close_reason: str | None = None

    def add(self, message: str | bytes) -> dict[str, Any] | None:
        """Keep an event (returned) or the opening message (None)."""
        decoded: dict[str, Any] = json.loads(message)
        if "tail" in decoded:
            assert self.opening is None, "a second opening message"
            assert not self.events, "the opening message after events"
            self.opening = decoded["tail"]
            return None
        self.events.append(decoded)
        return decoded

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]


def read_until_closed(ws: ClientConnection, timeout: float = 120) -> Received:
    """Every message until the server closes; raises TimeoutError if it never does."""
    received = Received()
    try:
        while True:
            received.add(ws.recv(timeout=timeout))
    except ConnectionClosed as closed:
        if closed.rcvd is not None:
            received.close_code, received.close_reason = closed.rcvd.code, closed.rcvd.reason
    return received


def read_until(
    ws: ClientConnection, stop: Any, received: Received, timeout: float = 120
) -> Received:
    """Messages into ``received`` until ``stop(event)`` is true for one of them."""
    while True:
        event = received.add(ws.recv(timeout=timeout))
        if event is not None and stop(event):
            return received


def history(
    api: ApiProcess, path: str, token: str, after: str | None = None
) -> list[dict[str, Any]]:
    """Every event of ``path`` (``/api/v1/runs/<id>/events``), following the pages."""
    events: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"limit": 500}
        if after is not None:
            params["after"] = after
        response = requests.get(
            f"{api.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        page = response.json()
        events.extend(page["events"])
        if len(page["events"]) < 500:
            return events
        after = page["next_after"]


def history_through(api: ApiProcess, path: str, token: str, last_id: str) -> list[dict[str, Any]]:
    """The history once it holds ``last_id``: a lifecycle event is published right after
    its change commits, and its own PostgreSQL copy follows a moment later."""

    def settled() -> list[dict[str, Any]] | None:
        events = history(api, path, token)
        return events if any(e["id"] == last_id for e in events) else None

    return wait_for(settled, timeout=30, interval=0.1, what=f"event {last_id} in {path}")


def run_history(api: ApiProcess, run_id: str, token: str) -> list[dict[str, Any]]:
    """A finished run's whole history, once its ``ccq.run.finished`` event is in it."""

    def settled() -> list[dict[str, Any]] | None:
        events = history(api, f"/api/v1/runs/{run_id}/events", token)
        return events if events and events[-1]["type"] == "ccq.run.finished" else None

    return wait_for(settled, timeout=180, interval=0.1, what=f"run {run_id}'s whole history")


def api_post(
    api: ApiProcess, path: str, token: str, body: dict[str, Any], status: int = 201
) -> dict[str, Any]:
    response = requests.post(
        f"{api.url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == status, f"POST {path}: {response.status_code} {response.text}"
    reply: dict[str, Any] = response.json()
    return reply
