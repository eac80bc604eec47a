"""The `ccq` client's pure formatting: runs, sessions, tables, errors and the styles and
formats the other views share (live streams: cli/render_stream.py; children and
fan-outs: cli/render_children.py; batches: cli/render_batches.py).

Dicts in, strings out, nothing written anywhere: the commands do the I/O, and these are
unit-tested without a server. Styles are rich's, added as ANSI codes only when the
caller says the output is a terminal that wants colors; tables are laid out by rich
(cli/tables.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def one_line(text: str, limit: int) -> str:
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
        plural(turns, "turn") if isinstance(turns, int) else "- turns",
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


def fields_block(pairs: list[tuple[str, str]]) -> list[str]:
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
    lines = [
        paint(f"run {run['id']} (#{run.get('seq', '?')})", color, bold=True),
        *fields_block(pairs),
    ]
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
            pairs.append((key, one_line(json.dumps(session[key], sort_keys=True), 200)))
    lines = [paint(f"session {session['id']}", color, bold=True), *fields_block(pairs)]
    last = session.get("last_run")
    if last:
        lines += ["", "last " + run_details(last, color)]
    return "\n".join(lines)
