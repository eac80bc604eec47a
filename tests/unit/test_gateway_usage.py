"""UsageMeter: a call's model and usage, read from the response bytes as they are relayed."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

import gateway.usage
from gateway.usage import MAX_EVENT_BYTES, MAX_JSON_BYTES, UsageMeter
from orchestrator.domain.pricing import DEFAULT_PRICES, PriceTable, Usage

SSE = "text/event-stream; charset=utf-8"
MODEL = "claude-sonnet-4-5-20250929"


def event(name: str, payload: object) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


MESSAGE_START = event(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 2000,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 100,
                    "ephemeral_1h_input_tokens": 0,
                },
                "output_tokens": 1,
                "service_tier": "standard",
            },
        },
    },
)


def text_delta(text: str) -> bytes:
    return event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


MESSAGE_DELTA = event(
    "message_delta",
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
)
MESSAGE_STOP = event("message_stop", {"type": "message_stop"})

BODY = (
    MESSAGE_START
    + event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    + event("ping", {"type": "ping"})
    + text_delta("Hello")
    # Text that looks like what the meter reads must stay text.
    + text_delta('event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":9}}')
    + text_delta("!" * 5000)
    + event("content_block_stop", {"type": "content_block_stop", "index": 0})
    + MESSAGE_DELTA
    + MESSAGE_STOP
)
WHOLE = Usage(
    input_tokens=25,
    output_tokens=15,
    cache_creation_input_tokens=100,
    cache_read_input_tokens=2000,
)


def metered(chunks: list[bytes], content_type: str | None = SSE) -> UsageMeter:
    meter = UsageMeter(content_type)
    for chunk in chunks:
        meter.feed(chunk)
    meter.finish()
    return meter


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 (reproducible splits, not secrets)


def split_randomly(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 200)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def assert_whole(meter: UsageMeter) -> None:
    assert meter.model == MODEL
    assert meter.usage == WHOLE
    assert meter.complete
    assert meter.error_type is None
    assert meter.buffered_bytes == 0


def test_a_stream_fed_whole() -> None:
    assert_whole(metered([BODY]))


def test_a_stream_fed_byte_by_byte() -> None:
    assert_whole(metered([BODY[i : i + 1] for i in range(len(BODY))]))


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_split_anywhere(seed: int) -> None:
    assert_whole(metered(split_randomly(BODY, seeded(seed))))


@pytest.mark.parametrize("seed", range(5))
def test_crlf_line_endings(seed: int) -> None:
    crlf = BODY.replace(b"\n", b"\r\n")
    assert_whole(metered([crlf]))
    assert_whole(metered(split_randomly(crlf, seeded(seed))))


def test_the_usage_before_the_stream_ends() -> None:
    meter = UsageMeter(SSE)
    meter.feed(MESSAGE_START)
    assert (meter.model, meter.usage.input_tokens, meter.usage.output_tokens) == (MODEL, 25, 1)
    meter.feed(MESSAGE_DELTA)
    assert meter.usage == WHOLE
    assert not meter.complete
    meter.feed(MESSAGE_STOP)
    assert meter.complete


def test_only_the_events_read_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    parse = gateway.usage._parse_json

    def spy(data: bytes | bytearray) -> object:
        parsed.append(bytes(data))
        return parse(data)

    monkeypatch.setattr(gateway.usage, "_parse_json", spy)
    assert_whole(metered([BODY]))
    assert [json.loads(data)["type"] for data in parsed] == [
        "message_start",
        "message_delta",
        "message_stop",
    ]


def test_multi_line_data_comments_and_unspaced_fields() -> None:
    stream = (
        b": a comment\n"
        + MESSAGE_START
        + b":keep-alive\n\n"
        + b"event:message_delta\n"
        + b'data:{"type":"message_delta",\n'
        + b": a comment within the event\n"
        + b'data:  "usage": {"output_tokens": 15}}\n'
        + b"id: 7\n"
        + b"\n"
        + MESSAGE_STOP
    )
    assert_whole(metered([stream]))


def test_data_lines_are_joined_with_a_newline() -> None:
    # Glued, the two lines would read 15; joined as the spec says, "1\n5" is not JSON.
    split = b'event: message_delta\ndata: {"usage": {"output_tokens": 1\ndata: 5}}\n\n'
    meter = metered([MESSAGE_START, split])
    assert meter.usage.output_tokens == 1


def test_events_without_an_event_line_are_read_by_type() -> None:
    stream = b"".join(
        b"data: " + line.split(b"data: ", 1)[1] for line in (MESSAGE_START, MESSAGE_DELTA)
    )
    meter = metered([stream, b"event: message\n", MESSAGE_STOP.split(b"\n", 1)[1]])
    assert meter.model == MODEL
    assert meter.usage == WHOLE
    assert meter.complete


def test_message_delta_counts_replace_earlier_ones() -> None:
    later = event(
        "message_delta",
        {
            "type": "message_delta",
            "usage": {
                "input_tokens": 30,
                "cache_read_input_tokens": 2100,
                "output_tokens": 40,
                "server_tool_use": {"web_search_requests": 1},
            },
        },
    )
    meter = metered([MESSAGE_START, MESSAGE_DELTA, later])
    assert meter.usage == Usage(
        input_tokens=30,
        output_tokens=40,
        cache_creation_input_tokens=100,
        cache_read_input_tokens=2100,
    )


def test_a_truncated_stream_keeps_the_usage_so_far() -> None:
    cut = BODY.index(MESSAGE_DELTA) + len(MESSAGE_DELTA) // 2
    meter = metered([BODY[:cut]])
    assert meter.model == MODEL
    assert meter.usage == Usage(25, 1, 100, 2000)
    assert not meter.complete
    assert meter.buffered_bytes == 0  # finish() let go of the half event


def test_counts_of_the_wrong_kind_are_ignored() -> None:
    bad: list[object] = [True, False, -5, "15", 1.5, None, [3], {"n": 3}, 2**60, 10**400]
    chunks = [MESSAGE_START]
    for value in bad:
        usage = dict.fromkeys(("input_tokens", "output_tokens", "cache_read_input_tokens"), value)
        chunks.append(event("message_delta", {"type": "message_delta", "usage": usage}))
    chunks.append(b'event: message_delta\ndata: {"usage": {"output_tokens": 1e400}}\n\n')
    meter = metered(chunks)
    assert meter.usage == Usage(25, 1, 100, 2000)
    assert meter.model == MODEL


@pytest.mark.parametrize(
    "data",
    [
        b"[1, 2]",
        b'"message_start"',
        b"null",
        b'{"type": "message_start", "message": [1]}',
        b'{"type": "message_start", "message": {"model": 7, "usage": "lots"}}',
        b'{"type": "message_start", "message": {"model": "", "usage": [25]}}',
        b'{"type": "message_start", "message": {"model": "a\\u0000b"}}',
        b'{"type": "message_start", "message": {"model": "\\ud800"}}',
        b'{"type": "message_start", "message": {"model": "' + b"m" * 201 + b'"}}',
        b'{"type": "message_start", "message": {"model": "claude-\xff\xfe"}}',
        b'{"type": "message_start", "message": {"model": "claude", "usage": {"input_tokens": 2',
        b"[" * 100_000,
        b'{"type": "message_start", "message": {"model": "x", "usage": {"input_tokens": '
        + b"9" * 5000
        + b"}}}",
    ],
)
def test_malformed_payloads_are_ignored(data: bytes) -> None:
    meter = metered([b"event: message_start\ndata: " + data + b"\n\n", MESSAGE_STOP])
    assert meter.model is None
    assert meter.usage == Usage()
    assert meter.complete  # the stream went on being read


@pytest.mark.parametrize("seed", range(5))
def test_garbage_never_raises(seed: int) -> None:
    rng = seeded(seed)
    garbage = rng.randbytes(50_000) + b"\n\n".join(rng.randbytes(100) for _ in range(100))
    for content_type in (SSE, "application/json", None):
        meter = metered(split_randomly(garbage, rng), content_type)
        assert meter.usage == Usage()
        assert meter.model is None
        assert not meter.complete
        assert meter.buffered_bytes == 0


def test_an_oversized_event_is_dropped_without_growing() -> None:
    huge = event(
        "message_delta",
        {"type": "message_delta", "usage": {"output_tokens": 999}, "pad": "x" * (3 << 20)},
    )
    meter = UsageMeter(SSE)
    meter.feed(MESSAGE_START)
    for start in range(0, len(huge), 64 << 10):
        meter.feed(huge[start : start + (64 << 10)])
        assert meter.buffered_bytes <= MAX_EVENT_BYTES
    meter.feed(MESSAGE_DELTA + MESSAGE_STOP)
    meter.finish()
    assert meter.usage == WHOLE
    assert meter.complete


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_dropped_event_still_ends_at_a_blank_line(newline: bytes) -> None:
    huge = b"event: message_delta" + newline + b"data: " + b"q" * (2 * MAX_EVENT_BYTES)
    stream = huge + newline + newline + MESSAGE_START.replace(b"\n", newline)
    meter = UsageMeter(SSE)
    for start in range(0, len(huge), 1000):
        meter.feed(huge[start : start + 1000])
    for start in range(len(huge), len(stream)):  # every line ending split too
        meter.feed(stream[start : start + 1])
    assert meter.model == MODEL
    assert meter.usage == Usage(25, 1, 100, 2000)


def test_an_event_of_many_small_data_lines_is_capped() -> None:
    meter = UsageMeter(SSE)
    meter.feed(b"event: message_delta\n")
    line = b"data: " + b"y" * 1000 + b"\n"
    for _ in range(3 * MAX_EVENT_BYTES // len(line)):
        meter.feed(line)
        assert meter.buffered_bytes <= MAX_EVENT_BYTES
    meter.feed(b'data: {"usage": {"output_tokens": 999}}\n\n' + MESSAGE_START + MESSAGE_DELTA)
    assert meter.usage == WHOLE


def test_an_endless_line_is_capped() -> None:
    meter = UsageMeter(SSE)
    for _ in range(40):
        meter.feed(b"z" * (128 << 10))
        assert meter.buffered_bytes <= MAX_EVENT_BYTES
    meter.feed(b"\n\n" + MESSAGE_START + MESSAGE_DELTA + MESSAGE_STOP)
    meter.finish()
    assert_whole(meter)


def test_big_events_not_read_are_not_kept() -> None:
    meter = UsageMeter(SSE)
    meter.feed(MESSAGE_START)
    big = text_delta("w" * (4 << 20))
    for start in range(0, len(big), 4096):
        meter.feed(big[start : start + 4096])
        assert meter.buffered_bytes <= 4096
    meter.feed(MESSAGE_DELTA + MESSAGE_STOP)
    meter.finish()
    assert_whole(meter)


def test_an_error_event() -> None:
    error = event(
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    meter = metered([MESSAGE_START, text_delta("Hi"), error])
    assert meter.error_type == "overloaded_error"
    assert not meter.complete
    assert meter.usage == Usage(25, 1, 100, 2000)


JSON_BODY = json.dumps(
    {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hello! " * 100}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2000,
            "output_tokens": 15,
        },
    }
).encode()


def test_a_json_body() -> None:
    meter = UsageMeter("application/json; charset=utf-8")
    for chunk in split_randomly(JSON_BODY, seeded(1)):
        meter.feed(chunk)
    assert not meter.complete  # read at finish()
    meter.finish()
    assert_whole(meter)
    meter.feed(b"more")  # after finish(): ignored
    assert meter.buffered_bytes == 0


def test_a_json_error_body() -> None:
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    meter = metered([body], "application/json")
    assert meter.error_type == "rate_limit_error"
    assert meter.complete
    assert meter.model is None
    assert meter.usage == Usage()


@pytest.mark.parametrize("body", [b"", b"[1]", b'{"model": "claude-x"', b"\xff\xfe\x00"])
def test_a_json_body_not_an_object(body: bytes) -> None:
    meter = metered([body], "application/json")
    assert not meter.complete
    assert meter.model is None


def test_an_oversized_json_body_is_given_up() -> None:
    meter = UsageMeter("application/json")
    meter.feed(JSON_BODY[:-1])
    filler = b" " * (1 << 20)
    for _ in range(MAX_JSON_BYTES // len(filler) + 1):
        meter.feed(filler)
        assert meter.buffered_bytes <= MAX_JSON_BYTES
    meter.feed(JSON_BODY[-1:])
    meter.finish()
    assert not meter.complete
    assert meter.model is None
    assert meter.usage == Usage()


@pytest.mark.parametrize("content_type", [None, "", "text/html", "application/octet-stream"])
def test_other_content_is_not_read(content_type: str | None) -> None:
    meter = metered([JSON_BODY, BODY], content_type)
    assert meter.model is None
    assert meter.usage == Usage()
    assert not meter.complete
    assert meter.buffered_bytes == 0


def test_the_charge_of_a_metered_stream() -> None:
    meter = metered(split_randomly(BODY, seeded(7)))
    charge = PriceTable(DEFAULT_PRICES).charge(meter.model, meter.usage)
    # Sonnet: 3 USD/MTok input, 15 output, cache writes 1.25x input, cache reads 0.1x.
    expected = (25 * 3 + 15 * 15 + 100 * Decimal("3.75") + 2000 * Decimal("0.3")) / 1_000_000
    assert charge.cost_usd == expected == Decimal("0.001275")
    assert charge.priced
