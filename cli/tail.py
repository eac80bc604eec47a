"""`ccq tail`: follow a run to its end, or a session until Ctrl-C, as events happen."""

from __future__ import annotations

import os
import sys
import uuid

import click

from cli.console import stdout_color
from cli.context import fail, notice, uses_api
from cli.render_stream import RUN_FINISHED, TailView
from client import ApiClient, ApiError, JsonObject, Kind


@click.command("tail")
@click.argument("object_id", metavar="SESSION|RUN", type=click.UUID)
@click.option(
    "--from-start",
    is_flag=True,
    help="A session from its first event, not from now on (a run's always starts there).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print each event as one line of JSON, for scripts."
)
@uses_api
def tail_command(client: ApiClient, object_id: uuid.UUID, from_start: bool, as_json: bool) -> None:
    """Follow a run to its end, or a session until Ctrl-C, as its events happen.

    The connection is resumed by itself, from the last event, if it breaks. A run's tail
    exits 0 if the run succeeded and 1 otherwise.
    """
    key = str(object_id)
    kind = _run_or_session(client, key)
    session = kind is Kind.SESSION
    view = TailView(stdout_color() and not as_json, headers=session, footers=True)
    finished: list[JsonObject] = []

    def show(event: JsonObject, raw: str) -> None:
        if as_json:
            click.echo(raw)  # flushes: a script sees each event as it comes
        elif text := view.feed(event):
            click.echo(text, nl=False)
        if event.get("type") == RUN_FINISHED:
            finished.append(event)

    def opened(tail: JsonObject) -> None:
        if session:
            start = "its first event" if from_start else "now on"
            notice(f"following session {key} from {start} (Ctrl-C to stop)")

    after = "0-0" if session and from_start else None
    follower = client.follower(kind, key, after=after, notify=notice)
    try:
        follower.follow(show, on_open=opened)
    except KeyboardInterrupt:
        sys.exit(130)  # quietly: stopping a tail is how a session's tail ends
    except BrokenPipeError:  # `ccq tail --json … | head`: the reader is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        click.echo(view.close(), nl=False)
    if session:
        return  # the server ended it without a reason to give (it never should)
    last = (finished[-1].get("data") or {}) if finished else client.get_run(key)
    sys.exit(0 if last.get("status") == "succeeded" else 1)


def _run_or_session(client: ApiClient, key: str) -> Kind:
    """Whether ``key`` is one of the caller's runs or sessions (404 on both: an error)."""
    for kind, get in ((Kind.RUN, client.get_run), (Kind.SESSION, client.get_session)):
        try:
            get(key)
        except ApiError as exc:
            if exc.status != 404:
                raise
        else:
            return kind
    return fail(f"ccq: no session or run {key}")
