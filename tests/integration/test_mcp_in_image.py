"""ccq's tools as a session's CLI reaches them: the real Claude Code CLI in the worker image,
over MCP Streamable HTTP at the real gateway, which calls the real API as the session.

The CLI runs as the worker runs it: ``docker exec`` in the session's container on the
session network, the session's files written by ``write_session_files(gateway_url=...)``,
``--mcp-config`` + ``--strict-mcp-config``, and ``cli_environment``: the gateway as its
model API and the run's session token as its only credential. The session is a real one
(made through the API), its run a real ``running`` row with a token minted as a claim
mints it; the scripted model server, behind the gateway, makes the model call the tools.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import docker
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from model_server.recording import fingerprint, is_main_call
from model_server.server import ModelServer
from orchestrator.auth import session_tokens
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Run, RunStatus
from orchestrator.runtime.claude_cli import CliEvent, CliOptions, build_command, cli_environment
from orchestrator.runtime.cli_runner import CliRunResult, run_cli
from orchestrator.runtime.containers import ContainerRuntime, SessionContainerSpec, SessionDirs
from orchestrator.runtime.executor import transcript_path
from orchestrator.runtime.session_setup import MCP_CONFIG_PATH, SessionContext, write_session_files
from orchestrator.settings import Settings
from tests.http_api import CCQ_TOOLS, SessionApi, bash, ccq_tool
from tests.processes import OPERATOR_KEY, ApiProcess, GatewayProcess, WorkerProcess
from tests.session_tokens import ACTING_RUN_PROMPT, mint_live_token

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Acting:
    """A root session with a run in ``running`` and that run's session token."""

    owner: str
    session_id: str
    run_id: uuid.UUID
    token: str


@pytest.fixture
def stack_settings(settings: Settings, gateway: GatewayProcess) -> Settings:
    """The test stack's settings as its workers read them: the gateway's port included."""
    return settings.model_copy(update={"gateway_port": gateway.port})


def _new_owner() -> str:
    """An owner of its own per test, so no other test's runs count against its run limit."""
    return f"mcp-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def owner_name() -> str:
    return _new_owner()


@pytest.fixture
def owner(
    api_server: ApiProcess, settings: Settings, worker: WorkerProcess, owner_name: str
) -> SessionApi:
    return SessionApi(api_server, mint_token(settings, owner_name))


@pytest.fixture
def acting(
    owner: SessionApi, owner_name: str, db_factory: sessionmaker[DbSession]
) -> Iterator[Acting]:
    session_id = owner.post("/sessions", {}, 201)["session"]["id"]
    token, run_id = mint_live_token(db_factory, session_id)
    yield Acting(owner_name, session_id, run_id, token)
    # Stop the tree first (queued runs, a fan-out's follow-up and children's runs are
    # cancelled), then end the runs this test acted as, as a worker would record them.
    owner.post(f"/sessions/{session_id}/stop", {}, 202)
    _end_acting_runs(db_factory, session_id)


def _end_acting_runs(factory: sessionmaker[DbSession], session_id: str) -> None:
    with session_scope(factory) as db:
        runs = db.scalars(
            select(Run).where(
                Run.session_id == uuid.UUID(session_id),
                Run.prompt == ACTING_RUN_PROMPT,
                Run.status == RunStatus.RUNNING,
            )
        ).all()
        for run in runs:
            run.status, run.finished_at = RunStatus.CANCELLED, datetime.now(UTC)
            session_tokens.revoke_run(db, run.id)


@pytest.fixture
def spec(
    spec: SessionContainerSpec, acting: Acting, stack_settings: Settings
) -> SessionContainerSpec:
    """The acting session's container as the worker makes it, with ccq's files written."""
    session = replace(
        spec,
        session_id=acting.session_id,
        owner=acting.owner,
        dirs=SessionDirs.for_session(stack_settings.data_dir, acting.session_id),
        network=stack_settings.session_network_name,
    )
    session.dirs.create()
    write_session_files(
        session.dirs.claude_home,
        SessionContext(
            session_id=acting.session_id,
            parent_id=None,
            depth=0,
            max_depth=stack_settings.max_depth,
        ),
        gateway_url=stack_settings.gateway_url_for_containers,
    )
    return session


def _run(
    runtime: ContainerRuntime, spec: SessionContainerSpec, prompt: str, env: dict[str, str]
) -> tuple[CliRunResult, list[CliEvent]]:
    """One run of the CLI in the session's container; resumed once the session has a
    conversation, as the worker decides."""
    events: list[CliEvent] = []
    resume = transcript_path(spec.dirs, uuid.UUID(spec.session_id)).exists()
    result = run_cli(
        runtime,
        runtime.ensure_running(spec),
        run_id=str(uuid.uuid4()),
        argv=build_command(
            spec.session_id, resume=resume, options=CliOptions(mcp_config_path=MCP_CONFIG_PATH)
        ),
        prompt=prompt,
        env=env,
        on_event=events.append,
        silence_timeout=60,
        time_limit=180,
    )
    assert result.exit_code == 0, result.stderr_tail
    assert result.outcome.subtype == "success", result.outcome.result_text
    return result, events


def _init(events: list[CliEvent]) -> dict[str, Any]:
    return next(e.data for e in events if e.type == "system" and e.data.get("subtype") == "init")


def _ccq_server(init: dict[str, Any]) -> dict[str, Any]:
    servers: list[dict[str, Any]] = init["mcp_servers"]
    return next(s for s in servers if s["name"] == "ccq")


def _tool_results(events: list[CliEvent]) -> dict[str, tuple[bool, str]]:
    """Tool name (``mcp__ccq__`` dropped) → (is_error, text) of each result the model got."""
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
                name = names[block["tool_use_id"]].removeprefix("mcp__ccq__")
                results[name] = (bool(block.get("is_error")), str(content))
    return results


def _answered(results: dict[str, tuple[bool, str]], tool: str) -> str:
    is_error, text = results[tool]
    assert not is_error, text
    return text


def _succeeded(owner: SessionApi, run_id: str) -> dict[str, Any]:
    run = owner.wait_run(run_id)
    assert run["status"] == "succeeded", run
    return run


def test_ccq_server_is_connected_at_the_gateway_and_no_ccq_process_runs_in_the_container(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    model: ModelServer,
    owner: SessionApi,
    acting: Acting,
    stack_settings: Settings,
    docker_client: docker.DockerClient,
) -> None:
    child_id, child_run = owner.child(acting.session_id, "a child made by its owner")
    _succeeded(owner, child_run)
    model.clear()
    # The processes in the container while the CLI is connected to its MCP servers.
    prompt = f"{ccq_tool('list_children', {})} {bash('ps -eo args')}"

    result, events = _run(runtime, spec, prompt, cli_environment(stack_settings, acting.token))

    init = _init(events)
    assert _ccq_server(init)["status"] == "connected", init["mcp_servers"]
    assert {f"mcp__ccq__{tool}" for tool in CCQ_TOOLS} <= set(init["tools"])
    results = _tool_results(events)
    listed = _answered(results, "list_children")
    assert listed.startswith("1 child session:"), listed
    assert child_id in listed
    processes = _answered(results, "Bash")
    assert "claude" in processes  # ps did list the CLI
    assert "python" not in processes, processes
    assert "ccq_mcp" not in processes, processes
    assert (result.outcome.result_text or "").startswith("tool result: 1 child session")
    # Nothing of ccq's MCP server is left in the image.
    container = docker_client.containers.get(runtime.ensure_running(spec).id)
    opt = container.exec_run(["ls", "-A", "/opt"], user="1000:1000")
    assert (opt.exit_code, opt.output) == (0, b"")
    # CLAUDE.md and the skills ccq wrote reached the model, through the gateway, which
    # sent the operator's key upstream and never the session's token.
    calls = [r for r in model.requests() if r["path"] == "/v1/messages"]
    assert calls, "the model server saw no model call"
    body = str(next(r["body"] for r in calls if is_main_call(r)))
    assert f"This session's ID is `{acting.session_id}`" in body
    assert "delegate-task" in body
    assert {"delegate-task", "coordinate-children", "child-status"} <= set(init["skills"])
    assert {r["headers"].get("x-api-key") for r in calls} == {fingerprint(OPERATOR_KEY)}
    token_prints = {fingerprint(acting.token), fingerprint(f"Bearer {acting.token}")}
    assert not token_prints & {v for r in calls for v in r["headers"].values()}


@pytest.mark.parametrize("target", ["no_such_session", "another_tree", "another_owner"])
def test_a_tool_failure_reaches_the_model_as_a_tool_error_and_the_run_finishes(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    owner: SessionApi,
    acting: Acting,
    stack_settings: Settings,
    api_server: ApiProcess,
    settings: Settings,
    target: str,
) -> None:
    if target == "no_such_session":
        other_id = str(uuid.uuid4())
    elif target == "another_tree":  # the same owner's: still outside this session's tree
        other_id = owner.post("/sessions", {}, 201)["session"]["id"]
    else:
        stranger = SessionApi(api_server, mint_token(settings, _new_owner()))
        other_id = stranger.post("/sessions", {}, 201)["session"]["id"]
    # Two calls in one turn: the second shows the tools still serve after the first failed.
    prompt = (
        f"{ccq_tool('get_child_result', {'child_id': other_id})} {ccq_tool('list_children', {})}"
    )

    result, events = _run(runtime, spec, prompt, cli_environment(stack_settings, acting.token))

    results = _tool_results(events)
    is_error, text = results["get_child_result"]
    assert is_error, text
    assert "ccq API error 404 (not_found)" in text
    assert acting.token not in text
    assert "tool error:" in (result.outcome.result_text or "")
    assert _answered(results, "list_children") == "This session has no children."


def test_each_tool_acts_as_the_session_on_the_real_api(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    owner: SessionApi,
    acting: Acting,
    stack_settings: Settings,
) -> None:
    root = acting.session_id
    env = cli_environment(stack_settings, acting.token)
    first_id, first_run = owner.child(root, "first answer")
    _succeeded(owner, first_run)

    # 1. spawn_child, get_child_result, get_child_output, list_children.
    _, events = _run(
        runtime,
        spec,
        " ".join(
            [
                ccq_tool("spawn_child", {"prompt": "hello from a spawned child", "max_turns": 3}),
                ccq_tool("get_child_result", {"child_id": first_id}),
                ccq_tool("get_child_output", {"child_id": first_id, "limit": 50}),
                ccq_tool("list_children", {}),
            ]
        ),
        env,
    )
    results = _tool_results(events)
    spawned = _answered(results, "spawn_child")
    match = re.search(r"Spawned child session (\S+) ", spawned)
    assert match, spawned
    spawned_id = match.group(1)
    assert f"/workspace/children/{spawned_id}/" in spawned
    # A real child of this session, which the worker ran with the prompt the tool sent.
    spawned_child = owner.get(f"/sessions/{spawned_id}")["session"]
    assert (spawned_child["parent_id"], spawned_child["depth"]) == (root, 1)
    ran = _succeeded(owner, spawned_child["last_run"]["id"])
    assert ran["result"].endswith(": hello from a spawned child"), ran
    result_text = _answered(results, "get_child_result")
    assert first_id in result_text
    assert "first answer" in result_text
    assert "first answer" in _answered(results, "get_child_output")
    assert first_id in _answered(results, "list_children")

    # 2. send_to_child and delegate.
    _, events = _run(
        runtime,
        spec,
        " ".join(
            [
                ccq_tool("send_to_child", {"child_id": first_id, "prompt": "second answer"}),
                ccq_tool("delegate", {"prompts": ["part one", "part two"]}),
            ]
        ),
        env,
    )
    results = _tool_results(events)
    assert f"on child {first_id}" in _answered(results, "send_to_child")
    first = owner.get(f"/sessions/{first_id}")["session"]
    assert first["runs_count"] == 2
    assert _succeeded(owner, first["last_run"]["id"])["result"].endswith(": second answer")
    delegated = _answered(results, "delegate")
    match = re.search(r"\(fan-out (\S+)\)", delegated)
    assert match, delegated
    fanout_children = owner.get(f"/fanouts/{match.group(1)}")["children"]
    assert [c["parent_id"] for c in fanout_children] == [root, root]
    assert all(c["id"] in delegated for c in fanout_children)
    for child, part in zip(fanout_children, ["part one", "part two"], strict=True):
        assert _succeeded(owner, child["last_run"]["id"])["result"].endswith(f": {part}")

    # 3. stop_child.
    _, events = _run(runtime, spec, ccq_tool("stop_child", {"child_id": first_id}), env)
    assert first_id in _answered(_tool_results(events), "stop_child")
    assert owner.get(f"/sessions/{first_id}")["session"]["status"] == "stopped"
    children = owner.get(f"/sessions/{root}/children")["children"]
    assert {c["id"] for c in children} == {
        first_id,
        spawned_id,
        *(c["id"] for c in fanout_children),
    }


@pytest.mark.parametrize("token", ["unknown", "revoked", "run_ended"])
def test_an_mcp_token_that_is_not_live_leaves_the_ccq_server_failed(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    acting: Acting,
    stack_settings: Settings,
    gateway: GatewayProcess,
    db_factory: sessionmaker[DbSession],
    token: str,
) -> None:
    """The model calls keep the run's live token; only the MCP header's variable changes."""
    if token == "unknown":
        bad = session_tokens.TOKEN_PREFIX + secrets.token_urlsafe(32)
    else:
        bad, run_id = mint_live_token(db_factory, acting.session_id)
        with session_scope(db_factory) as db:
            if token == "revoked":
                session_tokens.revoke_run(db, run_id)
            else:
                run = db.get(Run, run_id)
                assert run is not None
                run.status, run.finished_at = RunStatus.SUCCEEDED, datetime.now(UTC)
    refused_before = gateway.metrics().get("unauthenticated_total", 0)
    env = {**cli_environment(stack_settings, acting.token), "CCQ_SESSION_TOKEN": bad}

    result, events = _run(runtime, spec, ccq_tool("list_children", {}), env)

    init = _init(events)
    assert _ccq_server(init)["status"] == "failed", init["mcp_servers"]
    assert not any(tool.startswith("mcp__ccq__") for tool in init["tools"])
    is_error, text = _tool_results(events)["list_children"]
    assert is_error, text
    assert "tool error:" in (result.outcome.result_text or "")
    assert gateway.metrics().get("unauthenticated_total", 0) > refused_before
    assert bad not in gateway.log_path.read_text()


def test_the_session_settings_are_valid_for_the_cli(
    runtime: ContainerRuntime, spec: SessionContainerSpec, docker_client: docker.DockerClient
) -> None:
    container = docker_client.containers.get(runtime.ensure_running(spec).id)
    doctor = container.exec_run(["claude", "doctor"], user="1000:1000")

    output = doctor.output.decode(errors="replace")
    assert doctor.exit_code == 0, output
    assert "Invalid settings" not in output
