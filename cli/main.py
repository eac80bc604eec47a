"""The ``ccq`` command: the client commands, and the server's found by entry point.

The client commands (cli/runs.py, sessions.py, tail.py, children.py, batches.py) talk
to the API only, through the ``client`` package. The server's commands (``ccq api``,
``worker``, ``image``, ``token``, …) live in ``ops/`` and join the group through the
``ccq.commands`` entry points, so nothing here imports the server.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from cli.batches import batch_group
from cli.children import children_command, fanout_command
from cli.context import API_URL_HELP, BEARER_HELP, ClientSource
from cli.runs import cancel_command, run_command, send_command
from cli.sessions import rm_command, sessions_command, show_command, stop_command
from cli.tail import tail_command

ENTRY_POINT_GROUP = "ccq.commands"


@click.group()
@click.option("--api-url", metavar="URL", default=None, help=API_URL_HELP)
@click.option("--token", metavar="JWT", default=None, help=BEARER_HELP)
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, token: str | None) -> None:
    """ccq: run Claude Code sessions at scale."""
    ctx.obj = ClientSource(api_url, token)
    ctx.call_on_close(ctx.obj.close)


CLIENT_COMMANDS = (
    run_command,
    send_command,
    tail_command,
    sessions_command,
    show_command,
    cancel_command,
    stop_command,
    rm_command,
    children_command,
    fanout_command,
    batch_group,
)


def add_commands(group: click.Group) -> None:
    """The client commands, then every command an installed package offers under
    ``ccq.commands`` (ccq's own: the server's, from ops/)."""
    for command in CLIENT_COMMANDS:
        group.add_command(command)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        command = entry.load()
        if isinstance(command, click.Command):
            group.add_command(command, entry.name)


add_commands(cli)


def main() -> None:
    cli(standalone_mode=True)


if __name__ == "__main__":
    main()
