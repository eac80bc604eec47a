"""What a relayed Messages API call used: its model and token counts, read from the
response bytes on their way to the CLI.

The proxy (:mod:`gateway.proxy`) relays the upstream's response unchanged, chunk by
chunk as it arrives, and must still charge the call. :class:`UsageMeter` is fed the same
chunks and keeps only what the charge needs, so metering never holds up or alters the
relay.

* **Streaming** (``text/event-stream``): server-sent events, parsed incrementally; an
  event may be split across chunks at any byte, lines end in ``\\n`` or ``\\r\\n``
  (not a lone ``\\r``, which the API never sends), ``data:`` lines join with ``\\n``,
  ``:`` comments are skipped. Only four events are read: ``message_start`` (the model,
  and the usage so far), ``message_delta`` (usage counts are cumulative: a count it
  carries replaces the earlier one), ``message_stop`` (the message is complete) and
  ``error`` (its type, for the logs). Every other event
  (``content_block_delta`` above all, most of the stream) is passed over by its
  ``event:`` name, its data neither kept nor parsed.
* **Not streaming** (``application/json``): the body is kept up to
  :data:`MAX_JSON_BYTES` and parsed by :meth:`UsageMeter.finish`; a larger body is let
  through unread (``complete`` stays False).

The bytes come from the network, so the meter never raises and its memory is bounded:
an event larger than :data:`MAX_EVENT_BYTES` is dropped, malformed JSON and values of
the wrong type are ignored, a token count counts only if it is a non-negative int (not a
bool) below 2**53, and a model or error name only if it is a short printable string
(what the ledger's columns can hold).
"""

from __future__ import annotations

import json

from orchestrator.domain.pricing import Usage

MAX_EVENT_BYTES = 1 << 20  # one server-sent event (its data, or any one line)
MAX_JSON_BYTES = 8 << 20  # a non-streaming body
MAX_TOKENS = (1 << 53) - 1
MAX_NAME_CHARS = 200  # model_calls.model is a String(200)

_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
_READ_EVENTS = frozenset({b"message_start", b"message_delta", b"message_stop", b"error"})
# An event without an ``event:`` line is parsed only if its data names one of them.
_READ_TYPES = tuple(b'"' + name + b'"' for name in sorted(_READ_EVENTS))


class UsageMeter:
    """Reads one response's model, usage and error type from its chunks (see above)."""

    def __init__(self, content_type: str | None) -> None:
        media = (content_type or "").partition(";")[0].strip().lower()
        self._sse = media == "text/event-stream"
        self._json = media == "application/json"
        self._model: str | None = None
        self._counts = dict.fromkeys(_USAGE_FIELDS, 0)
        self._complete = False
        self._error_type: str | None = None
        self._finished = False
        # Streaming: the line being read, and the event being read.
        self._line = bytearray()
        self._line_ignored = False  # the rest of the line is not kept: it means nothing
        self._event = b""
        self._data = bytearray()
        self._has_data = False
        self._skip = False  # an event the meter does not read
        self._dropped = False  # an event that outgrew MAX_EVENT_BYTES
        # Not streaming: the body so far; None once it outgrew MAX_JSON_BYTES.
        self._body: bytearray | None = bytearray()

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def usage(self) -> Usage:
        return Usage(**self._counts)

    @property
    def complete(self) -> bool:
        """A ``message_stop`` was read, or the whole JSON body was."""
        return self._complete

    @property
    def error_type(self) -> str | None:
        """The ``error.type`` of an ``error`` event or an error body."""
        return self._error_type

    @property
    def buffered_bytes(self) -> int:
        """The response bytes the meter holds right now."""
        return len(self._line) + len(self._data) + len(self._body or b"")

    def feed(self, chunk: bytes) -> None:
        """Read the next chunk of the response, as relayed."""
        if self._finished or not chunk:
            return
        if self._sse:
            self._feed_events(chunk)
        elif self._json and self._body is not None:
            if len(self._body) + len(chunk) > MAX_JSON_BYTES:
                self._body = None
            else:
                self._body += chunk

    def finish(self) -> None:
        """The response has ended: parse a JSON body and let go of the buffers. A stream's
        unterminated last event is discarded, as the SSE spec says. Later feeds are
        ignored."""
        if self._finished:
            return
        self._finished = True
        if self._json and self._body is not None:
            body = _parse_json(self._body)
            if isinstance(body, dict):
                self._read_message(body)
                self._complete = True
        self._body = None
        self._line = bytearray()
        self._data = bytearray()

    # Streaming

    def _feed_events(self, chunk: bytes) -> None:
        *lines, tail = chunk.split(b"\n")
        for index, line in enumerate(lines):
            if index == 0 and self._line_ignored:
                self._line_ignored = False  # the end of a line not kept
                continue
            if index == 0 and self._line:
                line = bytes(self._line) + line
                self._line.clear()
            self._read_line(line)
        if self._line_ignored or not tail:
            return
        self._line += tail
        if len(self._line) + len(self._data) > MAX_EVENT_BYTES:
            self._drop_event()
        # A line that cannot end the event (it is not blank) and that is not read.
        partial = self._line
        if (self._dropped and partial != b"\r") or (
            self._skip and len(partial) >= len(b"event") and not partial.startswith(b"event")
        ):
            self._line.clear()
            self._line_ignored = True

    def _read_line(self, line: bytes) -> None:
        if not line or line == b"\r":
            self._dispatch()
            return
        if self._dropped or (self._skip and not line.startswith(b"event")):
            return
        if len(line) > MAX_EVENT_BYTES:
            self._drop_event()
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            self._event = value
            self._skip = value not in _READ_EVENTS and value not in (b"", b"message")
        elif field == b"data":
            if len(self._data) + len(value) + 1 > MAX_EVENT_BYTES:
                self._drop_event()
                return
            if self._has_data:
                self._data += b"\n"
            self._data += value
            self._has_data = True
        # Comments (an empty field name), "id" and "retry" mean nothing here.

    def _drop_event(self) -> None:
        self._dropped = True
        self._data = bytearray()

    def _dispatch(self) -> None:
        event, data, has_data, read = self._event, self._data, self._has_data, not self._dropped
        self._event, self._data, self._has_data = b"", bytearray(), False
        self._skip = self._dropped = False
        if not (read and has_data):
            return
        named = event in _READ_EVENTS
        unnamed = event in (b"", b"message") and any(t in data for t in _READ_TYPES)
        if not (named or unnamed):
            return
        payload = _parse_json(data)
        if not isinstance(payload, dict):
            return
        kind = event.decode() if named else payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._read_message(message)
        elif kind == "message_delta":
            self._read_usage(payload.get("usage"))
        elif kind == "message_stop":
            self._complete = True
        elif kind == "error":
            self._read_error(payload.get("error"))

    # Both

    def _read_message(self, message: dict[object, object]) -> None:
        model = _name(message.get("model"))
        if model is not None:
            self._model = model
        self._read_usage(message.get("usage"))
        self._read_error(message.get("error"))

    def _read_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for field in _USAGE_FIELDS:
            count = usage.get(field)
            if type(count) is int and 0 <= count <= MAX_TOKENS:
                self._counts[field] = count

    def _read_error(self, error: object) -> None:
        if isinstance(error, dict):
            error_type = _name(error.get("type"))
            if error_type is not None:
                self._error_type = error_type


def _parse_json(data: bytes | bytearray) -> object:
    """The JSON value, or None when it is not JSON (or too deep, or bad UTF-8)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _name(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS and value.isprintable():
        return value
    return None
