"""The `ccq` client commands' pure formatting: events, tables, summaries, errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import pytest

from cli.console import stderr_color, stdout_color, stdout_tty
from cli.render import (
    format_age,
    format_api_error,
    format_time,
    format_unreachable,
    run_details,
    run_summary,
    session_details,
    sessions_table,
)
from cli.render_stream import StreamState, TailView, finish_stream, render_event, run_footer
from client import ApiError
from client.formatting import format_cost, format_duration

NOW = datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC)
SESSION_ID = "3a4e0109-5de1-4ad0-9286-57bf952c75c1"
RUN_ID = "6f00a5d8-e9a9-42a7-9eee-86853fdc2374"


def _event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "1-0",
        "session_id": SESSION_ID,
        "run_id": RUN_ID,
        "seq": 1,
        "type": kind,
        "data": data,
    }


def _delta(text: str) -> dict[str, Any]:
    return _event(
        "stream_event",
        {
            "type": "stream_event",
            "event": {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        },
    )


def _assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return _event("assistant", {"type": "assistant", "message": {"content": list(blocks)}})


def _render(*events: dict[str, Any], color: bool = False) -> str:
    state, out = StreamState(), []
    for event in events:
        state, text = render_event(state, event, color)
        out.append(text)
    out.append(finish_stream(state))
    return "".join(out)


def _run(**overrides: Any) -> dict[str, Any]:
    run = {
        "id": RUN_ID,
        "session_id": SESSION_ID,
        "seq": 2,
        "status": "succeeded",
        "result": "echo (messages=4): hi",
        "subtype": "success",
        "is_error": False,
        "error": None,
        "total_cost_usd": 0.011148,
        "num_turns": 1,
        "duration_ms": 2345,
        "attempts": 1,
        "created_at": "2026-01-31T11:59:00.123456+00:00",
        "started_at": "2026-01-31T11:59:01+00:00",
        "finished_at": "2026-01-31T11:59:03+00:00",
    }
    return {**run, **overrides}


def _session(**overrides: Any) -> dict[str, Any]:
    session: dict[str, Any] = {
        "id": SESSION_ID,
        "status": "idle",
        "parent_id": None,
        "batch_id": None,
        "model": None,
        "options": {},
        "metadata": {},
        "runs_count": 2,
        "total_cost_usd": 0.02,
        "last_run": None,
        "created_at": "2026-01-31T11:00:00+00:00",
        "last_active_at": "2026-01-31T11:55:00+00:00",
    }
    return {**session, **overrides}


# --- events ---------------------------------------------------------------------------


def test_text_deltas_print_inline_and_the_final_message_does_not_repeat_them() -> None:
    out = _render(
        _delta("chunk 1/2 "),
        _delta("chunk 2/2 "),
        _assistant({"type": "text", "text": "chunk 1/2 chunk 2/2 "}),
    )
    assert out == "chunk 1/2 chunk 2/2 \n"


def test_a_tool_call_gets_its_own_line_after_inline_text() -> None:
    out = _render(
        _delta("Let me look."),
        _assistant({"type": "text", "text": "Let me look."}),
        _assistant({"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}),
        _event(
            "user",
            {"message": {"content": [{"type": "tool_result", "content": "a.py\nb.py"}]}},
        ),
        _delta("Two files."),
    )
    assert out == 'Let me look.\n-> Bash {"command": "ls"}\n<- a.py b.py\nTwo files.\n'


def test_a_tool_call_in_mid_line_starts_a_new_line() -> None:
    out = _render(
        _delta("thinking"),
        _assistant({"type": "tool_use", "name": "Read", "input": {}}),
    )
    assert out == "thinking\n-> Read {}\n"


def test_assistant_text_prints_whole_when_nothing_was_streamed() -> None:
    assert _render(_assistant({"type": "text", "text": "hello"})) == "hello\n"


def test_long_tool_input_and_results_stay_on_one_line() -> None:
    out = _render(
        _assistant({"type": "tool_use", "name": "Write", "input": {"content": "x" * 1000}}),
        _event(
            "user",
            {
                "message": {
                    "content": [
                        {
                            "type": "tool_result",
                            "is_error": True,
                            "content": [{"type": "text", "text": "no\nsuch file " * 50}],
                        }
                    ]
                }
            },
        ),
    )
    tool, result = out.splitlines()
    assert tool.startswith('-> Write {"content": "xxx')
    assert tool.endswith("…")
    assert len(tool) == len("-> Write ") + 200
    assert result.startswith("<- error: no such file no such file")
    assert len(result) <= 180


def test_init_stderr_and_raw_lines_show_and_lifecycle_events_do_not() -> None:
    out = _render(
        _event("ccq.run.started", {}),
        _event(
            "system",
            {"subtype": "init", "claude_code_version": "2.1.329", "model": "claude-x"},
        ),
        _event("ccq.stderr", {"line": "warning: something"}),
        _event("ccq.raw", {"line": "not json"}),
        _event("stream_event", {"event": {"type": "message_start"}}),
        _event("result", {"subtype": "success", "result": "done", "total_cost_usd": 0.1}),
        _event("ccq.run.finished", {"status": "succeeded"}),
    )
    assert out == (
        "Claude Code 2.1.329, model claude-x\nstderr: warning: something\nraw: not json\n"
    )


def test_events_are_colored_only_when_asked() -> None:
    tool = _assistant({"type": "tool_use", "name": "Bash", "input": {}})
    assert "\x1b[" not in _render(tool)
    colored = _render(tool, color=True)
    assert colored.startswith("\x1b[")
    assert click.unstyle(colored) == "-> Bash {}\n"


def test_a_malformed_event_prints_nothing() -> None:
    assert _render(_event("assistant", {"message": "oops"}), _event("stream_event", {})) == ""


# --- a tail's view --------------------------------------------------------------------


def _finished(**data: Any) -> dict[str, Any]:
    base = {
        "status": "succeeded",
        "result": "done",
        "is_error": False,
        "error": None,
        "total_cost_usd": 0.011148,
        "num_turns": 1,
    }
    return _event("ccq.run.finished", {**base, **data})


def _feed(view: TailView, *events: dict[str, Any]) -> str:
    return "".join(view.feed(e) for e in events) + view.close()


def test_a_plain_view_prints_what_render_event_prints() -> None:
    events = [_event("ccq.run.started", {}), _delta("half a line"), _finished()]
    assert _feed(TailView(), *events) == _render(*events) == "half a line\n"


def test_a_run_tail_ends_with_the_runs_status_cost_and_turns() -> None:
    out = _feed(
        TailView(footers=True),
        _event("ccq.run.queued", {"run_seq": 2}),
        _event("ccq.run.started", {}),
        _delta("echo: hi"),
        _assistant({"type": "text", "text": "echo: hi"}),
        _event("result", {"subtype": "success", "total_cost_usd": 0.011148}),
        _finished(),
    )
    assert out == f"echo: hi\nrun {RUN_ID} succeeded  $0.0111  1 turn\n"


def test_a_session_tail_opens_each_run_with_a_header() -> None:
    out = _feed(
        TailView(headers=True, footers=True),
        _event("ccq.run.queued", {"run_seq": 2}),
        _event("ccq.run.started", {}),
        _delta("cut short"),
        _finished(status="cancelled", num_turns=None, total_cost_usd=0),
        _event("ccq.session.status", {"status": "stopped"}),
    )
    assert out.splitlines() == [
        f"=== run {RUN_ID} (#2)",
        "cut short",
        f"run {RUN_ID} cancelled  $0  - turns",
        "session stopped",
    ]


def test_a_header_without_the_queued_event_has_no_number() -> None:
    out = _feed(TailView(headers=True), _event("ccq.run.started", {}))
    assert out == f"=== run {RUN_ID}\n"


def test_a_new_run_does_not_inherit_the_last_ones_streamed_text() -> None:
    view = TailView()
    # A run killed after a delta never sent the message that would end its text.
    _feed(view, _event("ccq.run.started", {}), _delta("partial"), _finished(status="failed"))
    out = _feed(view, _event("ccq.run.started", {}), _assistant({"type": "text", "text": "whole"}))
    assert out == "whole\n"


def test_a_failed_runs_footer_shows_its_error_in_red_on_a_terminal() -> None:
    failed = _finished(status="failed", error="no output for 300 s", num_turns=3)
    assert run_footer(failed) == (
        f"run {RUN_ID} failed  $0.0111  3 turns\nerror: no output for 300 s"
    )
    colored = run_footer(failed, color=True)
    assert click.style("error: no output for 300 s", fg="red") in colored
    assert click.unstyle(colored) == run_footer(failed)


def test_an_error_the_cli_reported_is_the_footers_error() -> None:
    failed = _finished(status="failed", is_error=True, result="API Error: 500 boom")
    assert run_footer(failed).splitlines()[1] == "error: API Error: 500 boom"


def test_a_model_error_the_cli_reports_is_red_and_not_repeated_by_the_footer() -> None:
    message = "API Error: 500 boom"
    api_error = _event(
        "assistant",
        {
            "type": "assistant",
            "error": "server_error",
            "is_api_error_message": True,
            "message": {"content": [{"type": "text", "text": message}]},
        },
    )
    failed = _finished(status="failed", is_error=True, result=message, num_turns=1)

    plain = _feed(TailView(footers=True), _event("ccq.run.started", {}), api_error, failed)
    assert plain == f"{message}\nrun {RUN_ID} failed  $0.0111  1 turn\n"
    colored = _feed(TailView(True, footers=True), api_error, failed)
    assert colored.startswith(click.style(message, fg="red") + "\n")


# --- numbers and times ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"), [(None, "-"), (0, "$0"), (0.011148, "$0.0111"), (12.5, "$12.5000")]
)
def test_format_cost(value: float | None, text: str) -> None:
    assert format_cost(value) == text


@pytest.mark.parametrize(
    ("ms", "text"), [(None, "-"), (157, "0.2s"), (59_000, "59.0s"), (125_000, "2m05s")]
)
def test_format_duration(ms: int | None, text: str) -> None:
    assert format_duration(None if ms is None else ms / 1000, tenths=True) == text


@pytest.mark.parametrize(
    ("iso", "text"),
    [
        (None, "-"),
        ("2026-01-31T11:59:58+00:00", "2s ago"),
        ("2026-01-31T11:55:00+00:00", "5m ago"),
        ("2026-01-31T09:00:00+00:00", "3h ago"),
        ("2026-01-29T12:00:00+00:00", "2d ago"),
        ("2026-01-31T12:00:05+00:00", "0s ago"),  # clock skew is not the future
        ("2026-01-31T11:59:00", "1m ago"),  # naive means UTC
    ],
)
def test_format_age(iso: str | None, text: str) -> None:
    assert format_age(iso, NOW) == text


def test_format_time_is_utc_to_the_second() -> None:
    assert format_time("2026-01-31T13:59:00.5+02:00") == "2026-01-31 11:59:00 UTC"
    assert format_time(None) == "-"


# --- runs and sessions ----------------------------------------------------------------


def test_run_summary_names_the_session_run_status_cost_and_turns() -> None:
    assert run_summary(_run()) == (
        f"session {SESSION_ID}  run {RUN_ID} succeeded  $0.0111  1 turn  2.3s"
    )


def test_run_summary_of_a_failed_run_adds_its_error() -> None:
    run = _run(status="timed_out", num_turns=None, total_cost_usd=None, duration_ms=None)
    summary = run_summary({**run, "error": "no output for 300 s"})
    assert summary == (
        f"session {SESSION_ID}  run {RUN_ID} timed_out  -  - turns  -\nerror: no output for 300 s"
    )


def test_run_summary_colors_the_status_only_when_asked() -> None:
    colored = run_summary(_run(num_turns=3), color=True)
    assert click.style("succeeded", fg="green") in colored
    assert click.unstyle(colored) == run_summary(_run(num_turns=3))
    assert "3 turns" in colored


def test_run_details_show_state_timings_and_result() -> None:
    text = run_details(_run(status="failed", subtype="error_max_turns", attempts=2))
    lines = text.splitlines()
    assert lines[0] == f"run {RUN_ID} (#2)"
    assert "  status    failed (error_max_turns)" in lines
    assert "  created   2026-01-31 11:59:00 UTC" in lines
    assert "  attempts  2" in lines
    assert lines[-2:] == ["", "echo (messages=4): hi"]


def test_run_details_leave_out_the_clis_success_subtype() -> None:
    assert "  status    succeeded" in run_details(_run()).splitlines()


def test_session_details_with_its_last_run() -> None:
    session = _session(
        options={"max_turns": 3}, metadata={"ticket": "T-1"}, last_run=_run(), model="m1"
    )
    lines = session_details(session, NOW).splitlines()
    assert lines[0] == f"session {SESSION_ID}"
    assert "  model        m1" in lines
    assert "  last active  5m ago" in lines
    assert '  options      {"max_turns": 3}' in lines
    assert '  metadata     {"ticket": "T-1"}' in lines
    assert f"last run {RUN_ID} (#2)" in lines


def test_session_details_without_runs() -> None:
    text = session_details(_session(runs_count=0, total_cost_usd=0), NOW)
    assert "last run" not in text
    assert "  model        default" in text.splitlines()


def test_sessions_table_lines_up_columns() -> None:
    sessions = [
        _session(),
        _session(id="b" * 36, status="running", runs_count=12, total_cost_usd=1.5),
    ]
    assert sessions_table(sessions, NOW).splitlines() == [
        "ID                                    STATUS   RUNS  COST     LAST ACTIVE",
        f"{SESSION_ID}  idle     2     $0.0200  5m ago",
        f"{'b' * 36}  running  12    $1.5000  5m ago",
    ]


def test_sessions_table_colors_keep_the_columns() -> None:
    sessions = [_session(), _session(status="failed")]
    colored = sessions_table(sessions, NOW, color=True)
    assert click.style("failed", fg="red") in colored
    assert click.unstyle(colored) == sessions_table(sessions, NOW)


def test_sessions_table_when_empty() -> None:
    assert sessions_table([], NOW) == "no sessions"


# --- errors ---------------------------------------------------------------------------


def test_an_api_error_lists_details_the_message_does_not_repeat() -> None:
    error = ApiError(
        400,
        "invalid_input",
        "prompt: String should have at least 1 character",
        [
            {"field": "prompt", "reason": "String should have at least 1 character"},
            {"field": "max_turns", "reason": "Input should be greater than or equal to 1"},
        ],
    )
    assert format_api_error(error) == (
        "ccq: prompt: String should have at least 1 character\n"
        "  max_turns: Input should be greater than or equal to 1"
    )


def test_a_401_says_how_to_get_a_token() -> None:
    text = format_api_error(ApiError(401, "unauthorized", "token expired"))
    assert text.splitlines()[0] == "ccq: token expired"
    assert "CCQ_TOKEN" in text


def test_dependency_details_are_listed() -> None:
    error = ApiError(503, "dependency_unavailable", "not ready: redis", {"redis": "refused"})
    assert format_api_error(error) == "ccq: not ready: redis\n  redis: refused"


def test_unreachable_says_where_and_what_to_check() -> None:
    assert format_unreachable("http://127.0.0.1:8080", "connection refused") == (
        "ccq: cannot reach the ccq API at http://127.0.0.1:8080 "
        "(connection refused; is `make up` running?)"
    )


# --- where colors go ------------------------------------------------------------------


def test_colors_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert not stdout_color()  # pytest captures stdout: not a terminal
    assert not stdout_tty()
    monkeypatch.setenv("FORCE_COLOR", "1")  # as a terminal would be
    assert stdout_tty()
    assert stdout_color()
    monkeypatch.setenv("NO_COLOR", "1")
    assert stdout_tty()  # still a terminal (a bar is redrawn in place)...
    assert not stdout_color()  # ...without colors
    assert not stderr_color()
