"""Batches as text: the progress line, the tally, details, the table.

Pure like cli/render.py.
"""

from __future__ import annotations

import json
from datetime import datetime

from cli.render import (
    duration_ms,
    fields_block,
    format_age,
    format_time,
    one_line,
    paint,
    paint_status,
    plural,
    status_table,
)
from client import JsonObject
from client.formatting import format_cost

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
    return f"batch {batch['id']}: {plural(batch['total_items'], 'item')} queued{at_most}"


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
        pairs.append(("metadata", one_line(json.dumps(batch["metadata"], sort_keys=True), 200)))
    return "\n".join([paint(f"batch {batch['id']}", color, bold=True), *fields_block(pairs)])


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
