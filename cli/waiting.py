"""Waiting for a run: polled, or followed on its live tail (`-s`), with a deadline.

Shared by `ccq run`, `ccq send` and `ccq fanout -f`, which all end as the run ends: exit
0 if it succeeded, 1 otherwise, 130 on Ctrl-C (the run goes on).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, ParamSpec, TypeVar

import click

from cli.console import stderr_color, stdout_color
from cli.context import fail, notice
from cli.render import run_summary
from cli.render_stream import TailView
from client import ApiClient, JsonObject, Kind, TailTimeout

P = ParamSpec("P")
R = TypeVar("R")

FINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
POLL_FIRST, POLL_MAX = 0.2, 1.0


class StillRunning(Exception):
    def __init__(self, run: JsonObject) -> None:
        super().__init__(run["id"])
        self.run = run


class Deadline:
    """The --timeout budget; ``None`` waits as long as the run takes (the server's
    watchdogs end every run)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def pause(delay: float, deadline: Deadline) -> float:
    """Sleep before the next poll (no longer than the deadline allows); the next delay."""
    remaining = deadline.remaining()
    time.sleep(delay if remaining is None or remaining <= 0 else min(delay, remaining))
    return min(delay * 1.5, POLL_MAX)


def poll_run(client: ApiClient, run: JsonObject, deadline: Deadline) -> JsonObject:
    delay = POLL_FIRST
    while run["status"] not in FINAL_RUN_STATUSES:
        if deadline.passed():
            raise StillRunning(run)
        delay = pause(delay, deadline)
        run = client.get_run(run["id"])
    return run


def stream_run(
    client: ApiClient,
    run: JsonObject,
    deadline: Deadline,
    write: Callable[[str], None],
    color: bool,
) -> JsonObject:
    """Print the run's events from its live tail (which ends after the run's final
    event), then return the finished run."""
    view = TailView(color)

    def show(event: JsonObject, _raw: str) -> None:
        if text := view.feed(event):
            write(text)

    try:
        client.follower(Kind.RUN, run["id"], notify=notice).follow(show, deadline=deadline.end)
    except TailTimeout:
        raise StillRunning(client.get_run(run["id"])) from None
    finally:
        if text := view.close():
            write(text)
    # The final event is published once the run's final state is committed.
    return poll_run(client, client.get_run(run["id"]), deadline)


def echo_writer(err: bool) -> Callable[[str], None]:
    def write(text: str) -> None:
        click.echo(text, nl=False, err=err)  # flushes, so deltas show as they come

    return write


@dataclass(frozen=True)
class WaitOptions:
    stream: bool
    as_json: bool
    timeout: float | None


def wait_options(command: Callable[P, R]) -> Callable[P, R]:
    """-s/--stream, --json and --timeout, shared by `run` and `send`."""
    command = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        default=None,
        help="Stop waiting after SECONDS (the run goes on); default: until it ends.",
    )(command)
    command = click.option(
        "--json", "as_json", is_flag=True, help="Print the finished run as JSON."
    )(command)
    return click.option(
        "-s", "--stream", is_flag=True, help="Print the run's events as they arrive."
    )(command)


def finish(
    client: ApiClient, run: JsonObject, options: WaitOptions, deadline: Deadline
) -> NoReturn:
    """Wait for the run, print it, exit 0 if it succeeded and 1 otherwise."""
    try:
        if options.stream:
            color = stdout_color() and not options.as_json
            write = echo_writer(err=options.as_json)  # --json keeps stdout for the JSON
            run = stream_run(client, run, deadline, write, color)
        else:
            run = poll_run(client, run, deadline)
    except StillRunning as exc:
        still = exc.run
        fail(
            f"ccq: run {still['id']} is still {still['status']} after {deadline.seconds:g}s; "
            f"it goes on (`ccq show {still['id']}`, `ccq cancel {still['id']}`)"
        )
    except KeyboardInterrupt:
        fail(f"\nccq: stopped waiting; run {run['id']} goes on (`ccq cancel {run['id']}`)", 130)
    if options.as_json:
        click.echo(json.dumps(run, indent=2))
    else:
        if not options.stream and run.get("result"):
            # A failed run's result is the CLI's error text: stderr, off the pipeline.
            click.echo(run["result"], err=run["status"] != "succeeded")
        click.echo(run_summary(run, stderr_color()), err=True)
    sys.exit(0 if run["status"] == "succeeded" else 1)


def read_prompt(prompt: str) -> str:
    """`-` means the prompt comes on stdin (without the newline that ends the input)."""
    if prompt != "-":
        return prompt
    return sys.stdin.read().removesuffix("\n")
