"""A batch's progress while `ccq batch … --wait` follows it, on stderr.

On a terminal rich draws it (:class:`RichProgress`): a bar redrawn in place, notes
printed above it, colors unless ``NO_COLOR``. Anywhere else (a log, CI) plain lines are
written now and then (:class:`ProgressDisplay`, :func:`plain_line_due`), so a log holds
a readable history instead of escape codes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from cli.console import stderr_console
from cli.render_batches import format_eta, item_count, progress_line
from client import JsonObject
from client.formatting import format_cost

# Where stderr is not a terminal (a log, CI), a plain progress line is written at most
# this often, or at once when another tenth of the items is done; the final one always.
PLAIN_EVERY_SECONDS = 5.0
PLAIN_STEP = 0.1
PLAIN_WIDTH = 100
BAR_WIDTH = 30


class Display(Protocol):
    """What following a batch tells its display."""

    def update(self, batch: JsonObject) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Shown:
    """The last plain progress line written: when, at how many items done, and its text."""

    at: float
    done: int
    line: str


def plain_line_due(
    last: Shown | None, now: float, done: int, total: int, line: str, *, final: bool = False
) -> bool:
    """Whether a plain progress line (stderr is not a terminal) should be written now.

    The first is; one that says nothing new is not (the final one included). The final
    one is, and so is one whenever ``done`` grew by a tenth of ``total`` since the last;
    otherwise at most one per ``PLAIN_EVERY_SECONDS``.
    """
    if last is None:
        return True
    if line == last.line:
        return False
    if final:
        return True
    if done - last.done >= max(1, math.ceil(total * PLAIN_STEP)):
        return True
    return now - last.at >= PLAIN_EVERY_SECONDS


class ProgressDisplay:
    """Plain progress lines, for a stderr that is not a terminal: written when
    :func:`plain_line_due` says so; :meth:`close` writes the last state if it was not
    written yet. Only the thread following the stream calls it.
    """

    def __init__(
        self, write: Callable[[str], None], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.write, self.clock = write, clock
        self.batch: JsonObject | None = None
        self._shown: Shown | None = None

    def update(self, batch: JsonObject) -> None:
        self.batch = batch
        self._draw(final=False)

    def note(self, text: str) -> None:
        """A line of its own (the stream broke, it is back)."""
        self.write(text + "\n")

    def close(self) -> None:
        """The final state, unless it is the last line written already."""
        self._draw(final=True)

    def _draw(self, final: bool) -> None:
        if self.batch is None:
            return
        line = progress_line(self.batch, PLAIN_WIDTH, color=False)
        done, total = int(self.batch.get("done") or 0), int(self.batch.get("total_items") or 0)
        now = self.clock()
        if plain_line_due(self._shown, now, done, total, line, final=final):
            self.write(line + "\n")
            self._shown = Shown(now, done, line)


def tally_markup(batch: JsonObject) -> str:
    """``✓118 ✗2 ▶8 …72`` in rich markup: ✓ succeeded and ✗ failed (timed out included)
    always, ⊘ cancelled, ▶ running and … queued when there are any."""
    failed = item_count(batch, "failed") + item_count(batch, "timed_out")
    marks = [
        ("✓", item_count(batch, "succeeded"), "green", True),
        ("✗", failed, "red", True),
        ("⊘", item_count(batch, "cancelled"), "yellow", False),
        ("▶", item_count(batch, "running"), "cyan", False),
        ("…", item_count(batch, "queued"), "", False),
    ]
    shown = [(f"{sign}{n}", style) for sign, n, style, always in marks if always or n]
    return " ".join(f"[{style}]{text}[/]" if style else text for text, style in shown)


class RichProgress:
    """The bar on a terminal, drawn by rich: redrawn in place as events come, notes
    printed above it, the final state left on screen when it stops.

    The counts, cost and ETA are the API's (every event carries the whole batch), not
    rich's own estimates.
    """

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            BarColumn(bar_width=BAR_WIDTH),
            TextColumn("{task.completed:>{task.fields[digits]}.0f}/{task.total:.0f}"),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[tally]}"),
            TextColumn("{task.fields[cost]}"),
            TextColumn("{task.fields[eta]}"),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def update(self, batch: JsonObject) -> None:
        total = int(batch.get("total_items") or 0)
        eta = batch.get("eta_seconds")
        fields: dict[str, Any] = {
            "digits": len(str(total)),
            "tally": tally_markup(batch),
            "cost": escape(format_cost(float(batch.get("total_cost_usd") or 0))),
            "eta": f"ETA {format_eta(eta)}" if isinstance(eta, int | float) else "",
        }
        done = int(batch.get("done") or 0)
        completed = done if total else 1  # an empty batch is complete
        if self._task is None:
            self._task = self.progress.add_task(
                "batch", total=total or 1, completed=completed, **fields
            )
            self.progress.start()
            return
        self.progress.update(self._task, completed=completed, total=total or 1, **fields)

    def note(self, text: str) -> None:
        """A line of its own (the stream broke, it is back), above the bar."""
        self.progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def _stderr_writer(text: str) -> None:
    click.echo(text, nl=False, err=True)  # flushes: lines appear as events come


def progress_display() -> Display:
    """Rich's bar where stderr is a terminal, plain lines elsewhere."""
    console = stderr_console()
    if console.is_terminal:
        return RichProgress(console)
    return ProgressDisplay(_stderr_writer)
