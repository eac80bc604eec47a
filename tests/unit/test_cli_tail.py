"""The live tail client (cli/tail.py): its pure decisions, and the follower against a small
scripted WebSocket server in this process (each connection plays the next script)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from client.tail import (
    Action,
    Backoff,
    Decision,
    Follower,
    Kind,
    TailError,
    TailTimeout,
    is_after,
    on_close,
    on_refused,
    resume_point,
    stream_url,
    ws_url,
)
from tests.waiting import free_port

RUN_ID = "6f00a5d8-e9a9-42a7-9eee-86853fdc2374"
SESSION_ID = "3a4e0109-5de1-4ad0-9286-57bf952c75c1"

# --- URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_url", "expected"),
    [
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080"),
        ("https://ccq.example.com/", "wss://ccq.example.com"),
        ("HTTPS://ccq.example.com/prefix/", "wss://ccq.example.com/prefix"),
        ("ws://localhost:1", "ws://localhost:1"),
    ],
)
def test_ws_url_swaps_the_scheme_and_keeps_the_rest(api_url: str, expected: str) -> None:
    assert ws_url(api_url) == expected


@pytest.mark.parametrize("api_url", ["ftp://host", "localhost:8080", "http://"])
def test_ws_url_refuses_what_is_not_an_http_url(api_url: str) -> None:
    with pytest.raises(TailError, match="the API URL must be"):
        ws_url(api_url)


def test_stream_url_names_the_object_and_the_cursor() -> None:
    api = "https://ccq.example.com/"
    assert stream_url(api, Kind.RUN, RUN_ID) == f"wss://ccq.example.com/api/v1/runs/{RUN_ID}/stream"
    assert stream_url(api, Kind.SESSION, SESSION_ID, "0-0") == (
        f"wss://ccq.example.com/api/v1/sessions/{SESSION_ID}/stream?after=0-0"
    )


# --- what a close means ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "action"),
    [
        (None, "", Action.RETRY),  # no close frame: the server went away or we stalled
        (1000, "run finished", Action.DONE),
        (4408, "too far behind; resume with after=17-3", Action.RETRY),
        (4503, "event store unavailable; resume with after=17-3", Action.RETRY),
        (1011, "internal error", Action.RETRY),
        (1008, "no pong to the last ping", Action.RETRY),
        (1001, "", Action.RETRY),
        (4400, "after: must be an event id like 1700000000000-0", Action.FAIL),
        (4401, "token expired", Action.FAIL),
        (4404, f"run {RUN_ID} not found", Action.FAIL),
        (4410, f"session {SESSION_ID} was deleted", Action.FAIL),
        (1009, "", Action.FAIL),
        (4999, "something new", Action.FAIL),
    ],
)
def test_each_close_code_has_one_action(code: int | None, reason: str, action: Action) -> None:
    assert on_close(code, reason).action is action


def test_a_resume_hint_in_the_reason_is_kept() -> None:
    assert on_close(4408, "too far behind; resume with after=17-3").after == "17-3"
    assert on_close(4503, "event store unavailable").after is None
    assert resume_point("resume with after=1700000000000-12") == "1700000000000-12"


def test_errors_name_the_servers_reason() -> None:
    assert on_close(4404, f"run {RUN_ID} not found").why == f"run {RUN_ID} not found"
    assert on_close(4410, f"session {SESSION_ID} was deleted").why.endswith("was deleted")
    assert on_close(4400, "after: bad").why == "invalid tail request: after: bad"
    unauthorized = on_close(4401, "token expired").why
    assert unauthorized.startswith("not authorized: token expired")
    assert "CCQ_TOKEN" in unauthorized
    assert on_close(4999, "new").why == "the stream closed with code 4999: new"


@pytest.mark.parametrize(
    ("status", "action"),
    [(502, Action.RETRY), (503, Action.RETRY), (429, Action.RETRY), (401, Action.FAIL)],
)
def test_a_refused_handshake_is_retried_only_when_it_may_pass(status: int, action: Action) -> None:
    assert on_refused(status).action is action


def test_a_404_handshake_says_the_url_may_be_wrong() -> None:
    assert on_refused(404) == Decision(
        Action.FAIL, "no stream at this URL (HTTP 404); is it the ccq API?"
    )


def test_event_order_follows_stream_ids() -> None:
    assert is_after("17-4", "17-3")
    assert is_after("18-0", "17-99")
    assert not is_after("17-3", "17-3")
    assert not is_after("9-9", "17-3")  # numbers, not strings
    assert is_after("17-0", None)


# --- backoff --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_backoff_doubles_to_its_cap_then_gives_up() -> None:
    clock = Clock()
    backoff = Backoff(first=0.5, cap=10, give_up=60, clock=clock)
    delays = []
    while (delay := backoff.next_delay()) is not None:
        delays.append(delay)
        clock.sleep(delay)
    assert delays[:7] == [0.5, 1, 2, 4, 8, 10, 10]
    assert 60 <= sum(delays) < 70


def test_backoff_reset_starts_a_new_outage() -> None:
    clock = Clock()
    backoff = Backoff(first=0.5, cap=10, give_up=60, clock=clock)
    for _ in range(3):
        backoff.next_delay()
    clock.sleep(59)
    backoff.reset()
    assert not backoff.in_outage
    clock.sleep(100)
    assert backoff.next_delay() == 0.5


# --- the follower against a scripted server -------------------------------------------

Script = Callable[[ServerConnection], None]


def _event(n: int, kind: str = "stream_event") -> dict[str, Any]:
    return {"id": f"100-{n}", "session_id": SESSION_ID, "run_id": RUN_ID, "seq": n, "type": kind}


def _open(ws: ServerConnection, after: str | None = None) -> None:
    """The opening message: the request's ``after``, else the stream's start ``100-0``."""
    query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
    start = after or query.get("after", ["100-0"])[0]
    ws.send(json.dumps({"tail": {"session_id": SESSION_ID, "run_id": RUN_ID, "after": start}}))


def _send(ws: ServerConnection, *numbers: int) -> None:
    for n in numbers:
        ws.send(json.dumps(_event(n)))


def _drop(ws: ServerConnection) -> None:
    """Go away without a close frame (a crashed or restarted server)."""
    ws.close_socket()


class ScriptedServer:
    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.paths: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.refuse_with: list[int] = []  # HTTP statuses for the next handshakes

    def _handle(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        script = self.scripts.pop(0)
        script(ws)

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.refuse_with:
            status = self.refuse_with.pop(0)
            return ws.respond(status, "unavailable\n")
        return None

    def follower(self, kind: Kind = Kind.RUN, **kwargs: Any) -> Follower:
        clock = Clock()
        return Follower(
            self.url,
            "a-token",
            kind,
            RUN_ID,
            backoff=Backoff(first=0.5, cap=10, give_up=30, clock=clock),
            sleep=clock.sleep,
            **kwargs,
        )

    def afters(self) -> list[str | None]:
        return [parse_qs(urlsplit(p).query).get("after", [None])[0] for p in self.paths]


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    ws_server: Server = serve(
        scripted._handle,
        "127.0.0.1",
        scripted.port,
        process_request=scripted._process_request,
        compression=None,
    )
    thread = threading.Thread(target=ws_server.serve_forever, daemon=True)
    thread.start()
    yield scripted
    ws_server.shutdown()
    thread.join(timeout=5)


class Collected:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.notes: list[str] = []
        self.openings: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any], raw: str) -> None:
        self.events.append(event)
        self.raw.append(raw)

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]


def test_a_run_stream_is_followed_to_its_normal_close(server: ScriptedServer) -> None:
    def script(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 1, 2, 3)
        ws.close(1000, "run finished")

    server.scripts = [script]
    got = Collected()
    follower = server.follower(notify=got.notes.append)

    reason = follower.follow(got, on_open=got.openings.append)

    assert reason == "run finished"
    assert got.seqs == [1, 2, 3]
    assert json.loads(got.raw[0]) == _event(1)  # the message as sent
    assert got.openings == [{"session_id": SESSION_ID, "run_id": RUN_ID, "after": "100-0"}]
    assert server.paths == [f"/api/v1/runs/{RUN_ID}/stream"]
    assert follower.after == "100-3"
    assert got.notes == []


def test_a_dropped_connection_resumes_after_the_last_event(server: ScriptedServer) -> None:
    def first(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 1, 2)
        _drop(ws)

    def second(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 2, 3)  # a server repeating itself: not handed on twice
        ws.close(1000, "run finished")

    server.scripts = [first, second]
    got = Collected()

    server.follower(notify=got.notes.append).follow(got, on_open=got.openings.append)

    assert got.seqs == [1, 2, 3]
    assert server.afters() == [None, "100-2"]
    assert got.notes == ["the connection dropped; reconnecting", "reconnected"]
    assert len(got.openings) == 1  # told once, not on every connection


def test_a_break_before_any_event_resumes_where_the_stream_said_it_starts(
    server: ScriptedServer,
) -> None:
    def first(ws: ServerConnection) -> None:
        _open(ws, after="99-7")  # a session's live end, chosen by the server
        _drop(ws)

    def second(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 1)
        ws.close(1000)

    server.scripts = [first, second]
    got = Collected()
    server.follower(Kind.SESSION).follow(got)

    assert server.afters() == [None, "99-7"]
    assert server.paths[0] == f"/api/v1/sessions/{RUN_ID}/stream"
    assert got.seqs == [1]


@pytest.mark.parametrize("code", [4408, 4503, 1011])
def test_too_slow_unavailable_and_internal_errors_resume(server: ScriptedServer, code: int) -> None:
    def first(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 1, 2, 3)
        ws.close(code, "resume with after=100-3")

    def second(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 4)
        ws.close(1000)

    server.scripts = [first, second]
    got = Collected()
    server.follower().follow(got)

    assert got.seqs == [1, 2, 3, 4]
    assert server.afters() == [None, "100-3"]


@pytest.mark.parametrize(
    ("code", "reason"),
    [(4404, f"run {RUN_ID} not found"), (4410, f"session {SESSION_ID} was deleted")],
)
def test_not_found_and_deleted_end_the_tail_with_the_reason(
    server: ScriptedServer, code: int, reason: str
) -> None:
    def script(ws: ServerConnection) -> None:
        ws.close(code, reason)

    server.scripts = [script]
    with pytest.raises(TailError) as raised:
        server.follower().follow(Collected())
    assert str(raised.value) == reason
    assert len(server.paths) == 1  # not retried


def test_a_busy_proxy_is_retried_until_the_api_answers(server: ScriptedServer) -> None:
    def script(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 1)
        ws.close(1000)

    server.refuse_with = [503, 502]
    server.scripts = [script]
    got = Collected()
    server.follower(notify=got.notes.append).follow(got)

    assert got.seqs == [1]
    assert got.notes == ["the API answered HTTP 503; reconnecting", "reconnected"]


def test_a_refused_connection_is_retried_then_given_up_with_a_clear_message() -> None:
    clock = Clock()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.sleep(seconds)

    notes: list[str] = []
    follower = Follower(
        f"http://127.0.0.1:{free_port()}",
        "a-token",
        Kind.RUN,
        RUN_ID,
        notify=notes.append,
        backoff=Backoff(first=0.5, cap=10, give_up=30, clock=clock),
        sleep=sleep,
    )
    with pytest.raises(TailError) as raised:
        follower.follow(Collected())

    assert str(raised.value) == "gave up reconnecting after 30s (connection refused)"
    assert sleeps == [0.5, 1, 2, 4, 8, 10, 10]
    assert notes == ["connection refused; reconnecting"]


def test_a_deadline_ends_a_quiet_tail(server: ScriptedServer) -> None:
    def script(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 1)
        ws.recv()  # until the client leaves

    server.scripts = [script]
    got = Collected()
    started = time.monotonic()
    with pytest.raises(TailTimeout):
        server.follower().follow(got, deadline=time.monotonic() + 0.5)
    assert got.seqs == [1]
    assert time.monotonic() - started < 5


def test_the_token_goes_in_the_authorization_header(server: ScriptedServer) -> None:
    seen: list[Headers] = []

    def script(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append(ws.request.headers)
        ws.close(1000)

    server.scripts = [script]
    assert server.follower().follow(Collected()) == "closed"
    assert seen[0]["Authorization"] == "Bearer a-token"


def test_what_the_handler_raises_is_not_taken_for_a_broken_connection(
    server: ScriptedServer,
) -> None:
    def script(ws: ServerConnection) -> None:
        _open(ws)
        _send(ws, 1, 2)
        ws.recv()  # until the client leaves

    def closed_stdout(event: dict[str, Any], raw: str) -> None:
        raise BrokenPipeError(32, "Broken pipe")  # an OSError, like a refused connection

    server.scripts = [script]
    with pytest.raises(BrokenPipeError):
        server.follower().follow(closed_stdout)
    assert len(server.paths) == 1
