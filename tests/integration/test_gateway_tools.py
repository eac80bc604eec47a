"""ccq's MCP tools as the gateway serves them: Streamable HTTP at /mcp, driven by the SDK's client.

A Starlette app routes ``/mcp`` to the tools behind a stand-in for the gateway's
authentication (a known bearer token → its ``RunCredential`` in ``scope["state"]``),
served by uvicorn on a loopback port. A stub of ccq's API records what the tools send.
Needs neither Docker, PostgreSQL nor Redis.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.credentials import STATE_KEY, RunCredential
from gateway.tools.server import MCP_PATH, NO_CREDENTIAL, build_tools_server, tools_app
from tests.http_api import CCQ_TOOLS
from tests.stub_api import ApiRequest, StubApi
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration

T = TypeVar("T")

TIMEOUT = 30.0
CHILD_ID = "9a0c1b2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
ALICE = RunCredential(
    token="alice-session-token", owner="alice", session_id=uuid.uuid4(), run_id=uuid.uuid4()
)
BOB = RunCredential(
    token="bob-session-token", owner="bob", session_id=uuid.uuid4(), run_id=uuid.uuid4()
)


@pytest.fixture(autouse=True, scope="module")
def _remove_test_containers() -> None:
    """Nothing to remove: these tests start no container, so they do not connect to Docker
    (this overrides tests/conftest.py's session-wide cleanup for this module)."""


class CredentialFromToken:
    """The gateway's authentication as far as the tools see it: a known bearer token puts
    its credential in ``scope["state"]``. Anything else passes on without one (the real
    middleware refuses it; here it shows what the tools do then). Records each request's
    ``MCP-Protocol-Version`` header, to tell the protocol eras apart."""

    def __init__(
        self,
        app: ASGIApp,
        credentials: Mapping[str, RunCredential],
        protocol_versions: list[str | None],
    ) -> None:
        self.app = app
        self.credentials = credentials
        self.protocol_versions = protocol_versions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            self.protocol_versions.append(headers.get("mcp-protocol-version"))
            token = headers.get("authorization", "").removeprefix("Bearer ")
            credential = self.credentials.get(token)
            if credential is not None:
                scope.setdefault("state", {})[STATE_KEY] = credential
        await self.app(scope, receive, send)


class Gateway:
    """The tools on a loopback port, as the gateway will serve them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}{MCP_PATH}"
        self.protocol_versions: list[str | None] = []


@contextmanager
def serve_gateway(api_url: str) -> Iterator[Gateway]:
    tools = tools_app(build_tools_server(api_url))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with tools.session_manager.run():
            yield

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    gateway = Gateway(sock.getsockname()[1])
    app = Starlette(
        routes=[tools.route()],
        middleware=[
            Middleware(
                CredentialFromToken,
                credentials={c.token: c for c in (ALICE, BOB)},
                protocol_versions=gateway.protocol_versions,
            )
        ],
        lifespan=lifespan,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the gateway's server thread ended before it started"
        return server.started

    try:
        wait_for(started, timeout=TIMEOUT, what="the gateway to listen")
        yield gateway
    finally:
        server.should_exit = True
        thread.join(timeout=TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the gateway's server did not stop"


@pytest.fixture
def api() -> Iterator[StubApi]:
    stub = StubApi()
    yield stub
    stub.close()


@pytest.fixture
def gateway(api: StubApi) -> Iterator[Gateway]:
    with serve_gateway(api.url) as gateway:
        yield gateway


def run(test: Callable[[], Awaitable[T]]) -> T:
    """Run an async test body on its own event loop, failing it after TIMEOUT."""

    async def bounded() -> T:
        with anyio.fail_after(TIMEOUT):
            return await test()

    return anyio.run(bounded)


@asynccontextmanager
async def mcp_session(gateway: Gateway, token: str | None) -> AsyncIterator[ClientSession]:
    """An initialized MCP session (the handshake era, as the Claude Code CLI speaks it)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=TIMEOUT) as http,
        streamable_http_client(gateway.url, http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def answered(result: CallToolResult) -> str:
    """The text of a successful tool result."""
    text = text_of(result)
    assert not result.is_error, text
    return text


def failed(result: CallToolResult, tool: str) -> str:
    """The reason a tool gave for its error (after the SDK's "Error executing tool" prefix)."""
    text = text_of(result)
    assert result.is_error, text
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), text
    return text.removeprefix(prefix)


def test_the_seven_tools_are_listed_with_their_parameters(gateway: Gateway) -> None:
    async def test() -> dict[str, Any]:
        async with mcp_session(gateway, ALICE.token) as session:
            return {tool.name: tool for tool in (await session.list_tools()).tools}

    tools = run(test)

    assert set(tools) == CCQ_TOOLS
    schemas = {name: tool.input_schema for name, tool in tools.items()}
    # The context parameter the tools take is the SDK's, never the model's.
    assert {name: list(s["properties"]) for name, s in schemas.items()} == {
        "spawn_child": ["prompt", "model", "max_turns", "append_system_prompt"],
        "send_to_child": ["child_id", "prompt"],
        "get_child_result": ["child_id"],
        "get_child_output": ["child_id", "after", "limit"],
        "list_children": [],
        "stop_child": ["child_id"],
        "delegate": ["prompts", "then"],
    }
    assert {name: s.get("required", []) for name, s in schemas.items()} == {
        "spawn_child": ["prompt"],
        "send_to_child": ["child_id", "prompt"],
        "get_child_result": ["child_id"],
        "get_child_output": ["child_id"],
        "list_children": [],
        "stop_child": ["child_id"],
        "delegate": ["prompts"],
    }
    spawn = schemas["spawn_child"]["properties"]
    assert spawn["prompt"]["minLength"] == 1
    assert "does not see your conversation" in spawn["prompt"]["description"]
    assert spawn["max_turns"]["anyOf"][0] == {"type": "integer", "minimum": 1}
    limit = schemas["get_child_output"]["properties"]["limit"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 5000, 200)
    assert schemas["delegate"]["properties"]["prompts"]["minItems"] == 1
    assert "list_children" in schemas["send_to_child"]["properties"]["child_id"]["description"]
    # Descriptions: the tools' docstrings, dedented.
    description = tools["delegate"].description or ""
    assert description.startswith("Fan out: one new child per prompt, all in parallel;")
    assert "\nAfter calling it, END YOUR TURN" in description
    assert all(tool.description for tool in tools.values())


def test_every_tool_calls_the_api_as_the_callers_session_and_answers_in_words(
    api: StubApi, gateway: Gateway
) -> None:
    me, child = f"/api/v1/sessions/{ALICE.session_id}", f"/api/v1/sessions/{CHILD_ID}"
    fanout_children = [str(uuid.uuid4()), str(uuid.uuid4())]
    running = {"id": "run-2", "seq": 2, "status": "running", "result": "STALE OUTPUT"}
    session = {"id": CHILD_ID, "status": "running", "total_cost_usd": 0.5, "last_run": running}
    events = [
        {"id": "1-0", "run_id": "run-2", "type": "ccq.run.started", "data": {}},
        {"id": "2-0", "run_id": "run-2", "type": "stream_event", "data": {"event": {}}},
        {
            "id": "3-0",
            "run_id": "run-2",
            "type": "assistant",
            "data": {"message": {"content": [{"type": "text", "text": "Counting files now"}]}},
        },
    ]
    api.answers.update(
        {
            ("POST", f"{me}/children"): (
                201,
                {"session": {"id": CHILD_ID, "status": "starting"}, "run": running},
            ),
            ("POST", f"{child}/runs"): (202, {"run": {**running, "status": "queued"}}),
            ("GET", child): (200, {"session": session}),
            ("GET", f"{child}/events"): (200, {"events": events, "next_after": "3-0"}),
            ("GET", f"{me}/children"): (200, {"children": [session]}),
            ("POST", f"{child}/stop"): (202, {"session": {**session, "status": "stopped"}}),
            ("POST", f"{me}/fanout"): (
                202,
                {"fanout": {"id": "f-1", "child_ids": fanout_children}, "children": []},
            ),
        }
    )
    calls: dict[str, dict[str, Any]] = {
        "spawn_child": {"prompt": "count the files", "model": "haiku", "max_turns": 3},
        "send_to_child": {"child_id": CHILD_ID, "prompt": "and the lines"},
        "get_child_result": {"child_id": CHILD_ID},
        "get_child_output": {"child_id": CHILD_ID, "after": "0-5", "limit": 50},
        "list_children": {},
        "stop_child": {"child_id": CHILD_ID},
        "delegate": {"prompts": ["part one", "part two"]},
    }

    async def test() -> dict[str, str]:
        async with mcp_session(gateway, ALICE.token) as session:
            return {
                name: answered(await session.call_tool(name, arguments))
                for name, arguments in calls.items()
            }

    words = run(test)

    assert api.requests == [
        ApiRequest("POST", f"{me}/children", f"Bearer {ALICE.token}", calls["spawn_child"]),
        ApiRequest("POST", f"{child}/runs", f"Bearer {ALICE.token}", {"prompt": "and the lines"}),
        ApiRequest("GET", child, f"Bearer {ALICE.token}", None),
        ApiRequest("GET", f"{child}/events", f"Bearer {ALICE.token}", None, "limit=50&after=0-5"),
        ApiRequest("GET", f"{me}/children", f"Bearer {ALICE.token}", None),
        ApiRequest("POST", f"{child}/stop", f"Bearer {ALICE.token}", None),
        # No `then`: the API's default wording applies.
        ApiRequest(
            "POST",
            f"{me}/fanout",
            f"Bearer {ALICE.token}",
            {"prompts": calls["delegate"]["prompts"]},
        ),
    ]
    assert words["spawn_child"].startswith(f"Spawned child session {CHILD_ID}")
    assert f"/workspace/children/{CHILD_ID}/" in words["spawn_child"]
    assert "Queued run run-2 (#2) on child" in words["send_to_child"]
    # A run still going: said so, and never the output of an earlier run.
    assert "has NOT finished" in words["get_child_result"]
    assert "STALE OUTPUT" not in words["get_child_result"]
    assert "assistant: Counting files now" in words["get_child_output"]
    assert "next_after: 3-0" in words["get_child_output"]
    assert words["list_children"].startswith(f"1 child session:\n- {CHILD_ID}  status running")
    assert "status now stopped" in words["stop_child"]
    assert all(c in words["delegate"] for c in fanout_children)
    assert "End your turn now" in words["delegate"]
    assert not any(ALICE.token in text for text in words.values())


def test_concurrent_callers_each_act_as_their_own_session(api: StubApi, gateway: Gateway) -> None:
    for credential in (ALICE, BOB):
        api.answers[("GET", f"/api/v1/sessions/{credential.session_id}/children")] = (
            200,
            {"children": [{"id": str(credential.run_id), "status": "idle"}]},
        )

    async def test() -> dict[str, str]:
        words: dict[str, str] = {}
        async with (
            mcp_session(gateway, ALICE.token) as alice,
            mcp_session(gateway, BOB.token) as bob,
        ):

            async def list_for(owner: str, session: ClientSession) -> None:
                for _ in range(5):
                    words[owner] = answered(await session.call_tool("list_children", {}))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(list_for, "alice", alice)
                tasks.start_soon(list_for, "bob", bob)
        return words

    words = run(test)

    assert str(ALICE.run_id) in words["alice"]
    assert str(BOB.run_id) not in words["alice"]
    assert str(BOB.run_id) in words["bob"]
    assert str(ALICE.run_id) not in words["bob"]
    seen = {(r.path, r.authorization) for r in api.requests}
    assert seen == {
        (f"/api/v1/sessions/{c.session_id}/children", f"Bearer {c.token}") for c in (ALICE, BOB)
    }
    assert len(api.requests) == 10


def test_an_api_error_is_a_tool_error_and_the_next_call_still_works(
    api: StubApi, gateway: Gateway
) -> None:
    me = f"/api/v1/sessions/{ALICE.session_id}"
    limit = {
        "code": "limit_exceeded",
        "message": "depth limit 3 reached: a child would be at depth 4",
        "details": {"limit": "depth", "max": 3},
    }
    api.answers[("POST", f"{me}/children")] = (409, {"error": limit})
    api.answers[("GET", f"{me}/children")] = (200, {"children": []})

    async def test() -> tuple[str, str, str]:
        async with mcp_session(gateway, ALICE.token) as session:
            spawn = failed(
                await session.call_tool("spawn_child", {"prompt": "count the files"}), "spawn_child"
            )
            bad_id = failed(
                await session.call_tool("stop_child", {"child_id": "my-child"}), "stop_child"
            )
            listed = answered(await session.call_tool("list_children", {}))
        return spawn, bad_id, listed

    spawn, bad_id, listed = run(test)

    assert spawn == (
        "ccq API error 409 (limit_exceeded): depth limit 3 reached: a child would be at depth 4\n"
        'details: {"limit": "depth", "max": 3}'
    )
    # A child ID that is not a UUID never reaches the API (it would go into a URL path).
    assert bad_id.startswith("child_id must be a session ID")
    assert listed == "This session has no children."
    assert [(r.method, r.path) for r in api.requests] == [
        ("POST", f"{me}/children"),
        ("GET", f"{me}/children"),
    ]


def test_an_unreachable_api_is_a_tool_error() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"

    with serve_gateway(nowhere) as gateway:

        async def test() -> str:
            async with mcp_session(gateway, ALICE.token) as session:
                return failed(await session.call_tool("list_children", {}), "list_children")

        text = run(test)

    assert text.startswith(f"cannot reach the ccq API at {nowhere} (ConnectError")
    assert ALICE.token not in text


def test_a_call_without_a_credential_is_a_tool_error(api: StubApi, gateway: Gateway) -> None:
    async def test() -> tuple[str, str]:
        async with mcp_session(gateway, None) as session:
            listed = failed(await session.call_tool("list_children", {}), "list_children")
            spawned = failed(
                await session.call_tool("spawn_child", {"prompt": "count"}), "spawn_child"
            )
        return listed, spawned

    listed, spawned = run(test)

    assert listed == spawned == NO_CREDENTIAL
    assert api.requests == []


def test_a_2026_07_28_client_is_served_as_its_session_too(api: StubApi, gateway: Gateway) -> None:
    """The single-exchange era (no handshake) takes another path through the SDK; the
    tools still read the credential of their own request there."""
    api.answers[("GET", f"/api/v1/sessions/{BOB.session_id}/children")] = (200, {"children": []})

    async def test() -> str:
        headers = {"Authorization": f"Bearer {BOB.token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=TIMEOUT) as http,
            Client(streamable_http_client(gateway.url, http_client=http), mode="2026-07-28") as c,
        ):
            return answered(await c.call_tool("list_children", {}))

    assert run(test) == "This session has no children."
    assert "2026-07-28" in gateway.protocol_versions
    assert api.requests == [
        ApiRequest(
            "GET", f"/api/v1/sessions/{BOB.session_id}/children", f"Bearer {BOB.token}", None
        )
    ]


def test_containers_may_call_it_by_the_docker_host_name(gateway: Gateway) -> None:
    """The SDK refuses unknown Host headers (421) unless told otherwise; containers call
    the gateway as host.docker.internal."""

    async def test() -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=TIMEOUT) as http:
            return await http.post(
                gateway.url,
                headers={
                    "Host": f"host.docker.internal:{gateway.port}",
                    "Origin": "http://elsewhere.example",
                    "Accept": "application/json, text/event-stream",
                    "Authorization": f"Bearer {ALICE.token}",
                },
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {},
                        "clientInfo": {"name": "claude-code", "version": "2"},
                    },
                },
            )

    response = run(test)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")  # not SSE
    assert "mcp-session-id" not in response.headers  # stateless
    assert response.json()["result"]["serverInfo"]["name"] == "ccq"
