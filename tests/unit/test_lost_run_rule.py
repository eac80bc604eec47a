"""The pure parts of the lost-run rule: which runs start again, and what counts as a CLI."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.db.models import Run, RunStatus, Session, SessionStatus
from orchestrator.runtime.cli_runner import is_cli_command
from orchestrator.runtime.lost_runs import MAX_ATTEMPTS, retries_after_loss


def _pair(
    *,
    session_options: dict[str, Any] | None = None,
    run_options: dict[str, Any] | None = None,
    attempts: int = 1,
    cancel_requested: bool = False,
    session_status: str = SessionStatus.RUNNING,
) -> tuple[Run, Session]:
    session = Session(options=session_options or {}, status=session_status)
    run = Run(
        options=run_options or {},
        attempts=attempts,
        cancel_requested=cancel_requested,
        status=RunStatus.RUNNING,
    )
    return run, session


def test_a_lost_run_fails_unless_its_session_asked_for_retries() -> None:
    assert not retries_after_loss(*_pair())
    assert retries_after_loss(*_pair(session_options={"retry_on_worker_loss": True}))
    assert retries_after_loss(*_pair(run_options={"retry_on_worker_loss": True}))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"attempts": MAX_ATTEMPTS}, "its deliveries are used up"),
        ({"cancel_requested": True}, "its cancellation was asked for"),
        ({"session_status": SessionStatus.STOPPED}, "its session was stopped"),
    ],
)
def test_a_retrying_run_still_ends_when(changes: dict[str, Any], why: str) -> None:
    run, session = _pair(session_options={"retry_on_worker_loss": True}, **changes)
    assert not retries_after_loss(run, session), why


@pytest.mark.parametrize(
    ("command", "is_cli"),
    [
        ("claude -p --output-format stream-json", True),
        ("/usr/local/bin/claude -p --resume abc", True),
        ("node /usr/local/bin/claude -p", True),
        ("tini -- sleep infinity", False),
        ("sleep 60", False),
        ("bash -c cat ~/.claude/settings.json", False),
        ("python3 claude_helper.py", False),
    ],
)
def test_what_counts_as_a_cli_left_in_the_container(command: str, is_cli: bool) -> None:
    assert is_cli_command(command) is is_cli
