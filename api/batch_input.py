"""A batch upload read incrementally, in bounded pieces, never whole.

A body of ``{"items": [{}, {}, ...]}`` or of empty NDJSON lines would otherwise become
millions of Python objects before anyone counts them. Here the request stream is read
64 KiB at a time and each item is kept as its JSON text until every limit has held:
parsing stops at the first item past ``CCQ_BATCH_MAX_ITEMS``, the first byte past
``CCQ_BATCH_MAX_BYTES`` (chunked bodies included) and at an item, NDJSON line or other
value past ``CCQ_BATCH_MAX_ITEM_BYTES``, each a 413 naming its setting. Items are parsed
again one at a time when they are checked (``api.batches``), so at most one item's
objects exist at once.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import IO, Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from api.errors import InvalidInput, TooLarge, too_large

READ_SIZE = 64 * 1024
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# A decode error this close to the buffer's end may just be a value cut by the read.
_CUT_MARGIN = 16


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_items: int
    max_item_bytes: int


@dataclass
class BadLine:
    """An NDJSON line that is not JSON (reported by index, with its line number)."""

    line: int


@dataclass
class RawBatch:
    """A batch body's fields but ``items``, and each item's JSON (text, or a bad line)."""

    fields: dict[str, Any] = field(default_factory=dict)
    items: list[str | bytes | BadLine] = field(default_factory=list)
    has_items: bool = False


def read_ndjson(limits: Limits) -> RawBatch:
    """One item per non-blank line.

    Raises:
        TooLarge: past a limit (the details name the setting).
    """
    batch = RawBatch(has_items=True)
    pending = b""
    number = 0
    for chunk in _chunks(limits):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            number = _add_lines(batch, line, number, limits)
        if len(pending) > limits.max_item_bytes:
            raise _item_too_large(len(batch.items), limits)
    _add_lines(batch, pending, number, limits)
    return batch


def _add_lines(batch: RawBatch, raw: bytes, number: int, limits: Limits) -> int:
    # splitlines: a lone CR ends a line too, as it did when bodies were read whole.
    for line in raw.splitlines() or [b""]:
        number += 1
        if not line.strip():
            continue
        if len(line) > limits.max_item_bytes:
            raise _item_too_large(len(batch.items), limits)
        _count(batch, limits)
        try:
            json.loads(line)  # only to tell a bad line now, while its number is known
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            batch.items.append(BadLine(number))
        else:
            batch.items.append(line)
    return number


def read_json(limits: Limits, known_fields: Collection[str]) -> RawBatch:
    """A JSON object whose ``items`` array is read element by element.

    Raises:
        InvalidInput: not a JSON object (as a body parsed whole would be refused).
        TooLarge: past a limit (the details name the setting).
    """
    reader = _JsonBatchReader(_TextReader(limits), limits, known_fields)
    try:
        return reader.read()
    except _StopReading:
        return reader.batch


def malformed() -> InvalidInput:
    return InvalidInput(
        "the body must be a JSON object",
        [{"field": "(body)", "reason": "malformed JSON or not an object"}],
    )


def _count(batch: RawBatch, limits: Limits) -> None:
    if len(batch.items) >= limits.max_items:
        reason = f"at most {limits.max_items} items per batch"
        raise too_large("items", reason, "CCQ_BATCH_MAX_ITEMS", limits.max_items)


def _item_too_large(index: int, limits: Limits) -> TooLarge:
    reason = f"one item is at most {limits.max_item_bytes} bytes"
    return too_large(f"items.{index}", reason, "CCQ_BATCH_MAX_ITEM_BYTES", limits.max_item_bytes)


def _chunks(limits: Limits) -> Any:
    """The body in reads of at most READ_SIZE bytes, refused once past max_bytes."""
    request.max_content_length = limits.max_bytes
    try:
        stream: IO[bytes] = request.stream
        total = 0
        while chunk := stream.read(READ_SIZE):
            total += len(chunk)
            if total > limits.max_bytes:
                raise RequestEntityTooLarge()
            yield chunk
    except RequestEntityTooLarge:
        # A declared length past the limit, or a chunked body that went past it.
        reason = f"a batch upload is at most {limits.max_bytes} bytes"
        raise too_large("(body)", reason, "CCQ_BATCH_MAX_BYTES", limits.max_bytes) from None


class _TextReader:
    """The body as text in a buffer that holds at most about one value at a time."""

    def __init__(self, limits: Limits) -> None:
        self._chunks = _chunks(limits)
        # surrogatepass: as json.loads(bytes) decodes, so an encoded lone surrogate
        # reaches the storability check (a 400 naming the field), not a decode error.
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        self._json = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self._started = False

    def _fill(self) -> None:
        chunk = next(self._chunks, None)
        try:
            text = self._decoder.decode(chunk or b"", final=chunk is None)
        except UnicodeDecodeError:
            raise malformed() from None
        if not self._started:
            # A UTF-8 byte order mark, which json.loads(bytes) accepts.
            text, self._started = text.removeprefix("\ufeff"), bool(text)
        self.eof = chunk is None
        self.buf = self.buf[self.pos :] + text
        self.pos = 0

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos : self.pos + 1]
            self._fill()

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise malformed()
        self.pos += 1

    def value(self, max_bytes: int, too_large: TooLarge) -> tuple[Any, str]:
        """The next JSON value and its text; ``too_large`` once its text is past max_bytes."""
        self.peek()
        while True:
            try:
                value, end = self._json.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof or not _maybe_cut(exc, len(self.buf)):
                    raise malformed() from None
            except RecursionError:
                raise malformed() from None
            else:
                # A value that ends where the buffer does may go on (a number's digits).
                if end < len(self.buf) or self.eof:
                    text = self.buf[self.pos : end]
                    if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
                        raise too_large
                    self.pos = end
                    return value, text
            if len(self.buf) - self.pos > max_bytes:
                raise too_large
            self._fill()


def _maybe_cut(exc: json.JSONDecodeError, length: int) -> bool:
    """Whether the error may come from the value being cut short by the buffer's end."""
    return exc.msg.startswith("Unterminated string") or exc.pos >= length - _CUT_MARGIN


class _JsonBatchReader:
    def __init__(self, text: _TextReader, limits: Limits, known_fields: Collection[str]) -> None:
        self._text = text
        self._limits = limits
        self._known = known_fields
        self.batch = RawBatch()

    def read(self) -> RawBatch:
        text = self._text
        text.expect("{")
        if text.peek() == "}":
            text.pos += 1
        else:
            while True:
                self._field()
                separator = text.peek()
                text.pos += 1
                if separator == "}":
                    break
                if separator != ",":
                    raise malformed()
        if text.peek() != "":
            raise malformed()  # data after the object, as json.loads refuses it
        return self.batch

    def _field(self) -> None:
        text, batch = self._text, self.batch
        key, _ = text.value(self._limits.max_item_bytes, self._value_too_large("(body)"))
        if not isinstance(key, str):
            raise malformed()
        text.expect(":")
        if key == "items" and text.peek() == "[":
            text.pos += 1
            batch.items.clear()  # a repeated key: the last one counts, as in json.loads
            batch.has_items = True
            self._items()
            return
        value, _ = text.value(self._limits.max_item_bytes, self._value_too_large(key))
        batch.fields[key] = value
        if len(batch.fields) > len(self._known):
            # At least one unknown field: enough to refuse; the model names it.
            raise _StopReading()

    def _items(self) -> None:
        text, batch = self._text, self.batch
        if text.peek() == "]":
            text.pos += 1
            return
        while True:
            _count(batch, self._limits)
            too_large_item = _item_too_large(len(batch.items), self._limits)
            _, item = text.value(self._limits.max_item_bytes, too_large_item)
            batch.items.append(item)
            separator = text.peek()
            text.pos += 1
            if separator == "]":
                return
            if separator != ",":
                raise malformed()

    def _value_too_large(self, name: str) -> TooLarge:
        reason = f"one value of a batch upload is at most {self._limits.max_item_bytes} bytes"
        return too_large(name, reason, "CCQ_BATCH_MAX_ITEM_BYTES", self._limits.max_item_bytes)


class _StopReading(Exception):
    """Enough was read to refuse the body."""
