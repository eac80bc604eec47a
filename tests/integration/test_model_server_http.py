"""The scripted model server over real HTTP on 127.0.0.1 (no Docker or CLI needed)."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model_server.recording import fingerprint
from model_server.server import ModelServer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

API_KEY = "sk-ant-test-secret"
TIMEOUT = 10.0


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with ModelServer() as srv:
        yield srv


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return parse_sse(self.body.decode())


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in text.split("\n\n"):
        if not frame:
            continue
        event, data = frame.split("\n")
        assert event.startswith("event: ")
        assert data.startswith("data: ")
        events.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def request(
    srv: ModelServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Response:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(
            method,
            path,
            body=data,
            headers={"content-type": "application/json", "x-api-key": API_KEY, **(headers or {})},
        )
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        if own:
            conn.close()


def messages_body(*texts: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    messages = []
    for i, text in enumerate(texts):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return {
        "model": "claude-test-1",
        "max_tokens": 100,
        "messages": messages,
        "stream": stream,
        **extra,
    }


def post_messages(srv: ModelServer, *texts: str, stream: bool = False, **extra: Any) -> Response:
    return request(
        srv, "POST", "/v1/messages?beta=true", messages_body(*texts, stream=stream, **extra)
    )


def text_of_stream(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        d["delta"]["text"]
        for name, d in events
        if name == "content_block_delta" and d["delta"]["type"] == "text_delta"
    )


# -- the Messages API -------------------------------------------------------------------------


def test_healthz(server: ModelServer) -> None:
    resp = request(server, "GET", "/_ccq/healthz")
    assert (resp.status, resp.json()) == (200, {"ok": True})


def test_echo_plain_json(server: ModelServer) -> None:
    resp = post_messages(server, "first", "reply", "hello [[echo]]")
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["request-id"].startswith("req_")
    message = resp.json()
    assert message["id"].startswith("msg_")
    assert message["role"] == "assistant"
    assert message["model"] == "claude-test-1"
    assert message["content"] == [{"type": "text", "text": "echo (messages=3): hello"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["input_tokens"] > 1
    assert message["usage"]["output_tokens"] >= 1


def test_echo_stream(server: ModelServer) -> None:
    resp = post_messages(server, "hello", stream=True)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["request-id"].startswith("req_")
    events = resp.events()
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["model"] == "claude-test-1"
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["cache_creation_input_tokens"] == 0
    assert text_of_stream(events) == "echo (messages=1): hello"
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"]["output_tokens"] >= 1


def test_stream_chunks_are_paced(server: ModelServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request(
            "POST", "/v1/messages", json.dumps(messages_body("[[stream 3 0.2]]", stream=True))
        )
        resp = conn.getresponse()
        arrivals: dict[str, float] = {}
        buffer = ""
        while line := resp.readline().decode():
            buffer += line
            if line.startswith("data: ") and '"text_delta"' in line:
                arrivals[json.loads(line[6:])["delta"]["text"]] = time.monotonic()
    finally:
        conn.close()
    assert list(arrivals) == ["chunk 1/3 ", "chunk 2/3 ", "chunk 3/3 "]
    times = list(arrivals.values())
    assert times[1] - times[0] >= 0.15
    assert times[2] - times[1] >= 0.15
    assert text_of_stream(parse_sse(buffer)) == "chunk 1/3 chunk 2/3 chunk 3/3 "


def test_stream_directive_without_streaming_waits_then_answers(server: ModelServer) -> None:
    started = time.monotonic()
    resp = post_messages(server, "[[stream 3 0.1]]")
    assert time.monotonic() - started >= 0.2
    assert resp.json()["content"][0]["text"] == "chunk 1/3 chunk 2/3 chunk 3/3 "


@pytest.mark.parametrize("stream", [False, True])
def test_sleep_then_echo(server: ModelServer, stream: bool) -> None:
    started = time.monotonic()
    resp = post_messages(server, "[[sleep 0.3]] late", stream=stream)
    assert time.monotonic() - started >= 0.3
    assert resp.status == 200
    text = text_of_stream(resp.events()) if stream else resp.json()["content"][0]["text"]
    assert text == "echo (messages=1): late"


def test_tool_use_stream(server: ModelServer) -> None:
    prompt = (
        '[[tool Bash {"command": "echo \'{[nested]}\'", "timeout": 5}]] '
        '[[tool Read {"file_path": "/a"}]]'
    )
    events = post_messages(server, prompt, stream=True).events()
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [(b["type"], b["name"], b["input"]) for b in starts] == [
        ("tool_use", "Bash", {}),
        ("tool_use", "Read", {}),
    ]
    assert all(b["id"].startswith("toolu_") for b in starts)
    for index, expected in enumerate(
        [{"command": "echo '{[nested]}'", "timeout": 5}, {"file_path": "/a"}]
    ):
        partial = "".join(
            d["delta"]["partial_json"]
            for n, d in events
            if n == "content_block_delta" and d["index"] == index
        )
        assert json.loads(partial) == expected
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_tool_use_plain_json(server: ModelServer) -> None:
    message = post_messages(server, '[[tool Bash {"command": "ls"}]]').json()
    assert message["stop_reason"] == "tool_use"
    [block] = message["content"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "Bash", {"command": "ls"})


def test_tool_result_is_answered(server: ModelServer) -> None:
    body = messages_body('[[tool Bash {"command": "echo hi"}]]', stream=True)
    body["messages"] += [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "hi\n"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": "no",
                    "is_error": True,
                },
            ],
        },
        {"role": "system", "content": "# Environment"},
    ]
    events = request(server, "POST", "/v1/messages", body).events()
    assert text_of_stream(events) == "tool result: hi\ntool error: no"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_error_directive(server: ModelServer, status: int, kind: str, stream: bool) -> None:
    resp = post_messages(server, f"[[error {status}]]", stream=stream)
    assert resp.status == status
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-should-retry"] == "false"
    assert resp.json() == {
        "type": "error",
        "error": {"type": kind, "message": f"scripted error {status} ({kind})"},
    }


def test_error_times_fails_first_attempts_then_answers(server: ModelServer) -> None:
    first = post_messages(server, "[[error 529 times=1]] hi")
    assert (first.status, first.headers["x-should-retry"]) == (529, "true")
    second = post_messages(server, "[[error 529 times=1]] hi")
    assert second.status == 200
    assert second.json()["content"][0]["text"] == "echo (messages=1): hi"
    assert [r["directive"] for r in server.requests()] == ["error", "echo"]


def test_bad_directive_is_a_400_naming_the_problem(server: ModelServer) -> None:
    resp = post_messages(server, '[[tool Bash {"command": oops}]]', stream=True)
    assert resp.status == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "[[tool Bash" in error["message"]
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"model": "m"}', "messages"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": 7}], "model": 1}', None),
    ],
)
def test_bad_bodies_never_crash_the_server(
    server: ModelServer, raw: bytes, problem: str | None
) -> None:
    resp = request(server, "POST", "/v1/messages", raw=raw)
    if problem is None:  # odd but usable: answered, with a default model name
        assert resp.status == 200
        assert resp.json()["model"] == "claude-scripted"
    else:
        assert resp.status == 400
        assert resp.json()["error"]["type"] == "invalid_request_error"
        assert problem in resp.json()["error"]["message"]
    assert request(server, "GET", "/_ccq/healthz").status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/messages"), ("POST", "/v1/complete"), ("GET", "/"), ("PUT", "/_ccq/requests")],
)
def test_unknown_routes_are_404(server: ModelServer, method: str, path: str) -> None:
    resp = request(server, method, path, {})
    assert resp.status == 404
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "not_found_error"


def raw_exchange(srv: ModelServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply


def test_unknown_method_gets_a_json_error(server: ModelServer) -> None:
    head, _, body = raw_exchange(server, b"BREW /pot HTTP/1.1\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501")
    assert json.loads(body)["type"] == "error"


def test_garbage_request_line_gets_a_json_error(server: ModelServer) -> None:
    """An unparseable version is answered HTTP/0.9 style by http.server: body only."""
    reply = raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert json.loads(reply)["error"]["type"] == "invalid_request_error"
    assert request(server, "GET", "/_ccq/healthz").status == 200


def test_count_tokens(server: ModelServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    resp = request(server, "POST", "/v1/messages/count_tokens?beta=true", body)
    assert resp.status == 200
    assert resp.json()["input_tokens"] > 100
    assert server.requests()[-1]["directive"] == "count_tokens"


def test_keep_alive_and_chunked_request_bodies(server: ModelServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        streamed = request(
            server, "POST", "/v1/messages", messages_body("a", stream=True), conn=conn
        )
        conn.request(
            "POST",
            "/v1/messages",
            body=iter([json.dumps(messages_body("b")).encode()]),
            encode_chunked=True,
        )
        plain = conn.getresponse()
        plain_body = json.loads(plain.read())
    finally:
        conn.close()
    assert text_of_stream(streamed.events()) == "echo (messages=1): a"
    assert plain_body["content"][0]["text"] == "echo (messages=1): b"
    assert len(server.requests()) == 2


# -- hang and stop ----------------------------------------------------------------------------


def test_hang_stream_sends_message_start_and_stop_does_not_wait() -> None:
    srv = ModelServer().start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/v1/messages", json.dumps(messages_body("[[hang]]", stream=True)))
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().decode() == "event: message_start\n"
        assert json.loads(resp.readline().decode()[6:])["type"] == "message_start"
        assert resp.readline() == b"\n"
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 2.0
        with pytest.raises(http.client.IncompleteRead):
            resp.read()  # the stream ends without message_stop or the final chunk
    finally:
        conn.close()
        srv.stop()


def test_hang_without_stream_blocks_until_stopped() -> None:
    srv = ModelServer().start()
    outcome: list[BaseException | int] = []

    def client() -> None:
        try:
            outcome.append(post_messages(srv, "[[sleep 0.01]] [[hang]]").status)
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    # The request is recorded before the handler starts blocking.
    wait_for(srv.requests, timeout=TIMEOUT, interval=0.01, what="the hang request")
    assert srv.requests()[0]["directive"] == "sleep+hang"
    assert outcome == []
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2.0
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], http.client.RemoteDisconnected | ConnectionError)


def test_hanging_client_can_go_away_and_server_keeps_serving(server: ModelServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("POST", "/v1/messages", json.dumps(messages_body("[[hang]]", stream=True)))
    resp = conn.getresponse()
    assert resp.readline() == b"event: message_start\n"
    conn.close()
    resp.close()
    assert post_messages(server, "after").json()["content"][0]["text"] == "echo (messages=1): after"


def test_stop_is_idempotent_and_properties() -> None:
    srv = ModelServer(host="0.0.0.0")  # noqa: S104 - the url must name loopback instead
    with pytest.raises(RuntimeError):
        _ = srv.port
    srv.start()
    try:
        assert srv.url == f"http://127.0.0.1:{srv.port}"
        with pytest.raises(RuntimeError, match="already started"):
            srv.start()
    finally:
        srv.stop()
        srv.stop()


# -- recording --------------------------------------------------------------------------------


def test_recording_redacts_and_describes(server: ModelServer, tmp_path: Path) -> None:
    body = messages_body("hello", stream=True, tools=[{"name": "Bash", "input_schema": {}}])
    request(
        server,
        "POST",
        "/v1/messages?beta=true",
        body,
        headers={"authorization": "Bearer tok-secret", "x-claude-code-session-id": "sess-1"},
    )
    listed = request(server, "GET", "/_ccq/requests").json()["requests"]
    assert listed == server.requests()
    [entry] = listed
    assert entry["method"] == "POST"
    assert entry["path"] == "/v1/messages"
    assert entry["query"] == "beta=true"
    assert entry["body"] == body
    # Fingerprints, not secrets: a test can tell which key was sent without seeing it.
    assert entry["headers"]["x-api-key"] == fingerprint(API_KEY)
    assert entry["headers"]["authorization"] == fingerprint("Bearer tok-secret")
    assert entry["headers"]["authorization"] != fingerprint("tok-secret")
    assert entry["directive"] == "echo"
    assert entry["status"] == 200
    assert entry["model"] == "claude-test-1"
    assert entry["n_messages"] == 1
    assert entry["has_tools"] is True
    assert entry["stream"] is True
    assert entry["subagent"] is False
    assert entry["session_id"] == "sess-1"
    assert isinstance(entry["timestamp"], float)
    assert entry["timestamp"] > 0
    assert "secret" not in json.dumps(listed)

    assert request(server, "DELETE", "/_ccq/requests").status == 200
    assert server.requests() == []
    post_messages(server, "x")
    server.clear()
    assert request(server, "GET", "/_ccq/requests").json() == {"requests": []}


def test_record_path_gets_one_json_line_per_request(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "requests.jsonl"
    with ModelServer(record_path=path) as srv:
        post_messages(srv, "one")
        request(srv, "POST", "/nope", {})
        request(srv, "POST", "/v1/messages", raw=b"{")
        srv.clear()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["seq"], e["directive"], e["status"]) for e in lines] == [
        (1, "echo", 200),
        (2, "not_found", 404),
        (3, "invalid_request", 400),
    ]
    assert API_KEY not in path.read_text()
    assert all(e["headers"]["x-api-key"] == fingerprint(API_KEY) for e in lines)


def test_max_records_keeps_the_most_recent() -> None:
    with ModelServer(max_records=2) as srv:
        for text in ("a", "b", "c"):
            post_messages(srv, text)
        assert [e["body"]["messages"][0]["content"] for e in srv.requests()] == ["b", "c"]


# -- the rate-limit window --------------------------------------------------------------------


def assert_limited(resp: Response, status: int, kind: str, retry_after: str) -> None:
    assert resp.status == status
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["retry-after"] == retry_after
    assert resp.headers["x-should-retry"] == "true"
    assert resp.headers["request-id"].startswith("req_")
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["error"]["message"]


def test_rate_limit_window_over_http_then_normal_answers(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    with ModelServer(record_path=path) as srv:
        before = time.time()
        started = time.monotonic()
        resp = request(srv, "POST", "/_ccq/rate-limit", {"seconds": 1.5, "retry_after": 1})
        assert resp.status == 200
        assert resp.json()["ok"] is True
        assert resp.json()["active"] is True
        assert resp.json()["retry_after"] == 1
        assert resp.json()["status"] == 429

        assert_limited(post_messages(srv, "hello"), 429, "rate_limit_error", "1")
        # Streaming calls get the same JSON error: the limit answers before any SSE.
        assert_limited(post_messages(srv, "hello", stream=True), 429, "rate_limit_error", "1")
        # Even a body that is not JSON: the limit answers before the body is looked at.
        assert_limited(request(srv, "POST", "/v1/messages", raw=b"{"), 429, "rate_limit_error", "1")
        state = request(srv, "GET", "/_ccq/rate-limit").json()
        assert state["active"] is True
        assert 0 < state["seconds_left"] <= 1.5

        def answered() -> Response | None:
            resp = post_messages(srv, "after")
            return resp if resp.status == 200 else None

        ok = wait_for(answered, timeout=TIMEOUT, interval=0.1, what="the window to close")
        assert time.monotonic() - started >= 1.5
        assert ok.json()["content"] == [{"type": "text", "text": "echo (messages=1): after"}]
        assert request(srv, "GET", "/_ccq/rate-limit").json()["active"] is False
        entries = srv.requests()

    # Every answer, limited or not, is recorded with its status and a precise timestamp.
    assert [e["path"] for e in entries] == ["/v1/messages"] * len(entries)  # no /_ccq/ calls
    limited = [e for e in entries if e["directive"] == "rate_limited"]
    assert len(limited) >= 3
    assert {e["status"] for e in limited} == {429}
    assert limited[0]["body"] == messages_body("hello")
    assert limited[2]["body"] is None
    assert all(e["error"] for e in limited)
    assert (entries[-1]["directive"], entries[-1]["status"]) == ("echo", 200)
    assert entries[:-1] == limited  # nothing got through before the window closed
    stamps = [e["timestamp"] for e in entries]
    assert all(isinstance(t, float) for t in stamps)
    assert stamps == sorted(stamps)
    assert before <= stamps[0]
    assert stamps[-1] - before >= 1.4  # the first normal answer came after the window
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["directive"], e["status"]) for e in lines] == [
        (e["directive"], e["status"]) for e in entries
    ]
    assert API_KEY not in path.read_text()


def test_overloaded_window_from_python_spares_count_tokens_and_control(
    server: ModelServer,
) -> None:
    server.rate_limit(seconds=30, retry_after=2, status=529)
    assert_limited(post_messages(server, "hello"), 529, "overloaded_error", "2")

    tokens = request(server, "POST", "/v1/messages/count_tokens?beta=true", messages_body("hi"))
    assert tokens.status == 200
    assert tokens.json()["input_tokens"] >= 1
    assert request(server, "GET", "/_ccq/healthz").status == 200
    assert request(server, "GET", "/_ccq/requests").status == 200
    assert request(server, "POST", "/nope", {}).status == 404  # only /v1/messages is limited

    server.rate_limit(seconds=0)  # clearing takes effect at once
    assert post_messages(server, "again").status == 200
    assert [(e["directive"], e["status"]) for e in server.requests()] == [
        ("rate_limited", 529),
        ("count_tokens", 200),
        ("not_found", 404),
        ("echo", 200),
    ]


def test_cleared_over_http_and_retry_after_defaults_to_time_left(server: ModelServer) -> None:
    assert request(server, "POST", "/_ccq/rate-limit", {"seconds": 30}).status == 200
    assert_limited(post_messages(server, "x"), 429, "rate_limit_error", "30")
    resp = request(server, "POST", "/_ccq/rate-limit", {"seconds": 0})
    assert resp.status == 200
    assert resp.json()["active"] is False
    assert post_messages(server, "x").status == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "seconds"),
        ({"seconds": "5"}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": None}, "seconds"),
        ({"seconds": 5, "retry_after": 1.5}, "retry_after"),
        ({"seconds": 5, "retry_after": "2"}, "retry_after"),
        ({"seconds": 5, "status": 500}, "status"),
        ({"seconds": 5, "status": "429"}, "status"),
        ({"seconds": 5, "retryafter": 2}, "retryafter"),
        ([5], "JSON object"),
    ],
)
def test_rate_limit_control_refuses_bad_input(server: ModelServer, body: Any, field: str) -> None:
    resp = request(server, "POST", "/_ccq/rate-limit", body)
    assert resp.status == 400
    assert resp.headers["x-should-retry"] == "false"
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert field in error["message"]
    assert request(server, "GET", "/_ccq/rate-limit").json()["active"] is False
    assert post_messages(server, "x").status == 200  # no window was opened
    assert [e["directive"] for e in server.requests()] == ["echo"]  # control calls unrecorded


def test_rate_limit_control_refuses_invalid_json(server: ModelServer) -> None:
    resp = request(server, "POST", "/_ccq/rate-limit", raw=b"{seconds: 5")
    assert resp.status == 400
    assert "not valid JSON" in resp.json()["error"]["message"]


# -- serve() in the foreground ----------------------------------------------------------------


def test_serve_until_sigterm_logging_without_secrets() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_server", "127.0.0.1", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    try:
        assert "listening on" in _read_line(proc, TIMEOUT)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            conn.request(
                "POST", "/v1/messages", json.dumps(messages_body("hi")), {"x-api-key": API_KEY}
            )
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        line = _read_line(proc, TIMEOUT)
        assert "POST /v1/messages -> 200 echo" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert API_KEY not in line + proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stderr is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        assert sel.select(timeout), "no output from the server"
    return proc.stderr.readline()
