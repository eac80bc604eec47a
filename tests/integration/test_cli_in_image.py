"""The real Claude Code CLI in the worker image, against the scripted model server."""

from __future__ import annotations

import json
import re

import docker
import pytest

from model_server.server import ModelServer
from orchestrator.runtime.claude_cli import CliEvent
from orchestrator.runtime.cli_runner import CliRunResult, StopReason
from orchestrator.runtime.containers import ContainerRuntime, SessionContainerSpec
from orchestrator.settings import Settings
from tests.scripted_cli import run_scripted_cli

pytestmark = pytest.mark.integration


_run = run_scripted_cli


ECHO = re.compile(r"^echo \(messages=(\d+)\): (.*)$", re.DOTALL)


def _echo_match(result: CliRunResult) -> re.Match[str]:
    match = ECHO.match(result.outcome.result_text or "")
    assert match is not None, result.outcome.result_text
    return match


def _echoed(result: CliRunResult) -> str:
    return _echo_match(result).group(2)


def _message_count(result: CliRunResult) -> int:
    return int(_echo_match(result).group(1))


def _main_calls(model: ModelServer) -> list[dict[str, object]]:
    """Requests of the conversation itself (the CLI may also make side calls)."""
    return [r for r in model.requests() if r.get("path") == "/v1/messages" and r.get("has_tools")]


def test_cli_answers_through_model_server_and_reports_its_version(
    runtime: ContainerRuntime, spec: SessionContainerSpec, model: ModelServer, settings: Settings
) -> None:
    events: list[CliEvent] = []
    result = _run(runtime, spec, model, "hello from ccq [[echo]]", resume=False, events=events)

    assert result.stop_reason is StopReason.EXITED, result.stderr_tail
    assert result.exit_code == 0, result.stderr_tail
    init = next(e for e in events if e.type == "system" and e.data.get("subtype") == "init")
    assert init.data["claude_code_version"] == settings.claude_code_version
    assert init.data["session_id"] == spec.session_id
    assert init.data["cwd"] == "/workspace"
    assert result.outcome.subtype == "success"
    assert result.outcome.is_error is False
    assert _echoed(result) == "hello from ccq"
    assert events[-1].type == "result"


def test_resume_in_a_new_container_reaches_the_model_with_the_earlier_messages(
    runtime: ContainerRuntime, spec: SessionContainerSpec, model: ModelServer
) -> None:
    events: list[CliEvent] = []
    first = _run(runtime, spec, model, "remember the word tangerine", resume=False, events=events)
    assert first.outcome.subtype == "success", first.stderr_tail

    # The container goes away; the workspace and Claude home stay on the host.
    assert runtime.remove(spec.session_id)
    model.clear()
    second = _run(runtime, spec, model, "what was the word?", resume=True, events=events)

    assert second.outcome.subtype == "success", second.stderr_tail
    assert _echoed(second) == "what was the word?"
    # The resumed call carries the first exchange: two more messages than the first call.
    assert _message_count(second) == _message_count(first) + 2
    history = json.dumps(_main_calls(model)[-1]["body"])
    assert "remember the word tangerine" in history
    assert first.outcome.result_text is not None
    assert first.outcome.result_text in history


def test_a_hanging_model_is_stopped_by_the_silence_watchdog(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    model: ModelServer,
    docker_client: docker.DockerClient,
) -> None:
    events: list[CliEvent] = []
    result = _run(runtime, spec, model, "[[hang]]", resume=False, events=events, silence_timeout=3)

    assert result.stop_reason is StopReason.SILENCE
    assert not result.outcome.has_result
    container = docker_client.containers.get(runtime.ensure_running(spec).id)
    leftover = container.exec_run(["pgrep", "-f", "claude"], user="1000")
    assert leftover.exit_code == 1, leftover.output  # pgrep: no process matched


def test_session_containers_are_locked_down_and_labelled(
    runtime: ContainerRuntime, spec: SessionContainerSpec, docker_client: docker.DockerClient
) -> None:
    container = docker_client.containers.get(runtime.ensure_running(spec).id)
    host = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "1000:1000"
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] > 0
    assert host["Memory"] > 0
    assert host["NanoCpus"] > 0
    assert not any("docker.sock" in bind for bind in host["Binds"])
    labels = container.labels
    assert labels["ccq.session"] == spec.session_id
    assert labels["ccq.owner"] == "tester"
    assert labels["ccq.managed"] == "1"
    assert "ccq.parent" in labels
    # The same container is found again by label, not created twice.
    assert runtime.ensure_running(spec).id == container.id
