"""Directive parsing and reply building of the scripted model server (pure logic, no HTTP)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from model_server.directives import (
    Directive,
    DirectiveError,
    Plan,
    ToolCall,
    error_type_for,
    latest_turn,
    plan_reply,
    scan,
    strip_system_reminders,
)
from model_server.recording import describe_body, fingerprint, is_main_call, redact_headers
from model_server.sse import Reply, estimate_tokens, sse_frame


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def plan_for(text: str, *history: dict[str, Any]) -> Plan:
    return plan_reply([*history, user(text)])


# -- scan -------------------------------------------------------------------------------------


def test_scan_removes_directives_and_keeps_the_rest() -> None:
    directives, rest = scan("hello [[echo]] world [[sleep 0.5]]")
    assert directives == [Directive("echo"), Directive("sleep", ("0.5",))]
    assert rest == "hello  world "


def test_scan_leaves_unknown_and_non_directive_brackets_as_text() -> None:
    text = "see [[WikiLink]] and [[ -f x ]] and [[echoes]] and [[unknown thing]]"
    assert scan(text) == ([], text)


def test_scan_tool_input_may_nest_braces_brackets_and_closing_brackets_in_strings() -> None:
    text = '[[tool Bash {"command": "echo ]] [[x]]", "opts": {"a": [1, {"b": []}]}}]] after'
    directives, rest = scan(text)
    assert directives == [
        Directive(
            "tool",
            tool_name="Bash",
            tool_input={"command": "echo ]] [[x]]", "opts": {"a": [1, {"b": []}]}},
        )
    ]
    assert rest == " after"


def test_scan_tool_without_input_gets_an_empty_object() -> None:
    directives, _ = scan("[[tool mcp__ccq__list_children]]")
    assert directives == [Directive("tool", tool_name="mcp__ccq__list_children")]


def test_scan_tool_input_across_lines() -> None:
    directives, _ = scan('[[tool Write {\n  "file_path": "/w/a.txt",\n  "content": "x"\n}\n]]')
    assert directives[0].tool_input == {"file_path": "/w/a.txt", "content": "x"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[tool Bash {"command": }]]', "not valid JSON"),
        ('[[tool Bash {"command": "x"}', "expected a JSON object then ]]"),
        ("[[tool Bash [1, 2]]]", "expected a JSON object then ]]"),
        ("[[tool ]]", "missing tool name"),
        ("[[sleep 1", "missing closing ]]"),
    ],
)
def test_scan_rejects_malformed_known_directives(text: str, problem: str) -> None:
    with pytest.raises(DirectiveError, match=problem):
        scan(text)


def test_strip_system_reminders_including_an_unterminated_one() -> None:
    text = "a<system-reminder>\n[[error 500]]\n</system-reminder>b<system-reminder>[[hang]]"
    assert strip_system_reminders(text) == "ab"


# -- plan_reply -------------------------------------------------------------------------------


def test_default_is_echo_with_message_count_and_clean_text() -> None:
    plan = plan_for("  hello there  ")
    assert plan == Plan("echo", ("echo (messages=1): hello there",))
    assert plan.stop_reason == "end_turn"
    assert plan.label == "echo"


def test_echo_counts_the_whole_conversation() -> None:
    history = [user("first"), {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]
    assert plan_for("second [[echo]]", *history).text == "echo (messages=3): second"


def test_text_blocks_are_joined_and_system_reminders_ignored() -> None:
    content = [
        {
            "type": "text",
            "text": "<system-reminder>\nCLAUDE.md says [[error 500]]\n</system-reminder>",
        },
        {"type": "text", "text": "hello [[echo]]"},
        {"type": "image", "source": {}},
    ]
    assert plan_reply([user(content)]).text == "echo (messages=1): hello"


def test_an_unterminated_reminder_does_not_swallow_the_next_block() -> None:
    content = [
        {"type": "text", "text": "<system-reminder>\nno end"},
        {"type": "text", "text": "mine [[stream 1]]"},
    ]
    assert plan_reply([user(content)]).kind == "stream"


def test_deeply_nested_tool_input_is_a_directive_error() -> None:
    with pytest.raises(DirectiveError, match="not valid JSON"):
        plan_for("[[tool Deep " + '{"a":' * 100_000 + "1" + "}" * 100_000 + "]]")


def test_trailing_system_turns_are_skipped() -> None:
    """Claude Code 2.1.x appends a ``system`` message after the user's prompt."""
    messages = [user("hi [[stream 2]]"), {"role": "system", "content": "# Environment [[hang]]"}]
    assert latest_turn(messages) == messages[0]
    assert plan_reply(messages).chunks == ("chunk 1/2 ", "chunk 2/2 ")


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "non-empty list"),
        (None, "non-empty list"),
        ("hi", "non-empty list"),
        (["hi"], "must be an object"),
        ([{"role": "system", "content": "x"}], "no user or assistant message"),
    ],
)
def test_unusable_messages_are_rejected(messages: Any, problem: str) -> None:
    with pytest.raises(DirectiveError, match=problem):
        plan_reply(messages)


def test_stream_makes_n_chunks_with_a_delay() -> None:
    plan = plan_for("[[stream 3 0.25]]")
    assert plan.kind == "stream"
    assert plan.chunks == ("chunk 1/3 ", "chunk 2/3 ", "chunk 3/3 ")
    assert plan.chunk_delay == 0.25


def test_stream_delay_is_optional() -> None:
    assert plan_for("[[stream 1]]") == Plan("stream", ("chunk 1/1 ",))


@pytest.mark.parametrize(
    "directive",
    ["[[stream]]", "[[stream x]]", "[[stream 0]]", "[[stream 2 -1]]", "[[stream 2 1 3]]"],
)
def test_stream_rejects_bad_arguments(directive: str) -> None:
    with pytest.raises(DirectiveError, match=r"\[\[stream"):
        plan_for(directive)


def test_sleep_adds_up_and_combines_with_echo() -> None:
    plan = plan_for("[[sleep 0.5]] hi [[sleep 1.5]]")
    assert (plan.kind, plan.sleep, plan.text) == ("echo", 2.0, "echo (messages=1): hi")
    assert plan.label == "sleep+echo"


@pytest.mark.parametrize("directive", ["[[sleep]]", "[[sleep x]]", "[[sleep nan]]", "[[sleep -1]]"])
def test_sleep_rejects_bad_arguments(directive: str) -> None:
    with pytest.raises(DirectiveError, match=r"\[\[sleep"):
        plan_for(directive)


def test_echo_and_hang_take_no_arguments() -> None:
    with pytest.raises(DirectiveError, match="takes no arguments"):
        plan_for("[[echo loud]]")
    with pytest.raises(DirectiveError, match="takes no arguments"):
        plan_for("[[hang 5]]")


def test_several_tools_become_several_calls() -> None:
    plan = plan_for('[[tool Bash {"command": "ls"}]] [[tool Read {"file_path": "/a"}]]')
    assert plan.kind == "tool"
    assert plan.tools == (
        ToolCall("Bash", {"command": "ls"}),
        ToolCall("Read", {"file_path": "/a"}),
    )
    assert plan.chunks == ()
    assert plan.stop_reason == "tool_use"


def test_tool_after_explicit_text_keeps_the_text_block() -> None:
    plan = plan_for('[[stream 2]] [[tool Bash {"command": "ls"}]]')
    assert (plan.kind, plan.chunks, len(plan.tools)) == ("tool", ("chunk 1/2 ", "chunk 2/2 "), 1)


def test_tool_results_are_answered_with_their_text() -> None:
    results = [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "hi\n"},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_2",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "image"},
                {"type": "text", "text": "b"},
            ],
        },
        {"type": "tool_result", "tool_use_id": "toolu_3", "content": "denied", "is_error": True},
        {"type": "text", "text": "<system-reminder>x</system-reminder>"},
    ]
    plan = plan_reply([user("[[tool Bash {}]]"), user(results)])
    assert plan.kind == "tool_result"
    assert plan.text == "tool result: hi\na\n[image]\nb\ntool error: denied"
    assert plan.stop_reason == "end_turn"


def test_error_directive_with_default_and_custom_message() -> None:
    assert plan_for("[[error 529]]") == Plan(
        "error", error_status=529, error_message="scripted error 529 (overloaded_error)"
    )
    plan = plan_for("[[sleep 1]] [[error 401 bad key here]]")
    assert (plan.error_status, plan.error_message, plan.sleep) == (401, "bad key here", 1.0)


def test_error_times_and_skip_errors() -> None:
    messages = [user("[[error 429 times=2 slow down]] hi")]
    plan = plan_reply(messages)
    assert (plan.error_status, plan.error_times, plan.error_message) == (429, 2, "slow down")
    assert plan_reply(messages, skip_errors=True).text == "echo (messages=1): hi"


@pytest.mark.parametrize(
    "directive",
    ["[[error]]", "[[error x]]", "[[error 200]]", "[[error 600]]", "[[error 500 times=0]]"],
)
def test_error_rejects_bad_arguments(directive: str) -> None:
    with pytest.raises(DirectiveError, match=r"\[\[error"):
        plan_for(directive)


def test_error_wins_over_hang_and_hang_over_the_rest() -> None:
    assert plan_for("[[hang]] [[error 500]]").kind == "hang"
    assert plan_for("[[error 500]] [[hang]]").kind == "error"
    assert plan_for("[[tool Bash {}]] [[hang]] [[stream 2]]").kind == "hang"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
        (418, "invalid_request_error"),
    ],
)
def test_error_types(status: int, kind: str) -> None:
    assert error_type_for(status) == kind


# -- reply rendering --------------------------------------------------------------------------


def test_reply_message_object() -> None:
    reply = Reply(plan_for("hi"), "claude-test", input_tokens=7)
    message = reply.message()
    assert message["id"].startswith("msg_")
    assert message["type"] == "message"
    assert message["model"] == "claude-test"
    assert message["content"] == [{"type": "text", "text": "echo (messages=1): hi"}]
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] == 7
    assert message["usage"]["output_tokens"] >= 1
    assert message["usage"]["cache_read_input_tokens"] == 0


def test_reply_events_follow_the_streaming_protocol() -> None:
    plan = plan_for('[[stream 2 0.5]] [[tool Bash {"command": "' + "x" * 100 + '"}]]')
    reply = Reply(plan, "m", input_tokens=1)
    start = reply.start_event()
    assert start.data["message"]["content"] == []
    assert start.data["message"]["stop_reason"] is None
    events = list(reply.events())
    names = [e.name for e in events]
    assert names[0] == "ping"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2

    text_deltas = [e for e in events if e.data.get("delta", {}).get("type") == "text_delta"]
    assert [e.data["delta"]["text"] for e in text_deltas] == list(plan.chunks)
    assert [e.delay for e in text_deltas] == [0.0, 0.5]

    tool_start = next(e for e in events if e.name == "content_block_start" and e.data["index"] == 1)
    assert tool_start.data["content_block"]["input"] == {}
    assert tool_start.data["content_block"]["id"].startswith("toolu_")
    pieces = [
        e.data["delta"]["partial_json"]
        for e in events
        if e.data.get("index") == 1 and e.name == "content_block_delta"
    ]
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == {"command": "x" * 100}

    delta = events[-2].data
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == reply.output_tokens >= 1


def test_sse_frame_format() -> None:
    assert sse_frame("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_estimate_tokens_is_deterministic_and_never_zero() -> None:
    assert estimate_tokens("") == 1
    assert estimate_tokens("x" * 400) == 100
    messages = [user("hello")]
    assert estimate_tokens(messages) == estimate_tokens(messages) > 1


# -- recording helpers ------------------------------------------------------------------------


def test_redact_headers_keeps_fingerprints_not_secrets() -> None:
    headers = [
        ("X-Api-Key", "sk-secret"),
        ("Authorization", "Bearer t"),
        ("Proxy-Authorization", "Basic p"),
        ("Cookie", "session=c"),
        ("Accept", "*/*"),
    ]
    redacted = redact_headers(headers)
    assert redacted == {
        "x-api-key": fingerprint("sk-secret"),
        "authorization": fingerprint("Bearer t"),  # the whole value, scheme included
        "proxy-authorization": fingerprint("Basic p"),
        "cookie": fingerprint("session=c"),
        "accept": "*/*",
    }
    assert "secret" not in json.dumps(redacted)


def test_describe_body_tells_main_calls_from_sub_agents() -> None:
    body = {
        "model": "claude-x",
        "messages": [user("a")],
        "tools": [{"name": "Bash"}],
        "stream": True,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_is_subagent=true;"}],
        "metadata": {"user_id": json.dumps({"session_id": "s-1"})},
    }
    info = describe_body(body)
    assert info == {
        "model": "claude-x",
        "n_messages": 1,
        "has_tools": True,
        "stream": True,
        "subagent": True,
        "session_id": "s-1",
    }
    assert not is_main_call({"path": "/v1/messages", **info})
    assert is_main_call({"path": "/v1/messages", **info, "subagent": False})
    assert not is_main_call({"path": "/v1/messages/count_tokens", **info, "subagent": False})
    assert describe_body(None)["n_messages"] == 0
    assert describe_body({}, {"x-claude-code-session-id": "s-2"})["session_id"] == "s-2"
