"""`ccq sessions`, `show`, `stop` and `rm`: your sessions as the API keeps them."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import click

from cli.console import stdout_color
from cli.context import fail, json_option, more_pages, page_options, uses_api
from cli.render import run_details, session_details, sessions_table
from client import ApiClient, ApiError


@click.command("sessions")
@click.option(
    "--status",
    type=click.Choice(["starting", "idle", "running", "stopped", "failed"]),
    default=None,
    help="Only sessions in this state.",
)
@page_options("Sessions")
@uses_api
def sessions_command(
    client: ApiClient,
    status: str | None,
    limit: int,
    all_pages: bool,
    as_json: bool,
) -> None:
    """List your sessions, newest first."""
    sessions, cursor = client.sessions(status=status, limit=limit, all_pages=all_pages)
    if as_json:
        click.echo(json.dumps({"sessions": sessions, "next_cursor": cursor}, indent=2))
        return
    now = datetime.now().astimezone()
    click.echo(sessions_table(sessions, now, stdout_color()))
    more_pages(cursor, limit)


@click.command("show")
@click.argument("object_id", metavar="ID", type=click.UUID)
@json_option
@uses_api
def show_command(client: ApiClient, object_id: uuid.UUID, as_json: bool) -> None:
    """Show a session, or a run (ID is tried as a session first)."""
    key = str(object_id)
    try:
        found, kind = client.get_session(key), "session"
    except ApiError as exc:
        if exc.status != 404:
            raise
        try:
            found, kind = client.get_run(key), "run"
        except ApiError as run_exc:
            if run_exc.status != 404:
                raise
            fail(f"ccq: no session or run {key}")
    if as_json:
        click.echo(json.dumps({kind: found}, indent=2))
    elif kind == "session":
        click.echo(session_details(found, datetime.now().astimezone(), stdout_color()))
    else:
        click.echo(run_details(found, stdout_color()))


@click.command("stop")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@uses_api
def stop_command(client: ApiClient, session_id: uuid.UUID) -> None:
    """Stop a session and its descendants: pending runs are cancelled, containers stop
    (resumable)."""
    reply = client.stop_session(str(session_id))
    session = reply["session"]
    others = [s for s in reply.get("stopped", []) if s != session["id"]]
    click.echo(
        f"session {session['id']}: {session['status']}{_and_descendants(others, 'stopped')} "
        "(a new prompt resumes it)"
    )


@click.command("rm")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@uses_api
def rm_command(client: ApiClient, session_id: uuid.UUID) -> None:
    """Delete a session and its descendants: history, containers and files."""
    deleted = client.delete_session(str(session_id))
    descendants = deleted.get("descendants", [])
    click.echo(
        f"session {deleted.get('deleted', session_id)}: deleted"
        + _and_descendants(descendants, "deleted")
    )


def _and_descendants(ids: list[str], what: str) -> str:
    """``, and 2 descendants stopped`` (nothing when there are none)."""
    if not ids:
        return ""
    return f", and {len(ids)} descendant{'s' if len(ids) != 1 else ''} {what}"
