"""Redaction: a run's secret values and its session token never leave the worker.

A :class:`Redactor` is built per run from the secrets its session holds and the run's
session token. Every occurrence of a value becomes ``[REDACTED:<NAME>]`` (the token's
name is ``CCQ_SESSION_TOKEN``) in what the run sends anywhere:

- every event, before it reaches Redis or PostgreSQL (:class:`RedactingSink`): the
  parsed JSON is walked and every string (keys too) is redacted, so JSON escaping does
  not hide a value; the value's JSON-escaped and percent-encoded forms are looked for as
  well, for text that carries JSON or URLs inside a string (``input_json_delta``,
  ``ccq.raw`` lines);
- text streamed in pieces (``stream_event`` deltas: ``text_delta``,
  ``input_json_delta``, ``thinking_delta``): a delta's tail that could begin a value is
  held back until the next delta of the same content block shows whether it does, or
  the block, the message or the run ends (:class:`StreamRedactor`);
- the run's result text, ``run.error``, the stderr tail and the executor's log lines
  (:meth:`Redactor.text`).

What it cannot catch: a value the session transforms (base64, reversed, split with
spaces, hashed, one character per line), a part of a value printed alone, and values
shorter than :data:`MIN_REDACTED_LENGTH` (redacting those would mangle ordinary text).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session as DbSession

from orchestrator.streams.events import RunEventSink, WireEvent

# Shorter values are not redacted (the secret store warns about them at start-up): a
# value of a few characters would be replaced in every word that contains it.
MIN_REDACTED_LENGTH = 6
SESSION_TOKEN_NAME = "CCQ_SESSION_TOKEN"  # noqa: S105 - a name

# The delta types whose text streams, and the field holding it.
DELTA_TEXT_FIELDS = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}

Event = tuple[str, dict[str, Any]]


def marker(name: str) -> str:
    return f"[REDACTED:{name}]"


def _forms(value: str) -> list[str]:
    """The forms of ``value`` to look for: itself, as inside a JSON string (ASCII-only
    and not), percent-encoded, and each long line of a multi-line value (stderr comes
    a line at a time)."""
    forms = [
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value, safe=""),
    ]
    if "\n" in value:
        forms += [line for line in value.splitlines() if len(line.strip()) >= MIN_REDACTED_LENGTH]
    return [form for form in dict.fromkeys(forms) if len(form) >= MIN_REDACTED_LENGTH]


class Redactor:
    """Replaces the values it was given by ``[REDACTED:<NAME>]``.

    Overlapping and nested values are all covered: every stretch of text inside any
    occurrence of any value is replaced, by the markers of the values found there.
    """

    __slots__ = ("_firsts", "_names", "_pattern")

    def __init__(self, secrets: Mapping[str, str]) -> None:
        """``secrets``: ``{NAME: value}``."""
        names: dict[str, str] = {}  # form -> name; the first name wins a shared value
        for name, value in sorted(secrets.items()):
            if len(value) < MIN_REDACTED_LENGTH:
                continue
            for form in _forms(value):
                names.setdefault(form, name)
        self._names = names
        # Longest first: at each position the longest value that starts there matches.
        forms = sorted(names, key=len, reverse=True)
        # A lookahead finds a match at every position, so overlapping values are found.
        self._pattern = (
            re.compile("(?=(" + "|".join(re.escape(f) for f in forms) + "))") if forms else None
        )
        self._firsts: dict[str, list[str]] = {}
        for form in forms:
            self._firsts.setdefault(form[0], []).append(form)

    @classmethod
    def for_run(cls, secrets: Mapping[str, str], session_token: str) -> Redactor:
        """A run's redactor: its session's secrets and its session token."""
        return cls({**secrets, SESSION_TOKEN_NAME: session_token})

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __repr__(self) -> str:
        return f"Redactor(names={sorted(set(self._names.values()))})"

    __str__ = __repr__

    # --- whole text ----------------------------------------------------------------------

    def _runs(self, text: str) -> list[tuple[int, int, list[str]]]:
        """Maximal stretches covered by occurrences: (start, end, names in order)."""
        if self._pattern is None:
            return []
        runs: list[tuple[int, int, list[str]]] = []
        for match in self._pattern.finditer(text):
            form = match.group(1)
            start, end, name = match.start(), match.start() + len(form), self._names[form]
            if runs and start < runs[-1][1]:
                last_start, last_end, names = runs[-1]
                if end > last_end:  # a value inside another's occurrence is that one's
                    if name != names[-1]:
                        names.append(name)
                    runs[-1] = (last_start, end, names)
            else:
                runs.append((start, end, [name]))
        return runs

    def text(self, text: str) -> str:
        """``text`` with every value replaced."""
        if self._pattern is None or not self._pattern.search(text):
            return text
        parts: list[str] = []
        position = 0
        for start, end, names in self._runs(text):
            parts.append(text[position:start])
            parts.extend(marker(name) for name in names)
            position = end
        parts.append(text[position:])
        return "".join(parts)

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def walk(self, value: Any) -> Any:
        """A copy of parsed JSON with every string (keys included) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                (self.text(k) if isinstance(k, str) else k): self.walk(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.walk(item) for item in value]
        return value

    # --- streamed text -------------------------------------------------------------------

    def split_stream(self, text: str) -> tuple[str, str]:
        """``text`` (of a stream so far) as (what may go out now, what to hold back).

        Held back: the longest tail that is the start of some value, and any occurrence
        that tail overlaps. What goes out is raw; redact it with :meth:`text`.
        """
        held = self._held_length(text)
        if held == 0:
            return text, ""
        cut = len(text) - held
        for start, end, _ in self._runs(text):
            if start < cut < end:
                cut = start
                break
        return text[:cut], text[cut:]

    def _held_length(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a value."""
        best = 0
        for first, forms in self._firsts.items():
            longest = len(forms[0])
            window = max(len(text) - longest + 1, 0)
            position = text.find(first, window)
            while position >= 0 and len(text) - position > best:
                tail = text[position:]
                if any(len(form) > len(tail) and form.startswith(tail) for form in forms):
                    best = len(tail)
                    break
                position = text.find(first, position + 1)
        return best


@dataclass
class _Held:
    """Raw text of one content block not yet sent, and how to send it."""

    text: str
    field: str
    delta_type: str
    index: Any
    parent: Any
    session_id: Any


class StreamRedactor:
    """Redacts a run's events in order, holding back the tails of streamed deltas that
    could begin a value (see :meth:`Redactor.split_stream`).

    Held text goes out with the next delta of its content block, or, when the block,
    its message or the run ends first, in a delta event of its own just before the
    event that ended it (same shape as the CLI's, with a new ``uuid``).
    """

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._held: dict[tuple[Any, Any], _Held] = {}

    def process(self, type_: str, data: dict[str, Any]) -> list[Event]:
        """The events to emit, redacted, in order, for one event of the run."""
        if not self.redactor:
            return [(type_, data)]
        released: list[Event] = []
        if type_ == "stream_event" and isinstance(event := data.get("event"), dict):
            parent = data.get("parent_tool_use_id")
            kind = event.get("type")
            if kind == "content_block_delta":
                delta = event.get("delta")
                if isinstance(delta, dict):
                    field = DELTA_TEXT_FIELDS.get(str(delta.get("type")))
                    if field is not None and isinstance(delta.get(field), str):
                        return [self._delta(data, parent, event, delta, field)]
            elif kind == "content_block_stop":
                key = (parent, event.get("index"))
                released = self._release(lambda k: k == key)
            elif kind in ("message_start", "message_stop"):
                released = self._release(lambda k: k[0] == parent)
        elif type_ in ("assistant", "user"):
            parent = data.get("parent_tool_use_id")
            released = self._release(lambda k: k[0] == parent)
        elif type_ == "result":
            released = self.release_all()
        return [*released, (type_, self.redactor.walk(data))]

    def release_all(self) -> list[Event]:
        """Everything held, as delta events (the run has ended)."""
        return self._release(lambda _: True)

    def _delta(
        self,
        data: dict[str, Any],
        parent: Any,
        event: dict[str, Any],
        delta: dict[str, Any],
        field: str,
    ) -> Event:
        key = (parent, event.get("index"))
        held = self._held.pop(key, None)
        raw = (held.text if held is not None else "") + delta[field]
        now, later = self.redactor.split_stream(raw)
        if later:
            self._held[key] = _Held(
                later, field, str(delta.get("type")), event.get("index"), parent,
                data.get("session_id"),
            )  # fmt: skip
        # The protocol's own keys are kept as they are; everything else is walked.
        walk = self.redactor.walk
        redacted = walk({k: v for k, v in data.items() if k != "event"})
        redacted["event"] = walk({k: v for k, v in event.items() if k != "delta"})
        redacted["event"]["delta"] = walk({k: v for k, v in delta.items() if k != field})
        redacted["event"]["delta"][field] = self.redactor.text(now)
        return "stream_event", redacted

    def _release(self, which: Callable[[tuple[Any, Any]], bool]) -> list[Event]:
        events: list[Event] = []
        for key in [k for k in self._held if which(k)]:
            held = self._held.pop(key)
            delta = {"type": held.delta_type, held.field: self.redactor.text(held.text)}
            events.append(
                (
                    "stream_event",
                    {
                        "type": "stream_event",
                        "event": {
                            "type": "content_block_delta",
                            "index": held.index,
                            "delta": delta,
                        },
                        "session_id": held.session_id,
                        "parent_tool_use_id": held.parent,
                        "uuid": str(uuid.uuid4()),
                    },
                )
            )
        return events


class RedactingSink(RunEventSink):
    """A run's event sink that redacts every event before it is published or stored.

    When the run's output has ended, :meth:`release` sends what the stream redactor
    still holds; :meth:`persist_pending` does it too, if anything is left, without
    flushing (it runs inside the transaction that records the run).
    """

    def __init__(self, *args: Any, redactor: Redactor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redactor = redactor
        self._stream = StreamRedactor(redactor)
        self._hold_flushes = False

    def emit(self, type_: str, data: dict[str, Any]) -> WireEvent:
        emitted: WireEvent | None = None
        for event_type, event_data in self._stream.process(type_, data):
            emitted = super().emit(event_type, event_data)
        assert emitted is not None  # process() always returns the event itself
        return emitted

    def release(self) -> None:
        """Emit what the stream redactor still holds (the run's output has ended)."""
        for event_type, event_data in self._stream.release_all():
            super().emit(event_type, event_data)

    def flush(self) -> None:
        if not self._hold_flushes:
            super().flush()

    def flush_if_due(self) -> None:
        if not self._hold_flushes:
            super().flush_if_due()

    def persist_pending(self, db: DbSession) -> None:
        self._hold_flushes = True  # a flush would commit the caller's transaction
        try:
            self.release()
        finally:
            self._hold_flushes = False
        super().persist_pending(db)

    def finish(self, type_: str, data: dict[str, Any]) -> WireEvent:
        return super().finish(type_, self.redactor.walk(data))
