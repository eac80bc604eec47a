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


def test_the_kill_helper_runs_nothing_a_session_could_plant() -> None:
    argv = kill_tree_command()
    assert argv[:2] == ["/bin/sh", "-c"]
    script = argv[2]
    # Every command is a shell builtin or named by its absolute path on the read-only root.
    words = {line.split()[0] for line in script.strip().splitlines() if line.strip()}
    external = {w for w in words if w.startswith("/")}
    assert external == {"/usr/bin/sleep"}
    assert "PATH" not in script
    assert argv[3:] == ["ccq-kill"]  # no argument: it takes no input at all
