"""ccq's MCP server in the worker image, driven by the real Claude Code CLI.

The CLI runs as the worker runs it (``docker exec``, the session's files written by
``write_session_files``, ``--mcp-config`` + ``--strict-mcp-config``, the ``CCQ_*``
variables in the process environment). The scripted model server makes the model call
the tools; a stub of the ccq API on the host records what the tools send.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import docker
import pytest

from model_server.recording import is_main_call
from model_server.server import ModelServer
from orchestrator.runtime.claude_cli import CliEvent, CliOptions, build_command
from orchestrator.runtime.cli_runner import CliRunResult, run_cli
from orchestrator.runtime.containers import ContainerRuntime, SessionContainerSpec
from orchestrator.runtime.session_setup import MCP_CONFIG_PATH, SessionContext, write_session_files
from tests.processes import SCRIPTED_MODEL_KEY, container_base_url
from tests.waiting import free_port

pytestmark = pytest.mark.integration

TOOLS = (
    "spawn_child",
    "send_to_child",
    "get_child_result",
    "get_child_output",
    "list_children",
    "stop_child",
    "delegate",
)
SESSION_TOKEN = "session-token-for-this-test"
CHILD_ID = "9a0c1b2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"


@dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    authorization: str | None
    body: Any
    query: str = ""


class StubApi:
    """A stand-in for the ccq API on every host interface (containers reach it through
    the Docker host gateway): records each request and answers from ``answers``,
    keyed by (method, path); anything else is a 404 in the API's error shape."""

    def __init__(self) -> None:
        self.requests: list[ApiRequest] = []
        self.answers: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                stub.requests.append(
                    ApiRequest(
                        self.command,
                        path,
                        self.headers.get("Authorization"),
                        json.loads(raw) if raw else None,
                        query,
                    )
                )
                status, body = stub.answers.get(
                    (self.command, path),
                    (404, {"error": {"code": "not_found", "message": "no such thing"}}),
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)  # noqa: S104
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def container_url(self) -> str:
        return f"http://host.docker.internal:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def api() -> Iterator[StubApi]:
    stub = StubApi()
    yield stub
    stub.close()


@pytest.fixture
def spec(spec: SessionContainerSpec) -> SessionContainerSpec:
    """A session whose Claude home holds ccq's files, as the worker leaves it."""
    spec.dirs.create()
    write_session_files(
        spec.dirs.claude_home,
        SessionContext(session_id=spec.session_id, parent_id=None, depth=0, max_depth=3),
    )
    return spec


def _ccq_env(spec: SessionContainerSpec, api_url: str) -> dict[str, str]:
    return {
        "CCQ_API_URL": api_url,
        "CCQ_SESSION_ID": spec.session_id,
        "CCQ_SESSION_TOKEN": SESSION_TOKEN,
    }


def _run(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    model: ModelServer,
    prompt: str,
    ccq_env: dict[str, str],
) -> tuple[CliRunResult, list[CliEvent]]:
    events: list[CliEvent] = []
    result = run_cli(
        runtime,
        runtime.ensure_running(spec),
        run_id=str(uuid.uuid4()),
        argv=build_command(
            spec.session_id, resume=False, options=CliOptions(mcp_config_path=MCP_CONFIG_PATH)
        ),
        prompt=prompt,
        env={
            "ANTHROPIC_BASE_URL": container_base_url(model),
            "ANTHROPIC_API_KEY": SCRIPTED_MODEL_KEY,
            **ccq_env,
        },
        on_event=events.append,
        silence_timeout=60,
        time_limit=180,
    )
    assert result.exit_code == 0, result.stderr_tail
    assert result.outcome.subtype == "success", result.outcome.result_text
    return result, events


def _init(events: list[CliEvent]) -> dict[str, Any]:
    return next(e.data for e in events if e.type == "system" and e.data.get("subtype") == "init")


def _tool_results(events: list[CliEvent]) -> dict[str, tuple[bool, str]]:
    """Tool name → (is_error, text) of each tool result the CLI gave the model."""
    names: dict[str, str] = {}
    results: dict[str, tuple[bool, str]] = {}
    for event in events:
        for block in event.data.get("message", {}).get("content", []):
            if event.type == "assistant" and block.get("type") == "tool_use":
                names[block["id"]] = block["name"]
            elif event.type == "user" and block.get("type") == "tool_result":
                content = block.get("content")
                if isinstance(content, list):
                    content = " ".join(c.get("text", "") for c in content)
                name = names[block["tool_use_id"]]
                results[name] = (bool(block.get("is_error")), str(content))
    return results


def test_ccq_server_is_connected_with_its_tools_and_gets_the_run_environment(
    runtime: ContainerRuntime, spec: SessionContainerSpec, model: ModelServer, api: StubApi
) -> None:
    children_path = f"/api/v1/sessions/{spec.session_id}/children"
    child = {"id": CHILD_ID, "status": "idle", "total_cost_usd": 0.25, "last_run": None}
    api.answers[("GET", children_path)] = (200, {"children": [child]})

    result, events = _run(
        runtime,
        spec,
        model,
        "[[tool mcp__ccq__list_children {}]]",
        _ccq_env(spec, api.container_url),
    )

    init = _init(events)
    assert {"name": "ccq", "status": "connected"}.items() <= init["mcp_servers"][0].items()
    assert {f"mcp__ccq__{tool}" for tool in TOOLS} <= set(init["tools"])
    # The server saw the run's environment: this session's ID and token.
    assert api.requests == [ApiRequest("GET", children_path, f"Bearer {SESSION_TOKEN}", None)]
    is_error, text = _tool_results(events)["mcp__ccq__list_children"]
    assert not is_error
    assert CHILD_ID in text
    assert (result.outcome.result_text or "").startswith("tool result: 1 child session")
    # CLAUDE.md and the skills ccq wrote reached the model.
    body = json.dumps(next(r["body"] for r in model.requests() if is_main_call(r)))
    assert f"This session's ID is `{spec.session_id}`" in body
    assert "delegate-task" in body
    assert {"delegate-task", "coordinate-children", "child-status"} <= set(init["skills"])


@pytest.mark.parametrize("failure", ["http_409", "unreachable", "not_configured"])
def test_api_failures_reach_the_model_as_tool_errors_and_the_run_finishes(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    model: ModelServer,
    api: StubApi,
    failure: str,
) -> None:
    limit = {
        "code": "limit_exceeded",
        "message": "depth limit 3 reached: a child would be at depth 4",
        "details": {"limit": "depth", "max": 3},
    }
    api.answers[("POST", f"/api/v1/sessions/{spec.session_id}/children")] = (
        409,
        {"error": limit},
    )
    api.answers[("GET", f"/api/v1/sessions/{spec.session_id}/children")] = (
        200,
        {"children": []},
    )
    env = {
        "http_409": _ccq_env(spec, api.container_url),
        "unreachable": _ccq_env(spec, f"http://host.docker.internal:{free_port()}"),
        "not_configured": {},
    }[failure]
    # Two calls in one turn: the second shows the server still serves after the first failed.
    prompt = (
        '[[tool mcp__ccq__spawn_child {"prompt": "count the files"}]] '
        "[[tool mcp__ccq__list_children {}]]"
    )

    result, events = _run(runtime, spec, model, prompt, env)

    results = _tool_results(events)
    is_error, text = results["mcp__ccq__spawn_child"]
    assert is_error, text
    expected = {
        "http_409": "ccq API error 409 (limit_exceeded): depth limit 3 reached",
        "unreachable": "cannot reach the ccq API at http://host.docker.internal:",
        "not_configured": "CCQ_API_URL, CCQ_SESSION_ID, CCQ_SESSION_TOKEN not set",
    }[failure]
    assert expected in text
    assert SESSION_TOKEN not in text
    assert "tool error:" in (result.outcome.result_text or "")
    list_error, list_text = results["mcp__ccq__list_children"]
    if failure == "http_409":
        assert not list_error, list_text
        assert "no children" in list_text
        assert (
            ApiRequest(
                "POST",
                f"/api/v1/sessions/{spec.session_id}/children",
                f"Bearer {SESSION_TOKEN}",
                {"prompt": "count the files"},
            )
            in api.requests
        )
    else:
        assert list_error, list_text
        assert api.requests == []


def test_every_tool_sends_its_api_request_and_answers_in_words(
    runtime: ContainerRuntime, spec: SessionContainerSpec, model: ModelServer, api: StubApi
) -> None:
    me, child = f"/api/v1/sessions/{spec.session_id}", f"/api/v1/sessions/{CHILD_ID}"
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
    calls = {
        "spawn_child": {"prompt": "count the files", "model": "haiku", "max_turns": 3},
        "send_to_child": {"child_id": CHILD_ID, "prompt": "and the lines"},
        "get_child_result": {"child_id": CHILD_ID},
        "get_child_output": {"child_id": CHILD_ID, "limit": 50},
        "list_children": {},
        "stop_child": {"child_id": CHILD_ID},
        "delegate": {"prompts": ["part one", "part two"]},
    }
    prompt = " ".join(f"[[tool mcp__ccq__{name} {json.dumps(a)}]]" for name, a in calls.items())

    _, cli_events = _run(runtime, spec, model, prompt, _ccq_env(spec, api.container_url))

    sent = {(r.method, r.path, r.query): r.body for r in api.requests}
    assert sent == {
        ("POST", f"{me}/children", ""): calls["spawn_child"],
        ("POST", f"{child}/runs", ""): {"prompt": "and the lines"},
        ("GET", child, ""): None,
        ("GET", f"{child}/events", "limit=50"): None,
        ("GET", f"{me}/children", ""): None,
        ("POST", f"{child}/stop", ""): None,
        ("POST", f"{me}/fanout", ""): {"prompts": ["part one", "part two"]},  # no `then`
    }
    assert {r.authorization for r in api.requests} == {f"Bearer {SESSION_TOKEN}"}
    results = {name.removeprefix("mcp__ccq__"): r for name, r in _tool_results(cli_events).items()}
    assert not any(is_error for is_error, _ in results.values()), results
    words = {name: text for name, (_, text) in results.items()}
    assert f"/workspace/children/{CHILD_ID}/" in words["spawn_child"]
    # A run still going: said so, and never the output of an earlier run.
    assert "has NOT finished" in words["get_child_result"]
    assert "STALE OUTPUT" not in words["get_child_result"]
    assert "assistant: Counting files now" in words["get_child_output"]
    assert "next_after: 3-0" in words["get_child_output"]
    assert all(c in words["delegate"] for c in fanout_children)
    assert "End your turn now" in words["delegate"]


def test_the_session_settings_are_valid_for_the_cli(
    runtime: ContainerRuntime, spec: SessionContainerSpec, docker_client: docker.DockerClient
) -> None:
    container = docker_client.containers.get(runtime.ensure_running(spec).id)
    doctor = container.exec_run(["claude", "doctor"], user="1000:1000")

    output = doctor.output.decode(errors="replace")
    assert doctor.exit_code == 0, output
    assert "Invalid settings" not in output
