"""Redaction of secret values and the session token from a run's text and events."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import pytest

from orchestrator.redaction import RedactingSink, Redactor, StreamRedactor
from tests.stream_fakes import StreamRecorder

GITHUB = "ghp_Abc123SECRETvalue456"
TOKEN = "ccqs_Qw3rtyUiop-Asdf_ghjkl0123456789"


@pytest.fixture
def redactor() -> Redactor:
    return Redactor.for_run({"GITHUB_TOKEN": GITHUB}, TOKEN)


# --- whole strings --------------------------------------------------------------------


def test_every_occurrence_of_every_value_is_replaced(redactor: Redactor) -> None:
    text = f"token={GITHUB}; again {GITHUB}{GITHUB} and the run's {TOKEN}."
    assert redactor.text(text) == (
        "token=[REDACTED:GITHUB_TOKEN]; again [REDACTED:GITHUB_TOKEN][REDACTED:GITHUB_TOKEN]"
        " and the run's [REDACTED:CCQ_SESSION_TOKEN]."
    )
    assert redactor.text("nothing here") == "nothing here"
    assert redactor.optional(None) is None


def test_nested_json_is_walked_keys_included(redactor: Redactor) -> None:
    event: dict[str, Any] = {
        "type": "user",
        "message": {
            "content": [
                {"type": "tool_result", "content": f"{GITHUB}\n", "is_error": False},
                {"type": "text", "text": ["deep", {GITHUB: TOKEN}]},
            ]
        },
        "n": 3,
        "none": None,
    }
    redacted = redactor.walk(event)
    dumped = json.dumps(redacted)
    assert GITHUB not in dumped
    assert TOKEN not in dumped
    assert redacted["message"]["content"][0]["content"] == "[REDACTED:GITHUB_TOKEN]\n"
    assert redacted["message"]["content"][1]["text"][1] == {
        "[REDACTED:GITHUB_TOKEN]": "[REDACTED:CCQ_SESSION_TOKEN]"
    }
    assert redacted["n"] == 3
    assert redacted["none"] is None
    assert event["message"]["content"][0]["content"] == f"{GITHUB}\n"  # a copy


def test_values_are_found_as_json_escaped_and_url_encoded_text() -> None:
    value = 'pa"ss\\wörd/1+2 é'
    redactor = Redactor({"PASSWORD": value})
    as_json_text = json.dumps({"command": f"echo '{value}'"})  # e.g. an input_json_delta
    assert value not in as_json_text
    assert redactor.text(as_json_text) == json.dumps({"command": "echo '[REDACTED:PASSWORD]'"})
    ascii_json = json.dumps(value, ensure_ascii=True)
    assert redactor.text(ascii_json) == '"[REDACTED:PASSWORD]"'
    assert redactor.text(f"GET /?p={quote(value, safe='')} HTTP/1.1") == (
        "GET /?p=[REDACTED:PASSWORD] HTTP/1.1"
    )


def test_lines_of_a_multi_line_value_are_redacted_one_by_one() -> None:
    key = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQABAAABAQ\n-----END KEY-----"
    redactor = Redactor({"DEPLOY_KEY": key})
    assert redactor.text(key) == "[REDACTED:DEPLOY_KEY]"
    # stderr comes a line at a time
    assert redactor.text("AAAAB3NzaC1yc2EAAAADAQABAAABAQ") == "[REDACTED:DEPLOY_KEY]"


def test_overlapping_and_nested_values_leave_no_fragment() -> None:
    redactor = Redactor({"A": "abcdefgh", "B": "efghijkl", "C": "cdef12", "INNER": "bcdefg"})
    # A and B overlap: the whole stretch goes, named by both.
    assert redactor.text("xx abcdefghijkl yy") == "xx [REDACTED:A][REDACTED:B] yy"
    # INNER lies inside A's occurrence: it is A's.
    assert redactor.text("abcdefgh") == "[REDACTED:A]"
    # ... and alone it is its own.
    assert redactor.text("-bcdefg-") == "-[REDACTED:INNER]-"


def test_the_longest_value_wins_where_one_is_a_prefix_of_another() -> None:
    redactor = Redactor({"SHORT": "prefix-1234", "LONG": "prefix-1234-and-more"})
    assert redactor.text("prefix-1234-and-more!") == "[REDACTED:LONG]!"
    assert redactor.text("prefix-1234!") == "[REDACTED:SHORT]!"


def test_short_values_are_not_redacted() -> None:
    redactor = Redactor({"PIN": "1234"})
    assert not redactor
    assert redactor.text("1234 and 12345") == "1234 and 12345"


def test_repr_names_the_secrets_without_their_values(redactor: Redactor) -> None:
    for text in (repr(redactor), str(redactor)):
        assert GITHUB not in text
        assert TOKEN not in text
        assert "GITHUB_TOKEN" in text


# --- streamed deltas ------------------------------------------------------------------


def _delta(
    text: str, index: int = 0, kind: str = "text_delta", parent: Any = None
) -> dict[str, Any]:
    field = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}
    delta = {"type": kind, field[kind]: text}
    return {
        "type": "stream_event",
        "event": {"type": "content_block_delta", "index": index, "delta": delta},
        "session_id": "s",
        "parent_tool_use_id": parent,
        "uuid": "u",
    }


def _stop(index: int = 0) -> dict[str, Any]:
    return {
        "type": "stream_event",
        "event": {"type": "content_block_stop", "index": index},
        "session_id": "s",
        "parent_tool_use_id": None,
    }


def _feed(stream: StreamRedactor, events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for event in events:
        out += stream.process(event["type"], event)
    out += stream.release_all()
    return out


def _text(out: list[tuple[str, dict[str, Any]]], index: int = 0) -> str:
    pieces = []
    for _, data in out:
        event = data.get("event", {})
        if event.get("type") == "content_block_delta" and event.get("index") == index:
            delta = event["delta"]
            field = next(k for k in ("text", "partial_json", "thinking") if k in delta)
            pieces.append(delta[field])
    return "".join(pieces)


def _wire(out: list[tuple[str, dict[str, Any]]]) -> str:
    return json.dumps([data for _, data in out])


@pytest.mark.parametrize("cut", [1, 5, 11, len(GITHUB) - 1])
def test_a_value_split_over_two_deltas_never_shows(redactor: Redactor, cut: int) -> None:
    out = _feed(
        StreamRedactor(redactor),
        [_delta("the key is " + GITHUB[:cut]), _delta(GITHUB[cut:] + " ok"), _stop()],
    )
    assert _text(out) == "the key is [REDACTED:GITHUB_TOKEN] ok"
    assert GITHUB not in _text(out)
    assert GITHUB[:cut] not in _wire(out) or cut < 2  # no fragment of the value leaks
    assert [t for t, _ in out] == ["stream_event"] * 3  # no event lost or added


def test_a_value_split_over_three_deltas_never_shows(redactor: Redactor) -> None:
    pieces = [TOKEN[:4], TOKEN[4:20], TOKEN[20:]]
    out = _feed(
        StreamRedactor(redactor),
        [_delta("a " + pieces[0]), _delta(pieces[1]), _delta(pieces[2] + " b"), _stop()],
    )
    assert _text(out) == "a [REDACTED:CCQ_SESSION_TOKEN] b"
    assert TOKEN[:10] not in _wire(out)


def test_a_prefix_that_turns_out_not_to_be_a_value_is_released_intact(
    redactor: Redactor,
) -> None:
    stream = StreamRedactor(redactor)
    first = stream.process("stream_event", _delta("wait: ghp_Abc"))
    assert _text(first) == "wait: "  # the tail is held
    second = stream.process("stream_event", _delta("12 is not it"))
    assert _text(second) == "ghp_Abc12 is not it"
    # A tail still held when the block stops goes out just before the stop.
    third = stream.process("stream_event", _delta(" then ccqs_Qw"))
    stop = stream.process("stream_event", _stop())
    assert _text(third) == " then "
    assert [d["event"]["type"] for _, d in stop] == ["content_block_delta", "content_block_stop"]
    assert _text(stop) == "ccqs_Qw"
    assert stop[0][1]["uuid"] != "u"


def test_held_text_is_released_by_the_message_the_result_or_the_end(redactor: Redactor) -> None:
    stream = StreamRedactor(redactor)
    stream.process("stream_event", _delta("x ghp_", index=1))
    released = stream.process("assistant", {"type": "assistant", "parent_tool_use_id": None})
    assert _text(released, index=1) == "ghp_"
    assert released[-1][0] == "assistant"
    stream.process("stream_event", _delta("y ghp_A", index=2))
    assert _text(stream.process("result", {"type": "result"}), index=2) == "ghp_A"
    stream.process("stream_event", _delta("z ccq", index=3))
    assert _text(stream.release_all(), index=3) == "ccq"
    assert stream.release_all() == []


def test_blocks_are_held_apart(redactor: Redactor) -> None:
    out = _feed(
        StreamRedactor(redactor),
        [
            _delta("one " + GITHUB[:8], index=0),
            _delta("two " + GITHUB[:3], index=1),
            _delta(GITHUB[8:], index=0),
            _delta("x", index=1),
        ],
    )
    assert _text(out, 0) == "one [REDACTED:GITHUB_TOKEN]"
    assert _text(out, 1) == "two " + GITHUB[:3] + "x"


@pytest.mark.parametrize("kind", ["input_json_delta", "thinking_delta"])
def test_tool_input_and_thinking_deltas_are_held_too(redactor: Redactor, kind: str) -> None:
    whole = json.dumps({"command": f"echo {GITHUB}"})
    middle = whole.index(GITHUB) + 6
    deltas = [_delta(whole[:middle], kind=kind), _delta(whole[middle:], kind=kind)]
    out = _feed(StreamRedactor(redactor), deltas)
    assert _text(out) == json.dumps({"command": "echo [REDACTED:GITHUB_TOKEN]"})


def test_a_complete_value_overlapping_a_held_tail_is_held_whole() -> None:
    # "abcdefgh" is complete, but its tail "efgh" may begin "efghijkl": nothing of
    # either may go out until the next delta decides.
    stream = StreamRedactor(Redactor({"A": "abcdefgh", "B": "efghijkl"}))
    first = stream.process("stream_event", _delta("1 abcdefgh"))
    assert _text(first) == "1 "
    second = stream.process("stream_event", _delta("ij"))
    assert _text(second) == ""
    rest = stream.process("stream_event", _delta("kl 2"))
    assert _text(first + second + rest) == "1 [REDACTED:A][REDACTED:B] 2"


def test_other_events_are_walked_whole(redactor: Redactor) -> None:
    stream = StreamRedactor(redactor)
    out = stream.process("ccq.stderr", {"line": f"curl: token {TOKEN} refused"})
    assert out == [("ccq.stderr", {"line": "curl: token [REDACTED:CCQ_SESSION_TOKEN] refused"})]
    result = {"type": "result", "result": f"it is {GITHUB}", "usage": {"input_tokens": 3}}
    assert stream.process("result", result) == [
        ("result", {**result, "result": "it is [REDACTED:GITHUB_TOKEN]"})
    ]


# --- the run's sink -------------------------------------------------------------------


class _Db:
    def __init__(self) -> None:
        self.added: list[Any] = []

    def add_all(self, rows: Any) -> None:
        self.added.extend(rows)


def _sink(client: StreamRecorder, flushed: list[list[Any]]) -> RedactingSink:
    return RedactingSink(
        client,
        flushed.append,
        uuid.uuid4(),
        uuid.uuid4(),
        redactor=Redactor.for_run({"GITHUB_TOKEN": GITHUB}, TOKEN),
    )


def test_the_sink_publishes_only_redacted_events_and_releases_at_the_end() -> None:
    client, flushed = StreamRecorder(), list[list[Any]]()
    sink = _sink(client, flushed)
    sink.emit("ccq.stderr", {"line": f"oops {TOKEN}"})
    sink.emit("stream_event", _delta("key: " + GITHUB[:6]))
    sink.emit("stream_event", _delta(GITHUB[6:] + " and ccq"))
    sink.release()
    sink.finish("ccq.run.finished", {"result": f"it was {GITHUB}"})

    published = json.dumps(client.entries)
    assert GITHUB not in published
    assert TOKEN not in published
    assert [e["seq"] for e in client.entries] == list(range(5))
    texts = [e["data"]["event"]["delta"]["text"] for e in client.entries[1:4]]
    assert "".join(texts) == "key: [REDACTED:GITHUB_TOKEN] and ccq"
    assert client.entries[-1]["data"] == {"result": "it was [REDACTED:GITHUB_TOKEN]"}


def test_what_is_left_at_the_last_persist_joins_it_without_a_flush() -> None:
    client, flushed = StreamRecorder(), list[list[Any]]()
    sink = _sink(client, flushed)
    sink.emit("stream_event", _delta("tail ccqs_"))
    sink._last_flush = 0.0  # a flush is due: a flush would commit the caller's transaction
    db = _Db()
    sink.persist_pending(db)  # type: ignore[arg-type]
    assert flushed == []
    assert [row.data["event"]["delta"]["text"] for row in db.added] == ["tail ", "ccqs_"]
