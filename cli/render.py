"""The `ccq` client's pure formatting: events, runs, sessions, tables, trees and errors.

Dicts in, strings out, nothing written anywhere: the commands do the I/O, and these are
unit-tested without a server. Styles are rich's, added as ANSI codes only when the
caller says the output is a terminal that wants colors; tables are laid out by rich
(cli/tables.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from rich.cells import cell_len
from rich.text import Text

from cli.tables import render_table, styled
from client import ApiError, JsonObject
from client.formatting import format_cost, format_duration

TOOL_INPUT_CHARS = 200
TOOL_RESULT_CHARS = 160

_STATUS_COLORS = {
    "succeeded": "green",
    "idle": "green",
    "queued": "cyan",
    "running": "cyan",
    "starting": "cyan",
    "cancelled": "yellow",
    "stopped": "yellow",
    "failed": "red",
    "timed_out": "red",
}


def paint(text: str, color: bool, fg: str | None = None, **flags: bool) -> str:
    """``text`` in a rich style (a color ``fg``, ``bold=True``, ``dim=True``) only when
    colors are on, so piped output stays plain text."""
    style = " ".join([*(name for name, on in flags.items() if on), *([fg] if fg else [])])
    return styled(text, color, style or None)


def paint_status(status: str, color: bool) -> str:
    return paint(status, color, fg=_STATUS_COLORS.get(status))


def status_text(status: str, color: bool) -> Text:
    """A state as a table cell: colored by what it means, when colors are on."""
    style = _STATUS_COLORS.get(status) if color else None
    return Text(status, style=style or "")


def duration_ms(ms: int | float | None) -> str:
    """A run's ``duration_ms`` as ``0.2s``, ``59.0s``, ``2m05s``."""
    return format_duration(None if ms is None else ms / 1000, tenths=True)


def format_age(iso: str | None, now: datetime) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``: a table wants the gist, not a timestamp."""
    if not iso:
        return "-"
    then = datetime.fromisoformat(iso)
    if then.tzinfo is None:  # the API writes UTC; be lenient with a naive timestamp
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def format_time(iso: str | None) -> str:
    """An API timestamp as ``2026-01-31 12:00:00 UTC`` (whole seconds, always UTC)."""
    if not iso:
        return "-"
    then = datetime.fromisoformat(iso)
    if then.tzinfo is not None:
        then = then.astimezone(UTC)
    return then.strftime("%Y-%m-%d %H:%M:%S UTC")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def format_api_error(error: ApiError) -> str:
    """``ccq: <message>`` then one indented line per detail the message does not repeat."""
    lines = [f"ccq: {error.message}"]
    details = error.details
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and "field" in item:
                line = detail_line(item)
                if line != error.message:
                    lines.append(f"  {line}")
    elif isinstance(details, dict):
        lines += [f"  {key}: {value}" for key, value in details.items()]
    if error.status == 401:
        lines.append("  (pass --token or set CCQ_TOKEN; `ccq token --sub NAME` mints one)")
    return "\n".join(lines)


def detail_line(detail: JsonObject) -> str:
    """``field: reason``; a batch item's error as ``item 3: prompt: reason`` (its field
    without the ``items.3.`` the index already says)."""
    field, reason = str(detail["field"]), detail.get("reason", "")
    index = detail.get("index")
    if isinstance(index, int) and not isinstance(index, bool):
        return f"item {index}: {field.removeprefix(f'items.{index}.')}: {reason}"
    return f"{field}: {reason}"


def format_unreachable(url: str, reason: str) -> str:
    return f"ccq: cannot reach the ccq API at {url} ({reason}; is `make up` running?)"


def run_summary(run: JsonObject, color: bool = False) -> str:
    """One line for stderr after a run: what `ccq send` needs next, and what it cost."""
    turns = run.get("num_turns")
    parts = [
        f"session {run['session_id']}",
        f"run {run['id']} {paint_status(run['status'], color)}",
        format_cost(run.get("total_cost_usd")),
        _plural(turns, "turn") if isinstance(turns, int) else "- turns",
        duration_ms(run.get("duration_ms")),
    ]
    line = "  ".join(parts)
    if run.get("error"):
        line += "\n" + paint(f"error: {run['error']}", color, fg="red")
    return line


def status_table(
    header: tuple[str, ...], rows: Sequence[tuple[str, ...]], color: bool = False
) -> str:
    """A header in bold, then one line per row; the second column is a state."""
    bold = "bold" if color else ""
    lines = [[Text(cell, style=bold) for cell in header]]
    for row in rows:
        lines.append([Text(row[0]), status_text(row[1], color), *map(Text, row[2:])])
    return render_table(lines, color)


def sessions_table(sessions: list[JsonObject], now: datetime, color: bool = False) -> str:
    """ID, STATUS, RUNS, COST, LAST ACTIVE; padded before styling so columns line up."""
    if not sessions:
        return "no sessions"
    header = ("ID", "STATUS", "RUNS", "COST", "LAST ACTIVE")
    rows = [
        (
            s["id"],
            s["status"],
            str(s.get("runs_count", 0)),
            format_cost(s.get("total_cost_usd")),
            format_age(s.get("last_active_at") or s.get("created_at"), now),
        )
        for s in sessions
    ]
    return status_table(header, rows, color)


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in pairs)
    return [f"  {k.ljust(width)}  {v}" for k, v in pairs]


def run_details(run: JsonObject, color: bool = False) -> str:
    """A run in readable form: state, cost, timings, error, then its result text."""
    status = paint_status(run["status"], color)
    # The CLI says "success" even for a run that failed on a model API error: noise.
    if run.get("subtype") and run["subtype"] != "success":
        status += f" ({run['subtype']})"
    pairs = [
        ("status", status),
        ("session", run["session_id"]),
        ("cost", format_cost(run.get("total_cost_usd"))),
        ("turns", str(run.get("num_turns") if run.get("num_turns") is not None else "-")),
        ("duration", duration_ms(run.get("duration_ms"))),
        ("created", format_time(run.get("created_at"))),
        ("started", format_time(run.get("started_at"))),
        ("finished", format_time(run.get("finished_at"))),
    ]
    if run.get("attempts", 1) not in (None, 0, 1):
        pairs.append(("attempts", str(run["attempts"])))
    if run.get("error"):
        pairs.append(("error", paint(str(run["error"]), color, fg="red")))
    lines = [paint(f"run {run['id']} (#{run.get('seq', '?')})", color, bold=True), *_fields(pairs)]
    if run.get("result"):
        lines += ["", *run["result"].splitlines()]
    return "\n".join(lines)


def session_details(session: JsonObject, now: datetime, color: bool = False) -> str:
    """A session in readable form, then its last run's summary if it has one."""
    pairs = [
        ("status", paint_status(session["status"], color)),
        ("model", session.get("model") or "default"),
        ("runs", str(session.get("runs_count", 0))),
        ("cost", format_cost(session.get("total_cost_usd"))),
        ("created", format_time(session.get("created_at"))),
        ("last active", format_age(session.get("last_active_at"), now)),
    ]
    for key in ("parent_id", "batch_id"):
        if session.get(key):
            pairs.append((key.removesuffix("_id"), session[key]))
    for key in ("options", "metadata"):
        if session.get(key):
            pairs.append((key, _one_line(json.dumps(session[key], sort_keys=True), 200)))
    lines = [paint(f"session {session['id']}", color, bold=True), *_fields(pairs)]
    last = session.get("last_run")
    if last:
        lines += ["", "last " + run_details(last, color)]
    return "\n".join(lines)


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
                args = _one_line(json.dumps(block.get("input", {})), TOOL_INPUT_CHARS)
                lines.append(paint(f"-> {block.get('name')} {args}", color, fg="cyan"))
        return lines
    if kind == "user":
        lines = []
        for block in _blocks(data):
            if block.get("type") == "tool_result":
                text = _one_line(_tool_result_text(block), TOOL_RESULT_CHARS)
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


# --- a tail's view --------------------------------------------------------------------

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
        _plural(turns, "turn") if isinstance(turns, int) else "- turns",
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


# --- children and fan-out -------------------------------------------------------------

RESULT_CHARS = 60  # a result's first line, when the width of the terminal is unknown
MIN_RESULT_CHARS = 20  # ...and at least this much of it on a narrow terminal
_SESSION_STATES = ("starting", "idle", "running", "stopped", "failed")
_RUN_STATES = ("succeeded", "failed", "cancelled", "timed_out", "running", "queued")


def first_line(text: str | None, limit: int) -> str:
    """The first non-blank line of ``text``, cut to ``limit`` characters with ``…``: a
    result is often a page of text, and one line per session must stay one line."""
    for line in (text or "").splitlines():
        if stripped := line.strip():
            return stripped if len(stripped) <= limit else stripped[: max(limit - 1, 0)] + "…"
    return ""


def run_outcome(run: JsonObject | None, limit: int = RESULT_CHARS) -> str:
    """What a run came to, in one line: its result's first line, or its error's."""
    if not run:
        return ""
    if text := first_line(run.get("result"), limit):
        return text
    return first_line(f"error: {run['error']}", limit) if run.get("error") else ""


def _dicts(items: object) -> list[JsonObject]:
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def tree_rows(tree: JsonObject) -> list[tuple[str, JsonObject]]:
    """The sessions of a ``GET …/children?recursive=true`` answer, depth first, each with
    the connectors that draw its place in the tree (the root's are empty)."""
    root: JsonObject = tree["session"]
    rows: list[tuple[str, JsonObject]] = [("", root)]

    def walk(children: list[JsonObject], indent: str) -> None:
        for i, child in enumerate(children):
            last = i == len(children) - 1
            rows.append((indent + ("└─ " if last else "├─ "), child))
            walk(_dicts(child.get("children")), indent + ("   " if last else "│  "))

    # The answer lists the root's children beside it; a root node carrying its own is
    # read the same way.
    top = tree.get("children")
    walk(_dicts(top if isinstance(top, list) else root.get("children")), "")
    return rows


def _counts(statuses: list[str], order: tuple[str, ...]) -> str:
    """``2 idle, 1 failed``: known states in their usual order, then any others."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    known = [s for s in order if s in counts]
    return ", ".join(f"{counts[s]} {s}" for s in [*known, *sorted(set(counts) - set(known))])


def _tree_cost(root: JsonObject, sessions: list[JsonObject]) -> float:
    cost = root.get("tree_cost_usd")
    if isinstance(cost, int | float):
        return float(cost)
    return sum(float(s.get("total_cost_usd") or 0) for s in sessions)


def children_tree(tree: JsonObject, color: bool = False, width: int | None = None) -> str:
    """A session's tree of children, one aligned line per session, then a summary.

    Each line: the session's ID (in bold for the root, the tree's header line), its
    state, its last run's state, its own cost and its subtree's cost, and the first line
    of its last run's result. ``width`` (a terminal's) trims results so lines fit it;
    without it they are cut at ``RESULT_CHARS``. rich lays the columns out, so styles
    and wide characters keep them aligned.
    """
    rows = tree_rows(tree)
    cells = [
        (
            prefix + str(s["id"]),
            str(s["status"]),
            f"run {s['last_run']['status']}" if s.get("last_run") else "no runs",
            format_cost(s.get("total_cost_usd")),
            f"(tree {format_cost(s.get('tree_cost_usd'))})",
        )
        for prefix, s in rows
    ]
    widths = [max(cell_len(c[i]) for c in cells) for i in range(len(cells[0]))]
    used = sum(widths) + 2 * len(widths)
    limit = RESULT_CHARS if width is None else max(MIN_RESULT_CHARS, width - used - 1)

    table = []
    for index, ((prefix, session), row) in enumerate(zip(rows, cells, strict=True)):
        label = Text(prefix)
        label.append(str(session["id"]), style="bold" if color and index == 0 else "")
        run = session.get("last_run")
        last = Text("no runs")
        if run:
            last = Text("run ").append_text(status_text(str(run["status"]), color))
        table.append(
            [
                label,
                status_text(row[1], color),
                last,
                Text(row[3]),
                Text(row[4]),
                Text(run_outcome(run, limit)),
            ]
        )
    lines = render_table(table, color).split("\n")
    if len(rows) == 1:
        lines.append(paint("└─ (no children)", color, dim=True))
    sessions = [s for _, s in rows]
    states = _counts([str(s["status"]) for s in sessions], _SESSION_STATES)
    cost = format_cost(_tree_cost(rows[0][1], sessions))
    lines.append(f"{_plural(len(sessions), 'session')}: {states}; tree cost {cost}")
    return "\n".join(lines)


def fanout_started(answer: JsonObject) -> str:
    """What `ccq fanout` accepted: the fan-out, then each child with its run."""
    fanout = answer["fanout"]
    runs = {r.get("session_id"): r.get("id") for r in answer.get("runs") or []}
    children = answer.get("children") or []
    count = "1 child" if len(children) == 1 else f"{len(children)} children"
    lines = [
        f"fanout {fanout['id']}: {count} of session {fanout['session_id']}, "
        "which resumes once they all finish",
        *(f"  child {c['id']}  run {runs.get(c['id']) or '-'}" for c in children),
    ]
    return "\n".join(lines)


def fanout_child_done(
    session: JsonObject, done: int, total: int, color: bool = False, limit: int = RESULT_CHARS
) -> str:
    """One line when a child's run ended: how far the fan-out is, how the run ended,
    what it cost and the first line of its result."""
    run = session.get("last_run") or {}
    counter = f"[{done}/{total}]".rjust(2 * len(str(total)) + 3)
    parts = [
        f"{counter} child {session['id']}",
        paint_status(str(run.get("status") or "?"), color),
        format_cost(run.get("total_cost_usd")),
    ]
    if outcome := run_outcome(run, limit):
        parts.append(outcome)
    return "  ".join(parts)


def fanout_children_done(fanout: JsonObject, children: list[JsonObject]) -> str:
    """The children's tally once the fan-out stopped, and whether the parent resumed."""
    runs = [c.get("last_run") or {} for c in children]
    tally = _counts([str(r.get("status") or "?") for r in runs], _RUN_STATES) or "no children"
    cost = format_cost(sum(float(r.get("total_cost_usd") or 0) for r in runs))
    session = fanout["session_id"]
    if fanout.get("followup_run_id"):
        return (
            f"children done: {tally}; {cost}\n"
            f"session {session} resumed: run {fanout['followup_run_id']}"
        )
    return (
        f"fanout {fanout['id']} {fanout.get('status')}: {tally}; {cost}\n"
        f"session {session} is not resumed"
    )


# --- batches --------------------------------------------------------------------------

BAR_MIN, BAR_MAX = 10, 30
# Item states in the order a batch's tally lists them.
_ITEM_STATES = ("succeeded", "failed", "timed_out", "cancelled", "running", "queued")


def format_eta(seconds: float | None) -> str:
    """``45s``, ``1m20s``, ``2h05m``, ``3d04h``: whole units, the two largest; ``-`` if
    unknown."""
    if seconds is None:
        return "-"
    left = max(0, round(seconds))
    if left < 60:
        return f"{left}s"
    if left < 3600:
        return f"{left // 60}m{left % 60:02d}s"
    if left < 86400:
        return f"{left // 3600}h{left % 3600 // 60:02d}m"
    return f"{left // 86400}d{left % 86400 // 3600:02d}h"


def item_count(batch: JsonObject, state: str) -> int:
    """How many of the batch's items are in ``state``."""
    counts = batch.get("counts")
    value = counts.get(state) if isinstance(counts, dict) else None
    return value if isinstance(value, int) else 0


def batch_counts(batch: JsonObject) -> str:
    """``118 succeeded, 2 failed, 8 running, 72 queued``: the states that have items."""
    tally = [f"{item_count(batch, s)} {s}" for s in _ITEM_STATES if item_count(batch, s)]
    return ", ".join(tally) or "no items"


def _bar(ratio: float, width: int, color: bool) -> str:
    filled = min(width, int(ratio * width))  # full only once every item is done
    done, left = "█" * filled, "░" * (width - filled)
    # An empty part gets no styles: nothing but escape codes would be written for it.
    return (
        "["
        + paint(done, color and bool(done), fg="green")
        + paint(left, color and bool(left), dim=True)
        + "]"
    )


def progress_line(batch: JsonObject, width: int = 80, color: bool = False) -> str:
    """One line for a batch under way, shorter than ``width`` (a terminal's columns):

    ``[███████░░░░░░░] 120/200  60%  ✓118 ✗2 ▶8 …72  $0.0240  ETA 1m20s``

    ✓ succeeded and ✗ failed (timed out included) are always shown; ⊘ cancelled, ▶
    running and … queued when there are any. The ETA is the API's. Where the line does
    not fit, the bar narrows to ``BAR_MIN``, then goes, then the cost, the counts and the
    ETA do; ``done/total pct%`` always stays.
    """
    total = int(batch.get("total_items") or 0)
    done = int(batch.get("done") or 0)
    ratio = min(1.0, done / total) if total else 1.0
    counter = f"{done:>{len(str(total))}}/{total} {int(ratio * 100):3d}%"
    failed = item_count(batch, "failed") + item_count(batch, "timed_out")
    marks: list[tuple[str, int, str | None, bool]] = [
        ("✓", item_count(batch, "succeeded"), "green", True),
        ("✗", failed, "red", True),
        ("⊘", item_count(batch, "cancelled"), "yellow", False),
        ("▶", item_count(batch, "running"), "cyan", False),
        ("…", item_count(batch, "queued"), None, False),
    ]
    shown = [(f"{sign}{n}", fg) for sign, n, fg, always in marks if always or n]
    tally_plain = " ".join(text for text, _ in shown)
    tally = " ".join(paint(text, color and n_fg is not None, fg=n_fg) for text, n_fg in shown)
    cost = format_cost(float(batch.get("total_cost_usd") or 0))
    eta = batch.get("eta_seconds")
    eta_text = f"ETA {format_eta(eta)}" if isinstance(eta, int | float) else ""

    # (plain text, styled text) per part; parts are dropped from the right in this order.
    tail = [(tally_plain, tally), (cost, cost), (eta_text, eta_text)]
    for drop in ([], [1], [0, 1], [0, 1, 2]):
        parts = [(counter, counter)] + [p for i, p in enumerate(tail) if i not in drop and p[0]]
        plain = "  ".join(text for text, _ in parts)
        styled = "  ".join(text for _, text in parts)
        room = width - 1 - len(plain) - 3  # the bar's brackets and the space after it
        if room >= BAR_MIN:
            return _bar(ratio, min(BAR_MAX, room), color) + " " + styled
        if len(plain) < width:
            return styled
    return styled


def batch_submitted(batch: JsonObject, created: bool = True) -> str:
    """What `ccq batch submit` did, in one line."""
    if not created:
        return (
            f"batch {batch['id']}: already submitted with this idempotency key "
            f"({batch['status']}, {batch.get('done', 0)}/{batch['total_items']} done)"
        )
    limit = batch.get("max_concurrency")
    at_most = f", at most {limit} at a time" if limit else ""
    return f"batch {batch['id']}: {_plural(batch['total_items'], 'item')} queued{at_most}"


def batch_summary(batch: JsonObject, color: bool = False) -> str:
    """One line once a batch finished: its state, tally, cost and how long it took."""
    elapsed = batch.get("elapsed_seconds")
    parts = [
        f"batch {batch['id']} {paint_status(str(batch['status']), color)}",
        f"{batch.get('done', 0)}/{batch['total_items']} done: {batch_counts(batch)}",
        format_cost(batch.get("total_cost_usd")),
    ]
    if isinstance(elapsed, int | float):
        parts.append(duration_ms(round(elapsed * 1000)))
    return "  ".join(parts)


def batch_cancelled(batch: JsonObject) -> str:
    """What `ccq batch cancel` did: the tally after the cancel."""
    line = f"batch {batch['id']}: {batch['status']}; {batch_counts(batch)}"
    if running := item_count(batch, "running"):
        line += f" (the {running} running {'one is' if running == 1 else 'ones are'} stopping)"
    return line


def batch_details(batch: JsonObject, color: bool = False) -> str:
    """A batch in readable form: state, progress, tally, cost and timings."""
    total, done = batch["total_items"], batch.get("done", 0)
    percent = int(100 * done / total) if total else 100
    limit = batch.get("max_concurrency")
    elapsed = batch.get("elapsed_seconds")
    pairs = [
        ("status", paint_status(str(batch["status"]), color)),
        ("progress", f"{done}/{total} done ({percent}%)"),
        ("items", batch_counts(batch)),
        ("cost", format_cost(batch.get("total_cost_usd"))),
        ("concurrency", f"at most {limit} at a time" if limit else "no limit of its own"),
        ("created", format_time(batch.get("created_at"))),
        ("started", format_time(batch.get("started_at"))),
        ("finished", format_time(batch.get("finished_at"))),
        (
            "elapsed",
            duration_ms(round(elapsed * 1000)) if isinstance(elapsed, int | float) else "-",
        ),
    ]
    if not batch.get("finished_at"):
        pairs.append(("eta", format_eta(batch.get("eta_seconds"))))
    if batch.get("notify_url"):
        pairs.append(("notify", str(batch["notify_url"])))
    if batch.get("metadata"):
        pairs.append(("metadata", _one_line(json.dumps(batch["metadata"], sort_keys=True), 200)))
    return "\n".join([paint(f"batch {batch['id']}", color, bold=True), *_fields(pairs)])


def batches_table(batches: list[JsonObject], now: datetime, color: bool = False) -> str:
    """ID, STATUS, DONE, COST, CREATED; padded before styling so columns line up."""
    if not batches:
        return "no batches"
    header = ("ID", "STATUS", "DONE", "COST", "CREATED")
    rows = [
        (
            str(b["id"]),
            str(b["status"]),
            f"{b.get('done', 0)}/{b['total_items']}",
            format_cost(b.get("total_cost_usd")),
            format_age(b.get("created_at"), now),
        )
        for b in batches
    ]
    return status_table(header, rows, color)
