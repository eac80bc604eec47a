"""What PostgreSQL cannot store: found for the API to refuse, replaced in CLI output."""

from __future__ import annotations

import json
import math
import uuid
from typing import cast

import pytest
import redis
from flask import Flask

from api.errors import InvalidInput
from api.schemas import CreateSession
from api.validation import parse_body
from orchestrator.runtime.claude_cli import RunOutcome, apply_event, parse_line
from orchestrator.storable import (
    REPLACEMENT,
    printable_path,
    storable_json,
    storable_text,
    unstorable_paths,
    unstorable_reason,
)
from orchestrator.streams.events import RunEventSink, WireEvent
from tests.stream_fakes import StreamRecorder

# --- storable_text ------------------------------------------------------------------------


def test_nul_becomes_the_replacement_character() -> None:
    assert storable_text("a\x00b\x00") == f"a{REPLACEMENT}b{REPLACEMENT}"


@pytest.mark.parametrize("code_point", [0xD800, 0xDBFF, 0xDC00, 0xDFFF])
def test_each_lone_surrogate_becomes_one_replacement_character(code_point: int) -> None:
    assert storable_text(f"x{chr(code_point)}y") == f"x{REPLACEMENT}y"


def test_a_pair_parsed_from_json_is_one_character_and_stays() -> None:
    emoji = json.loads('"\\ud83d\\ude00"')
    assert emoji == "\U0001f600"
    assert storable_text(emoji) == emoji
    # Two surrogate code points a str was built from are not a character: both replaced.
    assert storable_text("\ud83d\ude00") == REPLACEMENT * 2


def test_what_postgresql_stores_is_kept_and_the_same_object_returned() -> None:
    text = "tab\t bell\x07 del\x7f nonchar\uffff\ufffe top\U0010ffff é 中"
    assert storable_text(text) is text


# --- storable_json ------------------------------------------------------------------------


def test_every_string_keys_included_is_replaced_at_any_depth() -> None:
    value = {
        "a\x00": ["x\ud800", {"deep": "n\x00l", "k\udfff": 1}],
        "ok": "fine",
        "n": 3,
        "f": 1.5,
        "t": True,
        "z": None,
    }
    assert storable_json(value) == {
        f"a{REPLACEMENT}": [f"x{REPLACEMENT}", {"deep": f"n{REPLACEMENT}l", f"k{REPLACEMENT}": 1}],
        "ok": "fine",
        "n": 3,
        "f": 1.5,
        "t": True,
        "z": None,
    }


def test_non_finite_numbers_become_null() -> None:
    assert storable_json([math.nan, math.inf, -math.inf, 0.0]) == [None, None, None, 0.0]


def test_the_result_is_valid_utf8_json_without_a_nul_escape() -> None:
    cleaned = storable_json({"\x00": "\ud800\x00", "x": [math.nan]})
    text = json.dumps(cleaned, allow_nan=False)
    text.encode("utf-8")  # no surrogate left
    assert "\\u0000" not in text
    assert "\\ud800" not in text


# --- finding (the API's side) -------------------------------------------------------------


def test_reasons_name_the_first_bad_character() -> None:
    assert unstorable_reason("fine") is None
    assert unstorable_reason("a\x00b") == "contains U+0000 (NUL), which cannot be stored"
    assert unstorable_reason("a\udc80") == (
        "contains U+DC80 (a lone surrogate), which cannot be stored"
    )


def test_paths_name_values_keys_items_and_numbers_in_document_order() -> None:
    body = {
        "prompt": "a\x00",
        "metadata": {"ok": "x", "k\x00": "the value is not looked into\x00", "v": ["", "\ud800"]},
        "n": math.nan,
    }
    nul = "contains U+0000 (NUL), which cannot be stored"
    found = [(printable_path(path), reason) for path, reason in unstorable_paths(body)]
    assert found == [
        ("prompt", nul),
        ("metadata.k\\u0000.[key]", nul),
        ("metadata.v.1", "contains U+D800 (a lone surrogate), which cannot be stored"),
        ("n", "is not a finite number (JSON has no NaN or Infinity)"),
    ]


def test_nothing_is_found_in_a_clean_body() -> None:
    assert list(unstorable_paths({"prompt": "hi", "metadata": {"a": [1, 2.5, None]}})) == []


def _parse(raw: bytes) -> CreateSession:
    app = Flask("t")
    with app.test_request_context(data=raw, content_type="application/json"):
        return parse_body(CreateSession)


@pytest.mark.parametrize(
    ("raw", "field", "character"),
    [
        (b'{"prompt": "a\\u0000b"}', "prompt", "U+0000"),
        (b'{"prompt": "a\\ud800b"}', "prompt", "U+D800"),
        # The UTF-8 form of a surrogate: json.loads decodes it with surrogatepass.
        (b'{"prompt": "a\xed\xa0\x80b"}', "prompt", "U+D800"),
        (b'{"metadata": {"k": {"deep": ["\\udfff"]}}}', "metadata.k.deep.0", "U+DFFF"),
        (b'{"metadata": {"a\\u0000": 1}}', "metadata.a\\u0000.[key]", "U+0000"),
    ],
)
def test_parse_body_refuses_naming_the_field(raw: bytes, field: str, character: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        _parse(raw)
    assert refused.value.status == 400
    assert refused.value.details[0]["field"] == field
    assert refused.value.message.startswith(f"{field}: contains {character} ")


def test_parse_body_refuses_nan_which_python_reads_but_json_has_not() -> None:
    with pytest.raises(InvalidInput) as refused:
        _parse(b'{"metadata": {"x": NaN}}')
    assert refused.value.details == [
        {"field": "metadata.x", "reason": "is not a finite number (JSON has no NaN or Infinity)"}
    ]


def test_parse_body_accepts_a_surrogate_pair_escape() -> None:
    assert _parse(b'{"prompt": "\\ud83d\\ude00"}').prompt == "\U0001f600"


# --- CLI output (the worker's side) -------------------------------------------------------


def test_an_event_s_stream_copy_and_its_stored_copy_are_both_replaced() -> None:
    client = StreamRecorder()
    persisted: list[WireEvent] = []
    sink = RunEventSink(
        cast(redis.Redis, client), persisted.extend, uuid.uuid4(), uuid.uuid4(), stream_ttl=60
    )
    event = sink.emit("ccq.stderr", {"line": "a\x00b", "k\ud800": ["\x00"]})
    sink.flush()
    expected = {"line": f"a{REPLACEMENT}b", f"k{REPLACEMENT}": [REPLACEMENT]}
    assert event.data == expected
    assert client.entries[0]["data"] == expected
    assert [e.data for e in persisted] == [expected]


def test_the_outcome_s_strings_are_replaced_before_they_reach_the_run_s_row() -> None:
    line = json.dumps(
        {
            "type": "result",
            "subtype": "success\u0000",
            "result": "tool result: a\u0000b \ud800",
            "usage": {"service_tier\u0000": "x\u0000"},
            "total_cost_usd": 0.01,
        }
    )
    event = parse_line(line)
    assert event is not None
    outcome = RunOutcome()
    apply_event(outcome, event)
    assert outcome.result_text == f"tool result: a{REPLACEMENT}b {REPLACEMENT}"
    assert outcome.subtype == f"success{REPLACEMENT}"
    assert outcome.usage == {f"service_tier{REPLACEMENT}": f"x{REPLACEMENT}"}


def test_none_stays_none() -> None:
    assert storable_text(None) is None
