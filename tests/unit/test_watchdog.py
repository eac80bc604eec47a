from __future__ import annotations

from orchestrator.runtime.cli_runner import (
    EXIT_GRACE_SECONDS,
    StopReason,
    _watchdog,
    kill_tree_command,
)


def test_a_quiet_run_is_stopped_for_silence() -> None:
    assert (
        _watchdog(100.0, 0.0, 89.0, None, silence_timeout=10, time_limit=1000) is StopReason.SILENCE
    )
    assert _watchdog(100.0, 0.0, 91.0, None, silence_timeout=10, time_limit=1000) is None


def test_a_chatty_run_is_stopped_at_its_time_limit() -> None:
    assert (
        _watchdog(1001.0, 0.0, 1000.9, None, silence_timeout=10, time_limit=1000)
        is StopReason.TIME_LIMIT
    )


def test_a_cli_lingering_after_its_result_is_stopped() -> None:
    now = 50.0
    result_at = now - EXIT_GRACE_SECONDS - 1
    assert (
        _watchdog(now, 0.0, now, result_at, silence_timeout=1000, time_limit=1000)
        is StopReason.SILENCE
    )
    assert _watchdog(now, 0.0, now, now - 1, silence_timeout=1000, time_limit=1000) is None


def test_the_kill_command_takes_the_run_id_as_an_argument_not_as_script_text() -> None:
    argv = kill_tree_command("0d5c3a1e-0000-4000-8000-000000000000")
    assert argv[:2] == ["sh", "-c"]
    assert "0d5c3a1e" not in argv[2]
    assert argv[-1] == "0d5c3a1e-0000-4000-8000-000000000000"
