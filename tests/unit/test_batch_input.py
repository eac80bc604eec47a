"""The incremental batch reader agrees with json.loads on whole bodies, however it is cut."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from api import batch_input
from api.batch_input import BadLine, Limits, RawBatch, read_json, read_ndjson
from api.errors import ApiError
from api.schemas import CreateBatch

LIMITS = Limits(max_bytes=1 << 20, max_items=10, max_item_bytes=1000)
DOC = json.dumps(
    {
        "metadata": {"k": [1.5, -2e10, True, None, 'x\\"y\u00e9\U0001f600']},
        "items": [{"prompt": "p\u00e9 \\n", "n": 12345.678e-3}, 123456789, "s\\u1234", [[]], False],
    },
    ensure_ascii=False,
).encode()


def _read(body: bytes, ndjson: bool = False, limits: Limits = LIMITS) -> RawBatch | ApiError:
    app = Flask("test")
    mimetype = "application/x-ndjson" if ndjson else "application/json"
    with app.test_request_context("/", method="POST", data=body, content_type=mimetype):
        try:
            if ndjson:
                return read_ndjson(limits)
            return read_json(limits, CreateBatch.model_fields)
        except ApiError as exc:
            return exc


@pytest.mark.parametrize("read_size", [1, 2, 3, 5, 7, 64 * 1024])
def test_any_read_size_gives_what_json_loads_gives(
    read_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_input, "READ_SIZE", read_size)
    whole: dict[str, Any] = json.loads(DOC)

    batch = _read(DOC)

    assert isinstance(batch, RawBatch)
    assert batch.fields == {"metadata": whole["metadata"]}
    assert [json.loads(item) for item in batch.items] == whole["items"]  # type: ignore[arg-type]


def test_every_cut_short_body_is_a_400() -> None:
    for cut in range(len(DOC)):
        refused = _read(DOC[:cut])
        assert isinstance(refused, ApiError), cut
        assert refused.status == 400, (cut, refused.message)


def test_what_json_loads_accepts_at_the_edges() -> None:
    bom = _read(b'\xef\xbb\xbf{"items": [1]}')
    surrogate = _read(b'{"items": [{"prompt": "a\xed\xb3\xbfb"}]}')  # kept for the 400
    later = _read(b'{"items": [1], "items": [2, 3]}')  # the last one counts

    assert isinstance(bom, RawBatch)
    assert bom.items == ["1"]
    assert isinstance(surrogate, RawBatch)
    assert json.loads(surrogate.items[0])["prompt"] == "a\udcffb"  # type: ignore[arg-type]
    assert isinstance(later, RawBatch)
    assert later.items == ["2", "3"]


def test_ndjson_lines_blank_lines_and_bad_lines_keep_their_numbers() -> None:
    batch = _read(b'{"prompt": "a"}\r\n\n{bad\n{"prompt": "c"}', ndjson=True)

    assert isinstance(batch, RawBatch)
    assert batch.items == [b'{"prompt": "a"}', BadLine(3), b'{"prompt": "c"}']


def test_reading_stops_at_the_first_item_past_the_limit() -> None:
    endless = b'{"items": [' + b"{}," * 100_000
    refused = _read(endless)

    assert isinstance(refused, ApiError)
    assert refused.status == 413
    assert refused.details[0]["setting"] == "CCQ_BATCH_MAX_ITEMS"
