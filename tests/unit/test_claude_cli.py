from __future__ import annotations

import json
from decimal import Decimal

from orchestrator.runtime.claude_cli import (
    CliOptions,
    LineSplitter,
    RunOutcome,
    apply_event,
    build_command,
    cli_environment,
    parse_line,
    parse_stream,
)
from orchestrator.settings import load_settings

SESSION = "3f1c2b8e-1111-4222-8333-944455556666"


def test_first_run_fixes_the_session_id_and_later_runs_resume_it() -> None:
    first = build_command(SESSION, resume=False, options=CliOptions())
    later = build_command(SESSION, resume=True, options=CliOptions())
    assert first[:4] == ["/usr/local/bin/claude", "-p", "--output-format=stream-json", "--verbose"]
    assert "--include-partial-messages" in first
    assert f"--session-id={SESSION}" in first
    assert f"--resume={SESSION}" not in first
    assert f"--resume={SESSION}" in later


def test_options_become_flags_and_the_prompt_is_never_in_argv() -> None:
    argv = build_command(
        SESSION,
        resume=False,
        options=CliOptions(
            model="claude-sonnet-4-5",
            append_system_prompt="be brief; $(rm -rf /)",
            max_turns=3,
            allowed_tools=("Read", "Bash(git:*)"),
            mcp_config_path="/home/claude/.ccq/mcp.json",
        ),
    )
    assert "--model=claude-sonnet-4-5" in argv
    assert "--append-system-prompt=be brief; $(rm -rf /)" in argv  # one argv item, no shell
    assert "--max-turns=3" in argv
    assert not [a for a in argv if a.startswith("--max-budget-usd")]  # the gateway's job
    assert "--allowedTools=Read,Bash(git:*)" in argv
    assert "--strict-mcp-config" in argv


def test_the_cli_gets_the_gateway_and_the_session_token_never_the_operators_credential() -> None:
    settings = load_settings(
        env_file=None,
        gateway_port=9123,
        anthropic_api_key="sk-ant-operator",
        claude_code_oauth_token="oauth-operator",
    )
    env = cli_environment(settings, "ccqs_token")
    assert env == {
        "ANTHROPIC_BASE_URL": "http://host.docker.internal:9123",
        "ANTHROPIC_API_KEY": "ccqs_token",
        "CCQ_SESSION_TOKEN": "ccqs_token",
    }
    assert "operator" not in repr(env)


def test_a_line_that_is_not_a_json_object_becomes_a_raw_event() -> None:
    assert parse_line("") is None
    assert parse_line("not json").type == "ccq.raw"  # type: ignore[union-attr]
    assert parse_line("[1, 2]").type == "ccq.raw"  # type: ignore[union-attr]
    assert parse_line('{"no": "type"}').type == "ccq.raw"  # type: ignore[union-attr]
    event = parse_line('{"type": "assistant", "message": {}}')
    assert event is not None
    assert event.type == "assistant"


def test_lines_are_reassembled_across_chunks_and_utf8_boundaries() -> None:
    payload = json.dumps({"type": "assistant", "text": "héllo ✓"}).encode() + b"\n"
    chunks = [payload[i : i + 3] for i in range(0, len(payload), 3)] + [b"trailing"]
    events = list(parse_stream(chunks))
    assert [e.type for e in events] == ["assistant", "ccq.raw"]
    assert events[0].data["text"] == "héllo ✓"
    assert events[1].data == {"line": "trailing"}


def test_a_runaway_line_is_cut_rather_than_buffered_forever() -> None:
    splitter = LineSplitter(max_line_bytes=10)
    assert list(splitter.feed(b"x" * 25)) == ["x" * 25]
    assert list(splitter.flush()) == []


def test_the_result_message_fills_the_outcome() -> None:
    outcome = RunOutcome()
    init = parse_line('{"type":"system","subtype":"init","claude_code_version":"2.1.329"}')
    result = parse_line(
        json.dumps(
            {
                "type": "result",
                "subtype": "success",
                "is_error": False,
                "result": "done",
                "total_cost_usd": 0.0123,
                "usage": {"input_tokens": 10, "output_tokens": 5},
                "num_turns": 2,
                "duration_ms": 1500,
                "duration_api_ms": 900,
            }
        )
    )
    assert init is not None
    assert result is not None
    apply_event(outcome, init)
    apply_event(outcome, result)
    assert outcome.cli_version == "2.1.329"
    assert outcome.has_result
    assert outcome.result_text == "done"
    assert outcome.total_cost_usd == Decimal("0.0123")
    assert outcome.usage == {"input_tokens": 10, "output_tokens": 5}
    assert (outcome.num_turns, outcome.duration_ms, outcome.duration_api_ms) == (2, 1500, 900)


def test_a_malformed_result_does_not_crash_and_keeps_what_it_can() -> None:
    outcome = RunOutcome()
    event = parse_line('{"type":"result","total_cost_usd":"lots","num_turns":true,"usage":[]}')
    assert event is not None
    apply_event(outcome, event)
    assert outcome.subtype == "unknown"
    assert outcome.total_cost_usd is None
    assert outcome.num_turns is None
    assert outcome.usage is None
