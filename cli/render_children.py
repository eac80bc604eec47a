"""A session's tree of children and a fan-out's progress, as lines of text.

Pure like cli/render.py; the tree's columns are laid out by rich (cli/tables.py).
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text

from cli.render import paint, paint_status, plural, status_text
from cli.tables import render_table
from client import JsonObject
from client.formatting import format_cost

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
    lines.append(f"{plural(len(sessions), 'session')}: {states}; tree cost {cost}")
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
