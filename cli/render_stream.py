"""A live stream as text: each event of a run's or session's tail, as it happens.

Pure like cli/render.py: events in, text out. A :class:`TailView` adds the lines that
frame runs (a header per run in a session's tail, a footer with how it ended).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from cli.render import TOOL_INPUT_CHARS, TOOL_RESULT_CHARS, one_line, paint, paint_status, plural
from client import JsonObject
from client.formatting import format_cost


@dataclass(frozen=True)
class StreamState:
    """What the event printer must remember between events.

    Attributes:
        mid_line: the output so far ends inside a line (inline text deltas), so the next
            whole line must start with a newline.
        streamed_text: text deltas arrived since the last ``assistant`` message, whose
            text blocks would only repeat them.
    """

    mid_line: bool = False
    streamed_text: bool = False


def _text_delta(data: JsonObject) -> str | None:
    event = data.get("event")
    if not isinstance(event, dict) or event.get("type") != "content_block_delta":
        return None
    delta = event.get("delta")
    if isinstance(delta, dict) and delta.get("type") == "text_delta":
        text = delta.get("text")
        return text if isinstance(text, str) else None
    return None


def _blocks(data: JsonObject) -> list[JsonObject]:
    message = data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _tool_result_text(block: JsonObject) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return "" if content is None else str(content)


def event_lines(event: JsonObject, streamed_text: bool, color: bool = False) -> list[str]:
    """The whole lines an event shows (inline text deltas are not lines)."""
    kind, data = event.get("type"), event.get("data") or {}
    if kind == "assistant":
        lines = []
        # The CLI reports a failed model request as an assistant message of its own.
        failed = bool(data.get("is_api_error_message") or data.get("error"))
        for block in _blocks(data):
            if block.get("type") == "text" and not streamed_text and block.get("text"):
                lines.append(paint(str(block["text"]), color and failed, fg="red"))
            elif block.get("type") == "tool_use":
                args = one_line(json.dumps(block.get("input", {})), TOOL_INPUT_CHARS)
                lines.append(paint(f"-> {block.get('name')} {args}", color, fg="cyan"))
        return lines
    if kind == "user":
        lines = []
        for block in _blocks(data):
            if block.get("type") == "tool_result":
                text = one_line(_tool_result_text(block), TOOL_RESULT_CHARS)
                prefix = "<- error: " if block.get("is_error") else "<- "
                lines.append(paint(prefix + text, color, dim=True))
        return lines
    if kind == "system" and data.get("subtype") == "init":
        version, model = data.get("claude_code_version"), data.get("model")
        return [paint(f"Claude Code {version}, model {model}", color, dim=True)]
    if kind == "system" and data.get("subtype") == "api_retry":
        attempt, most = data.get("attempt", "?"), data.get("max_retries", "?")
        return [paint(f"model API retry {attempt}/{most}", color, fg="yellow")]
    if kind in ("ccq.stderr", "ccq.raw") and data.get("line"):
        return [paint(f"{kind.removeprefix('ccq.')}: {data['line']}", color, dim=True)]
    return []


def render_event(
    state: StreamState, event: JsonObject, color: bool = False
) -> tuple[StreamState, str]:
    """The text to write for one event (as is, no newline added) and the next state."""
    data = event.get("data") or {}
    if event.get("type") == "stream_event":
        text = _text_delta(data)
        if not text:
            return state, ""
        return StreamState(mid_line=not text.endswith("\n"), streamed_text=True), text
    lines = event_lines(event, state.streamed_text, color)
    out = "".join(line + "\n" for line in lines)
    ends_block = event.get("type") == "assistant"
    if state.mid_line and (lines or ends_block):
        out = "\n" + out
        state = replace(state, mid_line=False)
    if ends_block:
        state = replace(state, streamed_text=False)
    return state, out


def finish_stream(state: StreamState) -> str:
    """What ends the stream cleanly: a newline if it stopped inside a line."""
    return "\n" if state.mid_line else ""


RUN_QUEUED = "ccq.run.queued"
RUN_STARTED = "ccq.run.started"
RUN_FINISHED = "ccq.run.finished"
SESSION_STATUS = "ccq.session.status"


def run_header(run_id: str, run_seq: int | None = None, color: bool = False) -> str:
    """The line that opens a run in a session's tail."""
    number = f" (#{run_seq})" if run_seq is not None else ""
    return paint(f"=== run {run_id}{number}", color, bold=True)


def run_footer(event: JsonObject, color: bool = False, result_shown: bool = False) -> str:
    """How a run ended, from its ``ccq.run.finished`` event: status, cost, turns, error.

    ``result_shown``: the output already ends with the run's result text, so a result that
    is the CLI's error message is not repeated.
    """
    data = event.get("data") or {}
    turns = data.get("num_turns")
    parts = [
        f"run {event.get('run_id')} {paint_status(str(data.get('status') or 'finished'), color)}",
        format_cost(data.get("total_cost_usd")),
        plural(turns, "turn") if isinstance(turns, int) else "- turns",
    ]
    line = "  ".join(parts)
    # A run the CLI ended with an error has no ccq error; its result is the CLI's message.
    error = data.get("error") or (
        data.get("result") if data.get("is_error") and not result_shown else None
    )
    if error:
        line += "\n" + paint(f"error: {error}", color, fg="red")
    return line


class TailView:
    """A tail's readable text, event by event: what :func:`render_event` shows, plus
    the lines that frame runs. Pure: it returns text and writes nothing.

    Args:
        color: ANSI styles (the output is a terminal).
        headers: open each run with :func:`run_header` and show the session's status
            changes (a session's tail, where runs follow one another).
        footers: end each run with :func:`run_footer` (`ccq tail`; `ccq run -s` prints
            its own summary of the run instead).
    """

    def __init__(self, color: bool = False, *, headers: bool = False, footers: bool = False):
        self.color, self.headers, self.footers = color, headers, footers
        self.state = StreamState()
        self._run_seqs: dict[str, int] = {}
        self._last_text: str | None = None  # the last assistant message's text

    def feed(self, event: JsonObject) -> str:
        """The text to write for ``event`` (as is: it may end inside a line)."""
        kind, data = event.get("type"), event.get("data") or {}
        run_id = str(event.get("run_id"))
        if kind == RUN_QUEUED and isinstance(data.get("run_seq"), int):
            self._run_seqs[run_id] = data["run_seq"]
        if kind == RUN_STARTED:
            # A session runs one prompt at a time: whatever streamed before is over.
            self.state = replace(self.state, streamed_text=False)
            self._last_text = None
            if self.headers:
                return self._line(run_header(run_id, self._run_seqs.get(run_id), self.color))
        if kind == RUN_FINISHED:
            self._run_seqs.pop(run_id, None)
            if not self.footers:
                return self.close()
            shown = data.get("result") is not None and data.get("result") == self._last_text
            return self._line(run_footer(event, self.color, result_shown=shown))
        if kind == "assistant":
            texts = [str(b.get("text")) for b in _blocks(data) if b.get("type") == "text"]
            self._last_text = "".join(texts) if texts else self._last_text
        if kind == SESSION_STATUS and self.headers and data.get("status"):
            return self._line(paint(f"session {data['status']}", self.color, dim=True))
        self.state, text = render_event(self.state, event, self.color)
        return text

    def close(self) -> str:
        """What ends the output cleanly: a newline if it stopped inside a line."""
        text = finish_stream(self.state)
        self.state = replace(self.state, mid_line=False)
        return text

    def _line(self, line: str) -> str:
        return self.close() + line + "\n"
