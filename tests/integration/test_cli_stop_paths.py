"""Never two CLIs on one session: a CLI is stopped on every path that is not its own exit,
and one an earlier delivery left behind is ended before the next starts."""

from __future__ import annotations

from typing import Any

import pytest

from model_server.server import ModelServer
from orchestrator.runtime.claude_cli import CliEvent
from orchestrator.runtime.cli_runner import ensure_no_cli
from orchestrator.runtime.containers import ContainerRuntime, SessionContainerSpec
from tests.scripted_cli import run_scripted_cli
from tests.waiting import wait_for


class StoreDown(Exception):
    pass


class FailingEvents(list[CliEvent]):
    """Takes a few events, then fails as a sink whose store went away would."""

    def append(self, event: CliEvent) -> None:
        super().append(event)
        if len(self) == 4:
            raise StoreDown("the event store went away")


def _clis(runtime: ContainerRuntime, spec: SessionContainerSpec) -> list[str]:
    container = runtime.find(spec.session_id)
    assert container is not None
    return [c for c in runtime.commands(container) if "claude" in c.split()[0]]


def test_an_error_while_handling_output_stops_the_cli_before_it_propagates(
    runtime: ContainerRuntime, spec: SessionContainerSpec, model: ModelServer
) -> None:
    events: Any = FailingEvents()
    with pytest.raises(StoreDown):
        run_scripted_cli(runtime, spec, model, "[[stream 200 0.1]]", resume=False, events=events)
    container = runtime.find(spec.session_id)
    # Stopped by the kill helper (the container stays) or with its container.
    assert container is None or _clis(runtime, spec) == []


def test_a_cli_left_in_the_container_is_ended_before_the_next_one_starts(
    runtime: ContainerRuntime, spec: SessionContainerSpec
) -> None:
    container = runtime.ensure_running(spec)
    # A process that looks like a CLI an earlier delivery started and nobody stopped.
    leftover = runtime.exec(
        container, ["/bin/bash", "-c", "exec -a claude /usr/bin/sleep 300"], env={}
    )
    try:
        leftover.write_stdin_and_close(b"")
        wait_for(lambda: _clis(runtime, spec), timeout=30, what="the leftover CLI to start")

        assert ensure_no_cli(runtime, container) is True
        assert _clis(runtime, spec) == []
        assert runtime.find(spec.session_id) is not None, "its container stays for the next CLI"
    finally:
        leftover.close()


def test_no_cli_means_nothing_is_touched(
    runtime: ContainerRuntime, spec: SessionContainerSpec
) -> None:
    container = runtime.ensure_running(spec)
    before = runtime.commands(container)
    assert ensure_no_cli(runtime, container) is True
    assert runtime.commands(container) == before
