"""What every client command shares: the client in ``ctx.obj``, and failing in one line.

The ``ccq`` group's ``--api-url``/``--token`` build the client once, on first use, into
``ctx.obj``. Every client command takes the same two options too (``ccq run X --token T``
has always worked), and they set the same object before the client is built.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Concatenate, NoReturn, ParamSpec, TypeVar

import click

from cli.render import format_api_error, format_unreachable
from client import ApiClient, ApiError, ApiUnreachable, ConfigError, TailError, resolve
from client.config import MissingToken

P = ParamSpec("P")
R = TypeVar("R")

BEARER_HELP = "Bearer JWT [CCQ_TOKEN]; default: a dev token if CCQ_JWT_SECRET is set."
API_URL_HELP = "The ccq API [CCQ_API_URL]; default: http://CCQ_API_HOST:CCQ_API_PORT."


class ClientSource:
    """``ctx.obj`` of the ``ccq`` group: where the API is, and the client, made once."""

    def __init__(self, api_url: str | None = None, token: str | None = None) -> None:
        self.api_url, self.token = api_url, token
        self._client: ApiClient | None = None

    @property
    def client(self) -> ApiClient:
        """The client (read from the environment and ccq's dotenv file what the options
        left open).

        A missing token is a usage error (exit 2, with the usage line); a bad
        ``CCQ_ENV_FILE`` stops with its message (exit 2), as the server's commands do.
        """
        if self._client is None:
            try:
                config = resolve(self.api_url, self.token)
            except MissingToken as exc:
                raise click.UsageError(str(exc)) from None
            except ConfigError as exc:
                fail(f"ccq: {exc}", 2)
            self._client = ApiClient(config.api_url, config.token)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def source(ctx: click.Context) -> ClientSource:
    """The group's object, made here when a command runs without the group (tests)."""
    root = ctx.find_root()
    if not isinstance(root.obj, ClientSource):
        root.obj = ClientSource()
        root.call_on_close(root.obj.close)
    return root.obj


def _set(attribute: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            setattr(source(ctx), attribute, value)

    return callback


def api_options(command: Callable[P, R]) -> Callable[P, R]:
    """--api-url and --token after a command's name, as before the group had them."""
    command = click.option(
        "--token", metavar="JWT", expose_value=False, callback=_set("token"), help=BEARER_HELP
    )(command)
    return click.option(
        "--api-url",
        metavar="URL",
        expose_value=False,
        callback=_set("api_url"),
        help=API_URL_HELP,
    )(command)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def pass_client(command: Callable[Concatenate[ApiClient, P], R]) -> Callable[P, R]:
    """Hand the command the client; its failures become one message on stderr and exit 1,
    never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        client = source(click.get_current_context()).client
        try:
            return command(client, *args, **kwargs)
        except ApiError as exc:
            fail(format_api_error(exc))
        except ApiUnreachable as exc:
            fail(format_unreachable(exc.url, exc.reason))
        except TailError as exc:
            fail(f"ccq: {exc}")

    return wrapper


def uses_api(command: Callable[Concatenate[ApiClient, P], R]) -> Callable[P, R]:
    """A client command: --api-url/--token after its name, and the client handed in."""
    return api_options(pass_client(command))


def json_option(command: Callable[P, R]) -> Callable[P, R]:
    """--json: the API's answer as it is, for scripts."""
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")(command)


def page_options(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """--limit, --all and --json of a list command (``what``: "Sessions", "Batches")."""

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        command = json_option(command)
        command = click.option(
            "--all", "all_pages", is_flag=True, help="Follow the pages to the end."
        )(command)
        return click.option(
            "--limit",
            type=click.IntRange(1, 200),
            default=50,
            show_default=True,
            help=f"{what} per page.",
        )(command)

    return decorate


def more_pages(cursor: str | None, limit: int) -> None:
    """Say on stderr that a list goes on past what was shown."""
    if cursor:
        click.echo(f"(more: --all, or --limit above {limit})", err=True)


def notice(message: str) -> None:
    """A word about the stream on stderr (it broke, it is back), apart from the output."""
    click.echo(f"ccq: {message}", err=True)
