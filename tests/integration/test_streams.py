"""Live tails over WebSockets on the real stack: a real `ccq api` (gevent), a real worker
running the real Claude Code CLI against the scripted model server, Redis and PostgreSQL.

Every check compares what a tail received with the history endpoint, event ID by ID.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis
import requests
import websockets

from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.settings import Settings
from orchestrator.streams.events import stream_key
from tests.processes import ApiProcess, WorkerProcess, stack_environment
from tests.stream_helpers import (
    Received,
    api_post,
    history,
    open_tail,
    read_until,
    read_until_closed,
    run_history,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def token(settings: Settings) -> str:
    return mint_token(settings, "alice")


@pytest.fixture(scope="module")
def other_token(settings: Settings) -> str:
    return mint_token(settings, "mallory")


def _start(api: ApiProcess, token: str, prompt: str) -> tuple[str, str]:
    """Create a session with a first prompt; return (session id, run id)."""
    reply = api_post(api, "/api/v1/sessions", token, {"prompt": prompt})
    return reply["session"]["id"], reply["run"]["id"]


# --- a run's stream ---------------------------------------------------------------------


def test_a_run_stream_sends_the_whole_run_in_order_then_closes(
    api_server: ApiProcess, token: str
) -> None:
    _, run_id = _start(api_server, token, "[[stream 20 0.02]] go")
    with open_tail(api_server, f"/api/v1/runs/{run_id}/stream", token) as ws:
        received = read_until_closed(ws)

    assert received.close_code == 1000, received.close_reason
    assert received.ids == [e["id"] for e in run_history(api_server, run_id, token)]
    types = [e["type"] for e in received.events]
    assert types[0] == "ccq.run.queued"
    assert types[1] == "ccq.run.started"
    assert types[-1] == "ccq.run.finished"
    assert received.events[-1]["data"]["status"] == "succeeded"
    assert [e["seq"] for e in received.events] == list(range(len(received.events)))
    deltas = [
        e["data"]["event"]["delta"]["text"]
        for e in received.events
        if e["type"] == "stream_event" and e["data"]["event"].get("type") == "content_block_delta"
    ]
    assert "".join(deltas).count("chunk") == 20


@pytest.fixture
def own_api(
    settings: Settings, model_server: ModelServer, tmp_path: Path
) -> Iterator[Callable[..., ApiProcess]]:
    """Starts an API process of this test's own (which it may restart or starve), with
    extra settings; stops them all afterwards."""
    started: list[ApiProcess] = []

    def start(**env: str) -> ApiProcess:
        api = ApiProcess(
            {**stack_environment(settings, model_server), **env},
            tmp_path / f"api-{len(started)}.log",
        )
        started.append(api)
        api.wait_ready()
        return api

    yield start
    for api in started:
        api.stop()


def test_reconnecting_with_the_last_id_loses_and_repeats_nothing_across_an_api_restart(
    own_api: Callable[..., ApiProcess], worker: WorkerProcess, token: str
) -> None:
    api = own_api()
    _, run_id = _start(api, token, "[[stream 80 0.05]] a long answer")
    path = f"/api/v1/runs/{run_id}/stream"
    with open_tail(api, path, token) as ws:  # first connection: a few events, then gone
        first = read_until(ws, lambda e: e["seq"] >= 8, Received())
    with open_tail(api, path, token, after=first.ids[-1]) as ws:
        second = read_until(ws, lambda e: e["seq"] >= 30, Received())
    assert second.opening is not None
    assert second.opening["after"] == first.ids[-1]
    api.restart()  # the process that served those tails is gone
    with open_tail(api, path, token, after=second.ids[-1]) as ws:
        rest = read_until_closed(ws)

    assert rest.close_code == 1000
    expected = [e["id"] for e in run_history(api, run_id, token)]
    assert first.ids + second.ids + rest.ids == expected
    assert rest.events[-1]["type"] == "ccq.run.finished"


def test_a_tail_opened_after_redis_lost_the_stream_gets_the_run_from_postgresql(
    api_server: ApiProcess, settings: Settings, token: str
) -> None:
    session_id, run_id = _start(api_server, token, "[[stream 10]] remembered")
    run_history(api_server, run_id, token)  # finished, and all of it in PostgreSQL
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert client.delete(stream_key(session_id)) == 1
    finally:
        client.close()

    with open_tail(api_server, f"/api/v1/runs/{run_id}/stream", token) as ws:
        received = read_until_closed(ws)

    assert received.close_code == 1000
    expected = run_history(api_server, run_id, token)
    assert received.ids == [e["id"] for e in expected]
    assert received.events == expected  # the same objects, not just the same IDs
    assert received.events[-1]["type"] == "ccq.run.finished"


# --- a session's stream -----------------------------------------------------------------


def test_a_session_stream_starts_live_and_spans_runs(api_server: ApiProcess, token: str) -> None:
    session_id, first_run = _start(api_server, token, "first")
    run_history(api_server, first_run, token)
    with open_tail(api_server, f"/api/v1/sessions/{session_id}/stream", token) as ws:
        opening = json.loads(ws.recv(timeout=30))["tail"]  # live from here on
        assert opening["after"] == run_history(api_server, first_run, token)[-1]["id"]
        second = api_post(
            api_server, f"/api/v1/sessions/{session_id}/runs", token, {"prompt": "second"}, 202
        )["run"]
        received = read_until(
            ws,
            lambda e: e["type"] == "ccq.run.finished" and e["run_id"] == second["id"],
            Received(),
        )

    assert {e["run_id"] for e in received.events} == {second["id"]}  # nothing from before
    run_history(api_server, second["id"], token)
    session_history = history(api_server, f"/api/v1/sessions/{session_id}/events", token)
    assert received.ids == [e["id"] for e in session_history if e["run_id"] == second["id"]]
    assert {e["run_id"] for e in session_history} == {first_run, second["id"]}

    # ...and replays from any event ID of the session, across both runs.
    first_id = session_history[0]["id"]
    with open_tail(
        api_server, f"/api/v1/sessions/{session_id}/stream", token, after=first_id
    ) as ws:
        replay = read_until(
            ws, lambda e: e["id"] == session_history[-1]["id"], Received(), timeout=30
        )
    assert replay.ids == [e["id"] for e in session_history[1:]]


def test_a_hundred_tails_of_one_streaming_run_each_receive_every_event(
    api_server: ApiProcess, token: str
) -> None:
    session = api_post(api_server, "/api/v1/sessions", token, {})["session"]
    url = f"{api_server.ws_url}/api/v1/sessions/{session['id']}/stream"
    headers = {"Authorization": f"Bearer {token}"}

    async def tail(opened: asyncio.Event, count: list[int]) -> list[str]:
        async with websockets.connect(
            url, additional_headers=headers, proxy=None, compression=None, max_queue=None
        ) as ws:
            assert "tail" in json.loads(await ws.recv())  # the server's cursor is set: live
            count[0] += 1
            if count[0] == 100:
                opened.set()
            ids = []
            async for message in ws:
                event = json.loads(message)
                ids.append(event["id"])
                if event["type"] == "ccq.run.finished":
                    return ids
        raise AssertionError("the stream closed before the run finished")

    async def main() -> tuple[list[list[str]], str]:
        opened, count = asyncio.Event(), [0]
        tails = [asyncio.create_task(tail(opened, count)) for _ in range(100)]
        await asyncio.wait_for(opened.wait(), 60)
        run = await asyncio.to_thread(
            api_post,
            api_server,
            f"/api/v1/sessions/{session['id']}/runs",
            token,
            {"prompt": "[[stream 50 0.01]] many listeners"},
            202,
        )
        return list(await asyncio.wait_for(asyncio.gather(*tails), 180)), run["run"]["id"]

    results, run_id = asyncio.run(main())

    expected = [e["id"] for e in run_history(api_server, run_id, token)]
    assert len(expected) > 50
    assert all(ids == expected for ids in results)


def _stalled_tail(api: ApiProcess, path: str, token: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", api.port))
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    assert b"101" in sock.recv(12)  # switching protocols; from here on it reads nothing
    return sock


def test_a_stalled_client_delays_neither_the_run_nor_other_tails_and_is_cut_off(
    own_api: Callable[..., ApiProcess], worker: WorkerProcess, token: str
) -> None:
    api = own_api(CCQ_TAIL_SEND_TIMEOUT="2")
    session = api_post(api, "/api/v1/sessions", token, {})["session"]
    path = f"/api/v1/sessions/{session['id']}/stream"
    with closing(_stalled_tail(api, path, token)) as stalled:
        with open_tail(api, path, token) as ws:
            assert "tail" in json.loads(ws.recv(timeout=30))  # live from here on
            run = api_post(
                api,
                f"/api/v1/sessions/{session['id']}/runs",
                token,
                {"prompt": "[[stream 3000]] more than the stalled client's buffers hold"},
                202,
            )["run"]
            received = read_until(
                ws, lambda e: e["type"] == "ccq.run.finished", Received(), timeout=180
            )
        assert received.events[-1]["data"]["status"] == "succeeded"
        assert received.ids == [e["id"] for e in run_history(api, run["id"], token)]

        # Meanwhile the server gave up on the stalled client: it says so, and draining
        # the socket now ends in EOF instead of waiting for more.
        wait_for(
            lambda: "tail client stalled" in api.log_path.read_text(),
            timeout=60,
            what="the API to cut off the stalled client",
        )
        stalled.settimeout(30)
        while stalled.recv(1 << 20):
            pass


# --- bad requests ----------------------------------------------------------------------


def _refused(api: ApiProcess, path: str, token: str | None, after: str | None = None) -> Received:
    with open_tail(api, path, token, after=after) as ws:
        return read_until_closed(ws, timeout=30)


def test_bad_tails_are_closed_with_a_code_and_a_reason_and_nothing_else(
    api_server: ApiProcess, token: str, other_token: str
) -> None:
    session_id, run_id = _start(api_server, token, "mine")
    session_path = f"/api/v1/sessions/{session_id}/stream"

    cases = {
        "no token": (_refused(api_server, session_path, None), 4401, "missing bearer token"),
        "bad token": (_refused(api_server, session_path, "not-a-jwt"), 4401, "token"),
        "other owner": (_refused(api_server, session_path, other_token), 4404, "not found"),
        "other owner's run": (
            _refused(api_server, f"/api/v1/runs/{run_id}/stream", other_token),
            4404,
            "not found",
        ),
        "unknown run": (
            _refused(api_server, "/api/v1/runs/00000000-0000-4000-8000-000000000000/stream", token),
            4404,
            "not found",
        ),
        "malformed after": (
            _refused(api_server, session_path, token, after="yesterday"),
            4400,
            "after: must be an event id",
        ),
    }
    for name, (received, code, reason) in cases.items():
        assert received.events == [], name
        assert received.opening is None, name
        assert received.close_code == code, (name, received.close_reason)
        assert reason in (received.close_reason or ""), (name, received.close_reason)


def test_browsers_may_pass_the_token_as_a_query_parameter(
    api_server: ApiProcess, token: str
) -> None:
    from websockets.sync.client import connect

    _, run_id = _start(api_server, token, "hello from a browser")
    url = f"{api_server.ws_url}/api/v1/runs/{run_id}/stream?access_token={token}"
    with connect(url, proxy=None) as ws:
        received = read_until_closed(ws)
    assert received.close_code == 1000
    assert received.events[-1]["type"] == "ccq.run.finished"


def test_a_cancelled_queued_run_and_a_deleted_session_end_their_streams(
    api_server: ApiProcess, token: str
) -> None:
    session_id, _ = _start(api_server, token, "[[sleep 3]] slow first")
    queued = api_post(
        api_server, f"/api/v1/sessions/{session_id}/runs", token, {"prompt": "never"}, 202
    )["run"]
    api_post(api_server, f"/api/v1/runs/{queued['id']}/cancel", token, {}, 202)
    with open_tail(api_server, f"/api/v1/runs/{queued['id']}/stream", token) as ws:
        cancelled = read_until_closed(ws, timeout=30)
    assert [e["type"] for e in cancelled.events] == ["ccq.run.queued", "ccq.run.finished"]
    assert cancelled.events[-1]["data"]["status"] == "cancelled"
    assert cancelled.close_code == 1000

    with open_tail(api_server, f"/api/v1/sessions/{session_id}/stream", token) as ws:
        # The opening message comes once the server has found the session: deleting it
        # before then would be a tail of an unknown session (4404), not a deleted one.
        assert "tail" in json.loads(ws.recv(timeout=30))
        response = requests.delete(
            f"{api_server.url}/api/v1/sessions/{session_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 202
        gone = read_until_closed(ws, timeout=60)
    assert gone.close_code == 4410, gone.close_reason
    assert gone.events[-1]["type"] == "ccq.session.deleted"
