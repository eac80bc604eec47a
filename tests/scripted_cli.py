"""The real CLI run in a session container straight at the scripted model server, with
no ccq stack around it: for tests of the container and of ``run_cli`` themselves."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from model_server.server import ModelServer
from orchestrator.runtime.claude_cli import CliEvent, CliOptions, build_command
from orchestrator.runtime.cli_runner import CliRunResult, run_cli
from orchestrator.runtime.containers import ContainerRuntime, SessionContainerSpec
from tests.processes import SCRIPTED_MODEL_KEY, container_base_url


def run_scripted_cli(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    model: ModelServer,
    prompt: str,
    *,
    resume: bool,
    events: list[CliEvent],
    silence_timeout: float = 120,
    time_limit: float = 300,
    should_cancel: Callable[[], bool] = lambda: False,
) -> CliRunResult:
    """One run of ``prompt`` in the spec's container (made if missing), its events
    appended to ``events``."""
    container = runtime.ensure_running(spec)
    return run_cli(
        runtime,
        container,
        run_id=str(uuid.uuid4()),
        argv=build_command(spec.session_id, resume=resume, options=CliOptions()),
        prompt=prompt,
        env={
            "ANTHROPIC_BASE_URL": container_base_url(model),
            "ANTHROPIC_API_KEY": SCRIPTED_MODEL_KEY,
        },
        on_event=events.append,
        silence_timeout=silence_timeout,
        time_limit=time_limit,
        should_cancel=should_cancel,
    )
