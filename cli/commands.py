"""The `ccq` client commands: run prompts, follow them and manage sessions via the API.

`run`, `send`, `tail`, `sessions`, `show`, `cancel`, `stop`, `rm`, `children`,
`fanout` and `batch` (cli/batch.py) talk to the API only (HTTP, and WebSockets for live
tails; never the database or Docker), so they work from any machine that can reach it.
What they print is formatted by the pure functions in cli/render.py; live tails are
followed by cli/tail.py.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn, ParamSpec, Protocol, TypeVar

import click

from cli.client import MAX_WAIT_SECONDS, ApiClient, ApiError, ApiUnreachable, JsonObject
from cli.render import (
    RUN_FINISHED,
    TailView,
    children_tree,
    fanout_child_done,
    fanout_children_done,
    fanout_started,
    format_api_error,
    format_unreachable,
    run_details,
    run_summary,
    session_details,
    sessions_table,
)
from cli.tail import Follower, Kind, TailError, TailTimeout
from orchestrator.settings import Settings, load_settings

P = ParamSpec("P")
R = TypeVar("R")

FINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
POLL_FIRST, POLL_MAX = 0.2, 1.0


# --- connecting -----------------------------------------------------------------------


def _settings() -> Settings:
    """The `ccq` group's lazily read settings, or fresh ones outside that group."""
    obj = click.get_current_context().find_root().obj
    settings = getattr(obj, "settings", None)
    return settings if isinstance(settings, Settings) else load_settings()


def _token(token: str | None) -> str:
    """--token / CCQ_TOKEN, else a dev token where this machine holds the JWT secret."""
    if token:
        return token
    settings = _settings()
    if settings.jwt_secret is None:
        raise click.UsageError(
            "no API token: pass --token or set CCQ_TOKEN "
            "(`ccq token --sub NAME` mints one where CCQ_JWT_SECRET is set)"
        )
    from orchestrator.auth.owner_tokens import mint_token

    return mint_token(settings, "dev")


def api_options(command: Callable[P, R]) -> Callable[P, R]:
    """--api-url and --token, shared by every client command."""
    command = click.option(
        "--token",
        envvar="CCQ_TOKEN",
        metavar="JWT",
        default=None,
        help="Bearer JWT [CCQ_TOKEN]; default: a dev token if CCQ_JWT_SECRET is set.",
    )(command)
    return click.option(
        "--api-url",
        envvar="CCQ_API_URL",
        metavar="URL",
        default=None,
        help="The ccq API [CCQ_API_URL]; default: http://CCQ_API_HOST:CCQ_API_PORT.",
    )(command)


def api_client(api_url: str | None, token: str | None) -> ApiClient:
    return ApiClient(api_url or _settings().api_url, _token(token))


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def reports_api_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the client's exceptions into one message on stderr and exit 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            fail(format_api_error(exc))
        except ApiUnreachable as exc:
            fail(format_unreachable(exc.url, exc.reason))
        except TailError as exc:
            fail(f"ccq: {exc}")

    return wrapper


def stdout_color() -> bool:
    return sys.stdout.isatty()


def stderr_color() -> bool:
    return sys.stderr.isatty()


# --- waiting for a run ----------------------------------------------------------------


class _StillRunning(Exception):
    def __init__(self, run: JsonObject) -> None:
        super().__init__(run["id"])
        self.run = run


class _Deadline:
    """The --timeout budget; ``None`` waits as long as the run takes (the server's
    watchdogs end every run)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def _pause(delay: float, deadline: _Deadline) -> float:
    """Sleep before the next poll (no longer than the deadline allows); the next delay."""
    remaining = deadline.remaining()
    time.sleep(delay if remaining is None or remaining <= 0 else min(delay, remaining))
    return min(delay * 1.5, POLL_MAX)


def _poll_run(client: ApiClient, run: JsonObject, deadline: _Deadline) -> JsonObject:
    delay = POLL_FIRST
    while run["status"] not in FINAL_RUN_STATUSES:
        if deadline.passed():
            raise _StillRunning(run)
        delay = _pause(delay, deadline)
        run = client.get_run(run["id"])
    return run


def _notice(message: str) -> None:
    """A word about the stream on stderr (it broke, it is back), apart from the output."""
    click.echo(f"ccq: {message}", err=True)


def _follower(client: ApiClient, kind: Kind, object_id: str, after: str | None = None) -> Follower:
    return Follower(client.base_url, client.token, kind, object_id, after=after, notify=_notice)


def _stream_run(
    client: ApiClient,
    run: JsonObject,
    deadline: _Deadline,
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
        _follower(client, Kind.RUN, run["id"]).follow(show, deadline=deadline.end)
    except TailTimeout:
        raise _StillRunning(client.get_run(run["id"])) from None
    finally:
        if text := view.close():
            write(text)
    # The final event is published once the run's final state is committed.
    return _poll_run(client, client.get_run(run["id"]), deadline)


def _echo_writer(err: bool) -> Callable[[str], None]:
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


def _finish(
    client: ApiClient, run: JsonObject, options: WaitOptions, deadline: _Deadline
) -> NoReturn:
    """Wait for the run, print it, exit 0 if it succeeded and 1 otherwise."""
    try:
        if options.stream:
            color = stdout_color() and not options.as_json
            write = _echo_writer(err=options.as_json)  # --json keeps stdout for the JSON
            run = _stream_run(client, run, deadline, write, color)
        else:
            run = _poll_run(client, run, deadline)
    except _StillRunning as exc:
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


def _read_prompt(prompt: str) -> str:
    """`-` means the prompt comes on stdin (without the newline that ends the input)."""
    if prompt != "-":
        return prompt
    return sys.stdin.read().removesuffix("\n")


# --- commands -------------------------------------------------------------------------


@click.command("run")
@click.argument("prompt")
@click.option("--model", metavar="MODEL", default=None, help="The model for this session.")
@click.option(
    "--max-turns", type=int, metavar="N", default=None, help="At most N agent turns per run."
)
@click.option(
    "--max-budget-usd",
    type=float,
    metavar="USD",
    default=None,
    help="Spend at most USD dollars per run.",
)
@click.option(
    "--allowed-tool",
    "allowed_tools",
    metavar="TOOL",
    multiple=True,
    help="Allow TOOL without asking (repeatable).",
)
@click.option(
    "--disallowed-tool",
    "disallowed_tools",
    metavar="TOOL",
    multiple=True,
    help="Forbid TOOL (repeatable).",
)
@click.option(
    "--append-system-prompt", metavar="TEXT", default=None, help="Text added to the system prompt."
)
@wait_options
@api_options
@reports_api_errors
def run_command(
    prompt: str,
    model: str | None,
    max_turns: int | None,
    max_budget_usd: float | None,
    allowed_tools: tuple[str, ...],
    disallowed_tools: tuple[str, ...],
    append_system_prompt: str | None,
    stream: bool,
    as_json: bool,
    timeout: float | None,
    api_url: str | None,
    token: str | None,
) -> None:
    """Start a session with PROMPT (`-` reads stdin), wait, and print the answer."""
    body: JsonObject = {
        "prompt": _read_prompt(prompt),
        "model": model,
        "max_turns": max_turns,
        "max_budget_usd": max_budget_usd,
        "append_system_prompt": append_system_prompt,
        "allowed_tools": list(allowed_tools) or None,
        "disallowed_tools": list(disallowed_tools) or None,
    }
    with api_client(api_url, token) as client:
        created = client.create_session({k: v for k, v in body.items() if v is not None})
        run = created.get("run")
        if not run:  # only an idempotent replay answers without a run, and we send no key
            fail(f"ccq: session {created['session']['id']} was created without a run")
        _finish(client, run, WaitOptions(stream, as_json, timeout), _Deadline(timeout))


@click.command("send")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@click.argument("prompt")
@wait_options
@api_options
@reports_api_errors
def send_command(
    session_id: uuid.UUID,
    prompt: str,
    stream: bool,
    as_json: bool,
    timeout: float | None,
    api_url: str | None,
    token: str | None,
) -> None:
    """Send PROMPT (`-` reads stdin) to SESSION, wait, and print the answer."""
    text = _read_prompt(prompt)
    deadline = _Deadline(timeout)
    with api_client(api_url, token) as client:
        # Without -s the API itself waits (one request for a short run); -s must not wait.
        wait = None if stream else deadline.remaining() or MAX_WAIT_SECONDS
        run = client.queue_run(str(session_id), text, wait=wait)
        _finish(client, run, WaitOptions(stream, as_json, timeout), deadline)


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
@api_options
@reports_api_errors
def tail_command(
    object_id: uuid.UUID, from_start: bool, as_json: bool, api_url: str | None, token: str | None
) -> None:
    """Follow a run to its end, or a session until Ctrl-C, as its events happen.

    The connection is resumed by itself, from the last event, if it breaks. A run's tail
    exits 0 if the run succeeded and 1 otherwise.
    """
    key = str(object_id)
    with api_client(api_url, token) as client:
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
                _notice(f"following session {key} from {start} (Ctrl-C to stop)")

        follower = _follower(client, kind, key, after="0-0" if session and from_start else None)
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
    fail(f"ccq: no session or run {key}")


@click.command("sessions")
@click.option(
    "--status",
    type=click.Choice(["starting", "idle", "running", "stopped", "failed"]),
    default=None,
    help="Only sessions in this state.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 200),
    default=50,
    show_default=True,
    help="Sessions per page.",
)
@click.option("--all", "all_pages", is_flag=True, help="Follow the pages to the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@api_options
@reports_api_errors
def sessions_command(
    status: str | None,
    limit: int,
    all_pages: bool,
    as_json: bool,
    api_url: str | None,
    token: str | None,
) -> None:
    """List your sessions, newest first."""
    sessions: list[JsonObject] = []
    cursor: str | None = None
    with api_client(api_url, token) as client:
        while True:
            page = client.list_sessions(status=status, limit=limit, cursor=cursor)
            sessions += page.get("sessions", [])
            cursor = page.get("next_cursor")
            if not (all_pages and cursor):
                break
    if as_json:
        click.echo(json.dumps({"sessions": sessions, "next_cursor": cursor}, indent=2))
        return
    now = datetime.now().astimezone()
    click.echo(sessions_table(sessions, now, stdout_color()))
    if cursor:
        click.echo(f"(more: --all, or --limit above {limit})", err=True)


@click.command("show")
@click.argument("object_id", metavar="ID", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@api_options
@reports_api_errors
def show_command(
    object_id: uuid.UUID, as_json: bool, api_url: str | None, token: str | None
) -> None:
    """Show a session, or a run (ID is tried as a session first)."""
    key = str(object_id)
    with api_client(api_url, token) as client:
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


@click.command("cancel")
@click.argument("run_id", metavar="RUN", type=click.UUID)
@api_options
@reports_api_errors
def cancel_command(run_id: uuid.UUID, api_url: str | None, token: str | None) -> None:
    """Cancel a run: a queued one never starts, a running one is killed."""
    with api_client(api_url, token) as client:
        run = client.cancel_run(str(run_id))
    # A running run is only flagged here; its worker kills the CLI and ends it cancelled.
    state = "cancelled" if run["status"] == "cancelled" else "cancelling (it was running)"
    click.echo(f"run {run['id']}: {state}")


@click.command("stop")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@api_options
@reports_api_errors
def stop_command(session_id: uuid.UUID, api_url: str | None, token: str | None) -> None:
    """Stop a session and its descendants: pending runs are cancelled, containers stop
    (resumable)."""
    with api_client(api_url, token) as client:
        reply = client.stop_session(str(session_id))
    session = reply["session"]
    others = [s for s in reply.get("stopped", []) if s != session["id"]]
    click.echo(
        f"session {session['id']}: {session['status']}{_and_descendants(others, 'stopped')} "
        "(a new prompt resumes it)"
    )


@click.command("rm")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@api_options
@reports_api_errors
def rm_command(session_id: uuid.UUID, api_url: str | None, token: str | None) -> None:
    """Delete a session and its descendants: history, containers and files."""
    with api_client(api_url, token) as client:
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


# --- children and fan-out -------------------------------------------------------------

FANOUT_POLL_FIRST, FANOUT_POLL_MAX = 0.5, 2.0
# A fan-out should get its follow-up run as it is marked finished; one seen finished
# without it gets this long to show it before the parent is taken as not resumed (so a
# fan-out the API could not resume never keeps `ccq fanout -f` waiting for ever).
FOLLOWUP_GRACE = 10.0


@click.command("children")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@api_options
@reports_api_errors
def children_command(
    session_id: uuid.UUID, as_json: bool, api_url: str | None, token: str | None
) -> None:
    """Show SESSION's tree of child sessions: states, last runs and costs."""
    with api_client(api_url, token) as client:
        tree = client.children(str(session_id), recursive=True)
    if as_json:
        click.echo(json.dumps(tree, indent=2))
        return
    # On a terminal each line fits its width; piped, results are cut at a fixed length.
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    click.echo(children_tree(tree, stdout_color(), width))


def _nonempty_prompts(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """An empty --prompt would cost a child and a run for nothing: refuse it up front."""
    for value in values:
        if not value.strip():
            raise click.BadParameter("a prompt must not be empty", ctx, param)
    return values


def _nonempty_then(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("the follow-up prompt must not be empty", ctx, param)
    return value


def _prompt_files(paths: tuple[str, ...]) -> list[str]:
    """One prompt per --prompt-file, the whole file (without the newline that ends it);
    `-` is stdin, which can be read only once."""
    hint = "'--prompt-file'"
    if paths.count("-") > 1:
        raise click.BadParameter("`-` (stdin) can be given only once", param_hint=hint)
    prompts = []
    for path in paths:
        name = "stdin" if path == "-" else path
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise click.BadParameter(f"{name} is not UTF-8 text", param_hint=hint) from None
        except OSError as exc:
            raise click.BadParameter(f"{name}: {exc.strerror}", param_hint=hint) from None
        if not text.strip():
            raise click.BadParameter(f"{name} holds no prompt (it is empty)", param_hint=hint)
        prompts.append(text.removesuffix("\n"))
    return prompts


class FanoutSource(Protocol):
    """Where a fan-out's progress is read (an :class:`ApiClient`; a stub in tests)."""

    def get_fanout(self, fanout_id: str) -> JsonObject: ...


def await_children(
    source: FanoutSource,
    answer: JsonObject,
    say: Callable[[str], None],
    *,
    color: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[JsonObject, list[JsonObject]]:
    """Poll a fan-out until its parent's follow-up run exists or it was cancelled; ``say``
    one line per child when its run ends. Return the last fan-out and children read.

    Children run for minutes and each poll reads the whole fan-out, so the polls back off
    from ``FANOUT_POLL_FIRST`` to ``FANOUT_POLL_MAX`` seconds.
    """
    fanout, children = answer["fanout"], list(answer.get("children") or [])
    total = len(fanout.get("child_ids") or children)
    told: set[str] = set()
    delay = FANOUT_POLL_FIRST
    finished_since: float | None = None
    while True:
        for child in children:
            run = child.get("last_run") or {}
            if child["id"] not in told and run.get("status") in FINAL_RUN_STATUSES:
                told.add(child["id"])
                say(fanout_child_done(child, len(told), total, color))
        if fanout.get("followup_run_id") or fanout.get("status") == "cancelled":
            return fanout, children
        if fanout.get("status") == "finished":
            finished_since = clock() if finished_since is None else finished_since
            if clock() - finished_since >= FOLLOWUP_GRACE:
                return fanout, children
        sleep(delay)
        delay = min(delay * 1.5, FANOUT_POLL_MAX)
        state = source.get_fanout(fanout["id"])
        fanout, children = state["fanout"], list(state.get("children") or [])


def _follow_fanout(client: ApiClient, answer: JsonObject, as_json: bool) -> NoReturn:
    """Show the children finishing, then the parent's follow-up run as `ccq run -s`
    does, and exit as it does: 0 if that run succeeded, 1 otherwise, 130 on Ctrl-C."""
    fanout_id = answer["fanout"]["id"]

    def say(line: str) -> None:
        click.echo(line, err=True)

    try:
        fanout, children = await_children(client, answer, say, color=stderr_color())
        say(fanout_children_done(fanout, children))
        run_id = fanout.get("followup_run_id")
        if not run_id:
            sys.exit(1)
        run = client.get_run(run_id)
    except KeyboardInterrupt:
        fail(f"\nccq: stopped following; fanout {fanout_id} goes on", 130)
    _finish(client, run, WaitOptions(stream=True, as_json=as_json, timeout=None), _Deadline(None))


@click.command("fanout")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@click.option(
    "--prompt",
    "prompts",
    metavar="TEXT",
    multiple=True,
    callback=_nonempty_prompts,
    help="One child's prompt (repeatable: one child each).",
)
@click.option(
    "--prompt-file",
    "prompt_files",
    metavar="FILE",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="A file holding one child's prompt (repeatable; `-` reads stdin).",
)
@click.option(
    "--then",
    metavar="TEXT",
    default=None,
    callback=_nonempty_then,
    help="SESSION's prompt once every child finished (their results come with it); "
    "default: the server's, asking to use the results and answer.",
)
@click.option("--model", metavar="MODEL", default=None, help="The children's model.")
@click.option(
    "--max-turns",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="At most N agent turns per child run.",
)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Show children as they finish, then SESSION's follow-up run as it happens.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the API's JSON (with -f: the follow-up run, finished).",
)
@api_options
@reports_api_errors
def fanout_command(
    session_id: uuid.UUID,
    prompts: tuple[str, ...],
    prompt_files: tuple[str, ...],
    then: str | None,
    model: str | None,
    max_turns: int | None,
    follow: bool,
    as_json: bool,
    api_url: str | None,
    token: str | None,
) -> None:
    """Fan SESSION out to one new child session per prompt; once they all finished,
    SESSION is resumed with the --then prompt and their results.

    The --prompt texts come first, then the --prompt-file ones, each in the order given.
    Without -f, the fan-out and each child's ID and run are printed. With -f, those and
    each child's outcome go to stderr, the follow-up run's events to stdout; the exit
    status is the follow-up run's: 0 if it succeeded, 1 otherwise (130 on Ctrl-C, the
    fan-out goes on).
    """
    texts = [*prompts, *_prompt_files(prompt_files)]
    if not texts:
        raise click.UsageError(
            "give at least one child prompt: --prompt TEXT or --prompt-file FILE"
        )
    with api_client(api_url, token) as client:
        answer = client.fanout(str(session_id), texts, then, model=model, max_turns=max_turns)
        if as_json and not follow:
            click.echo(json.dumps(answer, indent=2))
        elif not follow:
            click.echo(fanout_started(answer))
        else:
            click.echo(fanout_started(answer), err=True)
            _follow_fanout(client, answer, as_json)


COMMANDS = (
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
)


def register(group: click.Group) -> None:
    """Add the client commands to the `ccq` group (called from cli/main.py)."""
    from cli.batch import batch_group  # cli/batch.py builds on this module's helpers

    for command in (*COMMANDS, batch_group):
        group.add_command(command)
