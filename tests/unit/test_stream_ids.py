"""Stream IDs as cursors, and the wire form of an event built without decoding it."""

from __future__ import annotations

import json

import pytest

from orchestrator.streams.events import WireEvent
from orchestrator.streams.stream_ids import InvalidCursor, format_stream_id, parse_stream_id
from orchestrator.streams.tail import TailEvent, position_before

SESSION = "3a4e0109-5de1-4ad0-9286-57bf952c75c1"
RUN = "6f00a5d8-e9a9-42a7-9eee-86853fdc2374"


@pytest.mark.parametrize(
    ("text", "position"),
    [("0-0", (0, 0)), ("1700000000000-12", (1_700_000_000_000, 12)), ("9-10", (9, 10))],
)
def test_stream_ids_parse_to_numbers_that_sort_as_redis_sorts_them(
    text: str, position: tuple[int, int]
) -> None:
    assert parse_stream_id(text) == position
    assert format_stream_id(position) == text


def test_ten_sorts_after_nine_unlike_the_strings() -> None:
    assert parse_stream_id("5-10") > parse_stream_id("5-9")
    assert "5-10" < "5-9"  # why PostgreSQL keeps the numbers, not only the string


@pytest.mark.parametrize(
    "text", ["", "5", "5-", "-5", "a-1", "1-2-3", " 1-2", "1-2\n", "99999999999999999999-0"]
)
def test_anything_else_is_an_invalid_cursor(text: str) -> None:
    with pytest.raises(InvalidCursor, match="must be an event id"):
        parse_stream_id(text)


def test_the_position_before_an_id_is_the_greatest_one_smaller() -> None:
    assert position_before((10, 3)) == (10, 2)
    before = position_before((10, 0))
    assert before < (10, 0)
    assert before > (9, 1_000_000)


def test_an_entry_becomes_the_same_wire_object_as_the_stored_event() -> None:
    data = {"type": "assistant", "message": {"content": [{"type": "text", "text": 'a "q" é'}]}}
    wire = WireEvent("1700000000000-3", SESSION, RUN, 7, "assistant", data)
    payload = json.dumps(
        {"run_id": RUN, "seq": 7, "type": "assistant", "data": data}, separators=(",", ":")
    )
    fields = {b"r": RUN.encode(), b"t": b"assistant", b"e": payload.encode()}

    from_redis = TailEvent.from_entry(SESSION, "1700000000000-3", fields)
    from_history = TailEvent.from_wire(wire)

    assert json.loads(from_redis.json) == wire.to_json() == json.loads(from_history.json)
    assert list(json.loads(from_redis.json)) == [
        "id",
        "session_id",
        "run_id",
        "seq",
        "type",
        "data",
    ]
    assert (from_redis.run_id, from_redis.type, from_redis.position) == (
        RUN,
        "assistant",
        (1_700_000_000_000, 3),
    )


def test_a_session_event_has_no_run() -> None:
    payload = '{"run_id":null,"seq":0,"type":"ccq.session.deleted","data":{}}'
    fields = {b"r": b"", b"t": b"ccq.session.deleted", b"e": payload.encode()}
    event = TailEvent.from_entry(SESSION, "5-0", fields)
    assert event.run_id is None
    assert json.loads(event.json)["run_id"] is None
