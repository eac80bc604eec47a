"""`ccq batch`: submit many prompts at once (one session and run each) and follow them.

`submit` uploads an NDJSON file as it is, `status` and `list` show batches, `results`
writes their NDJSON results as they stream, `cancel` stops one. `--wait` follows the
batch's progress stream (cli/tail.py) and draws a progress bar on stderr: redrawn in
place on a terminal, a plain line now and then anywhere else (:class:`ProgressDisplay`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import IO, NoReturn

import click

from cli.console import stderr_color, stdout_color
from cli.context import fail, json_option, more_pages, page_options, uses_api
from cli.progress import Display, progress_display
from cli.render_batches import (
    batch_cancelled,
    batch_details,
    batch_submitted,
    batch_summary,
    batches_table,
)
from client import ApiClient, ApiError, JsonObject, Kind

# The last event of a batch's stream (before it, ccq.batch.progress ones).
BATCH_FINISHED = "ccq.batch.finished"
UNFINISHED_ITEM_STATUSES = frozenset({"queued", "running"})

# Where stderr is not a terminal (a log, CI), a plain progress line is written at most
# this often, or at once when another tenth of the items is done; the final one always.
PLAIN_EVERY_SECONDS = 5.0
PLAIN_STEP = 0.1
PLAIN_WIDTH = 100
CLEAR_LINE = "\x1b[K"
# Reading the batch, if its stream ended without its final event (it never should).
POLL_FIRST, POLL_MAX = 0.5, 2.0


# --- following a batch ----------------------------------------------------------------


def _poll_finished(client: ApiClient, batch: JsonObject, display: Display) -> JsonObject:
    """Read the batch until it finished (when its stream ended without saying so)."""
    delay = POLL_FIRST
    while not batch.get("finished_at"):
        time.sleep(delay)
        delay = min(delay * 1.5, POLL_MAX)
        batch = client.get_batch(batch["id"])
        display.update(batch)
    return batch


class _Finished(Exception):
    """Raised from the event handler to stop following: the batch finished."""

    def __init__(self, batch: JsonObject) -> None:
        super().__init__(batch.get("id"))
        self.batch = batch


def follow_batch(client: ApiClient, batch: JsonObject) -> JsonObject:
    """Show the batch's progress from its stream until it finished; the final batch.

    Every event carries the whole batch (absolute counts), so the newest one is drawn.
    Following stops at the ``ccq.batch.finished`` event, whether or not the server has
    closed the stream yet.
    """
    display = progress_display()

    def on_event(event: JsonObject, _raw: str) -> None:
        state = (event.get("data") or {}).get("batch")
        if isinstance(state, dict):
            display.update(state)
            if event.get("type") == BATCH_FINISHED:
                raise _Finished(state)

    def notify(message: str) -> None:
        display.note(f"ccq: {message}")

    display.update(batch)
    follower = client.follower(Kind.BATCH, batch["id"], notify=notify)
    try:
        follower.follow(on_event)
        return _poll_finished(client, client.get_batch(batch["id"]), display)
    except _Finished as finished:
        return finished.batch
    finally:
        display.close()


def _await(client: ApiClient, batch: JsonObject, *, as_json: bool, details: bool) -> NoReturn:
    """Follow the batch to its end, print it, exit 0 if it succeeded and 1 otherwise (130
    on Ctrl-C: the batch goes on)."""
    batch_id = batch["id"]
    try:
        batch = follow_batch(client, batch)
    except KeyboardInterrupt:
        fail(
            f"ccq: stopped waiting; batch {batch_id} goes on "
            f"(`ccq batch cancel {batch_id}` cancels it)",
            130,
        )
    if as_json:
        click.echo(json.dumps({"batch": batch}, indent=2))
    elif details:
        click.echo(batch_details(batch, stdout_color()))
    if not details or as_json:
        click.echo(batch_summary(batch, stderr_color()), err=True)
    sys.exit(0 if batch["status"] == "succeeded" else 1)


# --- commands -------------------------------------------------------------------------


@click.group("batch")
def batch_group() -> None:
    """Many prompts at once: each item of a batch is a session with one run."""


def _upload_body(items: IO[bytes]) -> bytes | IO[bytes]:
    """A file is sent as it is read; stdin (no known length) is read first."""
    if items.seekable():
        return items
    if sys.stdin.isatty():
        click.echo(
            "ccq: reading items from stdin, one JSON object per line (Ctrl-D ends)", err=True
        )
    return items.read()


@batch_group.command("submit")
@click.argument("items", metavar="FILE", type=click.File("rb"))
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="Run at most N of the items at a time.",
)
@click.option(
    "--notify-url", metavar="URL", default=None, help="POST the batch here once it finished."
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    default=None,
    help="Submitting again with KEY returns the first batch instead of a new one.",
)
@click.option(
    "--wait", is_flag=True, help="Follow the batch with a progress bar until it finished."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the API's JSON (with --wait: the finished batch).",
)
@uses_api
def submit_command(
    client: ApiClient,
    items: IO[bytes],
    max_concurrency: int | None,
    notify_url: str | None,
    idempotency_key: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Submit FILE (NDJSON: one item object per line, `-` reads stdin) as a batch.

    An item is {"prompt": ...} with any of "model", "max_turns", "max_budget_usd",
    "append_system_prompt", "allowed_tools", "disallowed_tools", "metadata". Nothing is
    created unless every item is valid; each invalid one is listed by its index (from
    0). The batch's ID goes to stdout. With --wait, the exit status is 0 if every item
    succeeded, 1 otherwise (130 on Ctrl-C: the batch goes on).
    """
    batch, created = client.create_batch_ndjson(
        _upload_body(items),
        max_concurrency=max_concurrency,
        notify_url=notify_url,
        idempotency_key=idempotency_key,
    )
    if as_json and not wait:
        click.echo(json.dumps({"batch": batch}, indent=2))
    elif not as_json:
        click.echo(batch["id"])  # at once, so a script has it even if it stops waiting
    summary = batch_submitted(batch, created)
    if not wait:
        click.echo(f"{summary} (`ccq batch status {batch['id']} --wait` follows it)", err=True)
        return
    click.echo(summary, err=True)
    _await(client, batch, as_json=as_json, details=False)


@batch_group.command("status")
@click.argument("batch_id", metavar="ID", type=click.UUID)
@json_option
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the batch with a progress bar until it finished; exit 0 if it succeeded.",
)
@uses_api
def status_command(client: ApiClient, batch_id: uuid.UUID, as_json: bool, wait: bool) -> None:
    """Show a batch: counts by state, cost, progress and timings."""
    batch = client.get_batch(str(batch_id))
    if wait:
        _await(client, batch, as_json=as_json, details=True)
    if as_json:
        click.echo(json.dumps({"batch": batch}, indent=2))
    else:
        click.echo(batch_details(batch, stdout_color()))


def _unfinished(line: bytes) -> bool:
    try:
        status = json.loads(line).get("status")
    except (ValueError, AttributeError):
        return False
    return status in UNFINISHED_ITEM_STATUSES


def _write_lines(lines: Iterable[bytes], out: IO[bytes]) -> tuple[int, int]:
    """Write each line as it comes; how many, and how many items had not finished."""
    count = unfinished = 0
    for line in lines:
        out.write(line + b"\n")
        out.flush()
        count += 1
        unfinished += _unfinished(line)
    return count, unfinished


def _write_file(lines: Iterable[bytes], path: Path) -> tuple[int, int]:
    """Into a temporary file beside ``path``, renamed once complete: a broken download
    never looks like a whole one."""
    part = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before it is renamed
        "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False
    )
    try:
        with part:
            counted = _write_lines(lines, part)
        os.replace(part.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part.name)
        raise
    return counted


@batch_group.command("results")
@click.argument("batch_id", metavar="ID", type=click.UUID)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write to FILE instead of stdout (replaced once every line arrived).",
)
@uses_api
def results_command(client: ApiClient, batch_id: uuid.UUID, output: Path | None) -> None:
    """Write a batch's results as NDJSON, one line per item.

    Lines come in item order as they stream: "index", "session_id", "run_id", "status",
    "result", "error", "total_cost_usd". A batch still running has lines for its
    unfinished items too (queued or running, without a result).
    """
    key = str(batch_id)
    lines = client.batch_results(key)
    if output is not None:
        count, unfinished = _write_file(lines, output)
        click.echo(f"batch {key}: {count} results written to {output}", err=True)
    else:
        try:
            count, unfinished = _write_lines(lines, sys.stdout.buffer)
        except BrokenPipeError:  # `ccq batch results … | head`: the reader is gone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
    if unfinished:
        click.echo(
            f"ccq: {unfinished} of {count} items have not finished yet "
            "(their lines say queued or running)",
            err=True,
        )


@batch_group.command("cancel")
@click.argument("batch_id", metavar="ID", type=click.UUID)
@uses_api
def cancel_command(client: ApiClient, batch_id: uuid.UUID) -> None:
    """Cancel a batch: queued items never start, running ones are stopped."""
    try:
        batch = client.cancel_batch(str(batch_id))
    except ApiError as exc:
        if exc.status != 409:
            raise
        fail(f"ccq: {exc.message}; nothing to cancel")
    click.echo(batch_cancelled(batch))


@batch_group.command("list")
@page_options("Batches")
@uses_api
def list_command(client: ApiClient, limit: int, all_pages: bool, as_json: bool) -> None:
    """List your batches, newest first."""
    batches, cursor = client.batches(limit=limit, all_pages=all_pages)
    if as_json:
        click.echo(json.dumps({"batches": batches, "next_cursor": cursor}, indent=2))
        return
    click.echo(batches_table(batches, datetime.now().astimezone(), stdout_color()))
    more_pages(cursor, limit)
