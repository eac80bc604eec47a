"""The server's commands: `ccq api`, `gateway`, `worker`, `beat`, `flower`, `model-server`, `image`,
`network`, `db` and the dev helper `token`.

They read the server's settings and start or manage its processes, so they live apart
from the client commands (``cli/`` imports nothing of the server). The ``ccq`` group
finds them through the ``ccq.commands`` entry points in setup.cfg: an installed ccq
without the server's dependencies would simply not list them.

Every ``ccq`` invocation (``ccq run`` too) loads this module to list its commands, so each
command imports what it runs (Docker, Celery, the image builder) only when it runs.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, NoReturn, ParamSpec, TypeVar

import click

from orchestrator.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from orchestrator.runtime.containers import ContainerRuntime, SessionNetwork

P = ParamSpec("P")
R = TypeVar("R")


def _config_failure(exc: ConfigError) -> NoReturn:
    """A bad setting stops the command with its variable named (exit 2), no traceback."""
    click.echo(f"ccq: {exc}", err=True)
    sys.exit(2)


class Context:
    """Settings are read lazily so `ccq --help` works even with a broken environment; a
    bad one stops the command naming the variable (exit 2)."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ConfigError as exc:
                _config_failure(exc)
        return self._settings


def pass_context(command: Callable[Concatenate[Context, P], R]) -> Callable[P, R]:
    """Hand the command a :class:`Context` of its own (the ``ccq`` group's object is the
    client's, which these commands do not use)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return command(Context(), *args, **kwargs)

    return wrapper


@click.command()
@click.option("--sub", "subject", required=True, help="The owner the token speaks for.")
@click.option("--ttl", default=24 * 3600, show_default=True, type=click.IntRange(60, 366 * 86400))
@pass_context
def token(ctx: Context, subject: str, ttl: int) -> None:
    """Print a JWT the running stack accepts (HS256 with CCQ_JWT_SECRET)."""
    from orchestrator.auth.owner_tokens import AuthError, mint_token

    try:
        click.echo(mint_token(ctx.settings, subject, ttl))
    except AuthError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("model-server")
@click.option("--host", default=None, help="Bind address [CCQ_MODEL_SERVER_HOST].")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="[CCQ_MODEL_SERVER_PORT]")
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append every request received to this JSON-lines file.",
)
@pass_context
def model_server(ctx: Context, host: str | None, port: int | None, record: Path | None) -> None:
    """Serve the scripted Anthropic Messages API (tests, demo, benchmarks)."""
    from model_server.server import serve

    settings = ctx.settings
    serve(
        host or settings.model_server_host,
        settings.model_server_port if port is None else port,
        record,
    )


@click.command()
@pass_context
def image(ctx: Context) -> None:
    """Build the worker image if its inputs changed (a no-op otherwise)."""
    from worker_image.builder import ImageBuildError, ensure_from_settings

    try:
        result = ensure_from_settings(ctx.settings, log=click.echo)
    except ImageBuildError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "built" if result.built else "up to date"
    click.echo(f"{result.tag}: {verb} ({result.image_id[:19]}, inputs {result.inputs_hash[:12]})")


@click.group()
def network() -> None:
    """The Docker network session containers join, and their path to the API."""


def _session_network(settings: Settings) -> tuple[ContainerRuntime, SessionNetwork]:
    """The container runtime and the session network (made if missing), or a clear error."""
    from orchestrator.runtime.containers import ContainerError, ContainerRuntime
    from orchestrator.runtime.egress import session_network_policy

    runtime = ContainerRuntime()
    try:
        return runtime, runtime.ensure_network(
            settings.session_network_name, settings.instance, session_network_policy(settings)
        )
    except ContainerError as exc:
        raise click.ClickException(str(exc)) from None


@network.command("address")
@pass_context
def network_address(ctx: Context) -> None:
    """Make the session network if needed (isolated, with its firewall, unless
    CCQ_NETWORK_MODE=open); print the host's address on it.

    The gateway must listen there (CCQ_GATEWAY_HOST) for session containers to reach it.
    """
    _runtime, found = _session_network(ctx.settings)
    click.echo(found.gateway)


@network.command("remove")
@pass_context
def network_remove(ctx: Context) -> None:
    """Remove this instance's session networks and their firewall chains (those still
    in use stay); `make down` runs it after removing the session containers."""
    from orchestrator.runtime.containers import ContainerError, ContainerRuntime

    try:
        removed = ContainerRuntime().remove_networks(ctx.settings.instance)
    except ContainerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed {removed} session network(s)")


@network.command("check")
@click.option(
    "--url",
    "urls",
    multiple=True,
    metavar="URL",
    help="A health URL as containers see it, expected to answer 200 (repeatable; "
    "default: the gateway's /healthz at CCQ_CONTAINER_GATEWAY_URL).",
)
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.5, 60))
@pass_context
def network_check(ctx: Context, urls: tuple[str, ...], timeout: float) -> None:
    """Run a throw-away container on the session network and GET each URL from it."""
    settings = ctx.settings
    runtime, found = _session_network(settings)
    failed = False
    for url in urls or (settings.gateway_url_for_containers + "/healthz",):
        error = runtime.probe_from_container(
            settings.worker_image, found, url, settings.instance, timeout
        )
        if error is None:
            click.echo(f"{url}: answers from network {found.name} ({found.gateway})")
        else:
            click.echo(f"ccq: {error}", err=True)
            failed = True
    if failed:
        sys.exit(1)


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_context
def db_upgrade(ctx: Context, revision: str) -> None:
    """Migrate the schema up to REVISION (default: the newest)."""
    from orchestrator.db import migrate

    migrate.upgrade(ctx.settings.database_url, revision)
    click.echo(f"schema at {migrate.current_revision(ctx.settings.database_url)}")


@db.command("downgrade")
@click.argument("revision")
@pass_context
def db_downgrade(ctx: Context, revision: str) -> None:
    """Migrate the schema down to REVISION (`base` removes everything)."""
    from orchestrator.db import migrate

    migrate.downgrade(ctx.settings.database_url, revision)
    click.echo(f"schema at {migrate.current_revision(ctx.settings.database_url)}")


@click.command()
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--connections",
    default=2000,
    show_default=True,
    type=click.IntRange(10, 100_000),
    help="Open connections (live tails included) per worker process.",
)
@pass_context
def api(ctx: Context, workers: int, connections: int) -> None:
    """Serve the HTTP and WebSocket API (gunicorn, gevent workers)."""
    ctx.settings  # noqa: B018 - fail here, with the variable named, before replacing the process
    argv = ["--workers", str(workers), "--connections", str(connections)]
    # A fresh interpreter: gevent must patch the standard library before it is imported.
    os.execv(sys.executable, [sys.executable, "-m", "api.serve", *argv])  # noqa: S606


@click.command()
@pass_context
def gateway(ctx: Context) -> None:
    """Serve the session gateway: model proxy and ccq's MCP tools (the only process
    holding the Claude credential)."""
    from gateway.serve import serve

    serve(ctx.settings)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
def worker(ctx: Context, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`)."""
    from orchestrator.secrets import SecretStore
    from tasks.celery_app import make_celery

    try:  # a malformed secret stops the worker here, named, not its first run
        SecretStore.load(ctx.settings)
    except ConfigError as exc:
        _config_failure(exc)
    make_celery(ctx.settings).worker_main(["worker", *celery_args])


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
def beat(ctx: Context, celery_args: tuple[str, ...]) -> None:
    """Run Celery beat, the periodic scheduler (idle reaper and housekeeping)."""
    from tasks.celery_app import make_celery

    make_celery(ctx.settings).start(["beat", *celery_args])


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@pass_context
def flower(ctx: Context, flower_args: tuple[str, ...]) -> None:
    """Run Flower, the Celery monitoring UI: on CCQ_FLOWER_ADDRESS (loopback by default),
    and elsewhere only with a login (CCQ_FLOWER_BASIC_AUTH or Flower's --auth)."""
    from ops.flower import plan
    from tasks.celery_app import make_celery

    settings = ctx.settings
    try:
        launch = plan(settings, flower_args, os.environ)
    except ConfigError as exc:
        _config_failure(exc)
    os.environ.update(launch.env)  # the password stays out of the command line (`ps`)
    make_celery(settings).start(["flower", *launch.argv])


COMMANDS: tuple[click.Command, ...] = (
    token,
    model_server,
    image,
    network,
    db,
    api,
    worker,
    beat,
    flower,
)
