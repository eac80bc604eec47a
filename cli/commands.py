"""The `ccq` client commands: run prompts and manage sessions through the HTTP API.

`run`, `send`, `sessions`, `show`, `cancel`, `stop` and `rm` talk to the API only (never
to the database or Docker), so they work from any machine that can reach it. The
formatting functions at the top are pure (dicts in, strings out) so they are unit-tested
without a server; the commands below them do the I/O.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from cli.client import MAX_WAIT_SECONDS, ApiClient, ApiError, ApiUnreachable, JsonObject
from orchestrator.settings import Settings, load_settings

P = ParamSpec("P")
R = TypeVar("R")

FINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
EVENTS_PAGE = 500
POLL_FIRST, POLL_MAX = 0.2, 1.0
FINISH_GRACE = 10.0
TOOL_INPUT_CHARS = 200
TOOL_RESULT_CHARS = 160

_STATUS_COLORS = {
    "succeeded": "green",
    "idle": "green",
    "queued": "cyan",
    "running": "cyan",
    "starting": "cyan",
    "cancelled": "yellow",
    "stopped": "yellow",
    "failed": "red",
    "timed_out": "red",
}


# --- pure formatting ------------------------------------------------------------------


def paint(text: str, color: bool, **styles: Any) -> str:
    """``click.style`` only when colors are on, so piped output stays plain text."""
    return click.style(text, **styles) if color else text


def paint_status(status: str, color: bool) -> str:
    return paint(status, color, fg=_STATUS_COLORS.get(status))


def format_cost(usd: float | None) -> str:
    if usd is None:
        return "-"
    return "$0" if usd == 0 else f"${usd:.4f}"


def format_duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def format_age(iso: str | None, now: datetime) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago``: a table wants the gist, not a timestamp."""
    if not iso:
        return "-"
    then = datetime.fromisoformat(iso)
    if then.tzinfo is None:  # the API writes UTC; be lenient with a naive timestamp
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def format_time(iso: str | None) -> str:
    """An API timestamp as ``2026-01-31 12:00:00 UTC`` (whole seconds, always UTC)."""
    if not iso:
        return "-"
    then = datetime.fromisoformat(iso)
    if then.tzinfo is not None:
        then = then.astimezone(UTC)
    return then.strftime("%Y-%m-%d %H:%M:%S UTC")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def format_api_error(error: ApiError) -> str:
    """``ccq: <message>`` then one indented line per detail the message does not repeat."""
    lines = [f"ccq: {error.message}"]
    details = error.details
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and "field" in item:
                line = f"{item['field']}: {item.get('reason', '')}"
                if line != error.message:
                    lines.append(f"  {line}")
    elif isinstance(details, dict):
        lines += [f"  {key}: {value}" for key, value in details.items()]
    if error.status == 401:
        lines.append("  (pass --token or set CCQ_TOKEN; `ccq token --sub NAME` mints one)")
    return "\n".join(lines)


def format_unreachable(url: str, reason: str) -> str:
    return f"ccq: cannot reach the ccq API at {url} ({reason}; is `make up` running?)"


def run_summary(run: JsonObject, color: bool = False) -> str:
    """One line for stderr after a run: what `ccq send` needs next, and what it cost."""
    turns = run.get("num_turns")
    parts = [
        f"session {run['session_id']}",
        f"run {run['id']} {paint_status(run['status'], color)}",
        format_cost(run.get("total_cost_usd")),
        _plural(turns, "turn") if isinstance(turns, int) else "- turns",
        format_duration(run.get("duration_ms")),
    ]
    line = "  ".join(parts)
    if run.get("error"):
        line += "\n" + paint(f"error: {run['error']}", color, fg="red")
    return line


def sessions_table(sessions: list[JsonObject], now: datetime, color: bool = False) -> str:
    """ID, STATUS, RUNS, COST, LAST ACTIVE; padded before styling so columns line up."""
    if not sessions:
        return "no sessions"
    header = ("ID", "STATUS", "RUNS", "COST", "LAST ACTIVE")
    rows = [
        (
            s["id"],
            s["status"],
            str(s.get("runs_count", 0)),
            format_cost(s.get("total_cost_usd")),
            format_age(s.get("last_active_at") or s.get("created_at"), now),
        )
        for s in sessions
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...], styled: bool) -> str:
        padded = [c.ljust(w) for c, w in zip(cells, widths, strict=True)]
        if styled:
            padded[1] = paint_status(cells[1], color) + " " * (widths[1] - len(cells[1]))
        return "  ".join(padded).rstrip()

    head = paint(line(header, styled=False), color, bold=True)
    return "\n".join([head, *(line(r, styled=True) for r in rows)])


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in pairs)
    return [f"  {k.ljust(width)}  {v}" for k, v in pairs]


def run_details(run: JsonObject, color: bool = False) -> str:
    """A run in readable form: state, cost, timings, error, then its result text."""
    status = paint_status(run["status"], color)
    # The CLI says "success" even for a run that failed on a model API error: noise.
    if run.get("subtype") and run["subtype"] != "success":
        status += f" ({run['subtype']})"
    pairs = [
        ("status", status),
        ("session", run["session_id"]),
        ("cost", format_cost(run.get("total_cost_usd"))),
        ("turns", str(run.get("num_turns") if run.get("num_turns") is not None else "-")),
        ("duration", format_duration(run.get("duration_ms"))),
        ("created", format_time(run.get("created_at"))),
        ("started", format_time(run.get("started_at"))),
        ("finished", format_time(run.get("finished_at"))),
    ]
    if run.get("attempts", 1) not in (None, 0, 1):
        pairs.append(("attempts", str(run["attempts"])))
    if run.get("error"):
        pairs.append(("error", paint(str(run["error"]), color, fg="red")))
    lines = [paint(f"run {run['id']} (#{run.get('seq', '?')})", color, bold=True), *_fields(pairs)]
    if run.get("result"):
        lines += ["", *run["result"].splitlines()]
    return "\n".join(lines)


def session_details(session: JsonObject, now: datetime, color: bool = False) -> str:
    """A session in readable form, then its last run's summary if it has one."""
    pairs = [
        ("status", paint_status(session["status"], color)),
        ("model", session.get("model") or "default"),
        ("runs", str(session.get("runs_count", 0))),
        ("cost", format_cost(session.get("total_cost_usd"))),
        ("created", format_time(session.get("created_at"))),
        ("last active", format_age(session.get("last_active_at"), now)),
    ]
    for key in ("parent_id", "batch_id"):
        if session.get(key):
            pairs.append((key.removesuffix("_id"), session[key]))
    for key in ("options", "metadata"):
        if session.get(key):
            pairs.append((key, _one_line(json.dumps(session[key], sort_keys=True), 200)))
    lines = [paint(f"session {session['id']}", color, bold=True), *_fields(pairs)]
    last = session.get("last_run")
    if last:
        lines += ["", "last " + run_details(last, color)]
    return "\n".join(lines)


@dataclass(frozen=True)
class StreamState:
    """What the event printer must remember between events.

    Attributes:
        mid_line: the output so far ends inside a line (inline text deltas), so the next
            whole line must start with a newline.
        streamed_text: text deltas arrived since the last ``assistant`` message, whose
            text blocks would only repeat them.
    """

    mid_line: bool = False
    streamed_text: bool = False


def _text_delta(data: JsonObject) -> str | None:
    event = data.get("event")
    if not isinstance(event, dict) or event.get("type") != "content_block_delta":
        return None
    delta = event.get("delta")
    if isinstance(delta, dict) and delta.get("type") == "text_delta":
        text = delta.get("text")
        return text if isinstance(text, str) else None
    return None


def _blocks(data: JsonObject) -> list[JsonObject]:
    message = data.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _tool_result_text(block: JsonObject) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return "" if content is None else str(content)


def event_lines(event: JsonObject, streamed_text: bool, color: bool = False) -> list[str]:
    """The whole lines an event shows (inline text deltas are not lines)."""
    kind, data = event.get("type"), event.get("data") or {}
    if kind == "assistant":
        lines = []
        for block in _blocks(data):
            if block.get("type") == "text" and not streamed_text and block.get("text"):
                lines.append(str(block["text"]))
            elif block.get("type") == "tool_use":
                args = _one_line(json.dumps(block.get("input", {})), TOOL_INPUT_CHARS)
                lines.append(paint(f"-> {block.get('name')} {args}", color, fg="cyan"))
        return lines
    if kind == "user":
        lines = []
        for block in _blocks(data):
            if block.get("type") == "tool_result":
                text = _one_line(_tool_result_text(block), TOOL_RESULT_CHARS)
                prefix = "<- error: " if block.get("is_error") else "<- "
                lines.append(paint(prefix + text, color, dim=True))
        return lines
    if kind == "system" and data.get("subtype") == "init":
        version, model = data.get("claude_code_version"), data.get("model")
        return [paint(f"Claude Code {version}, model {model}", color, dim=True)]
    if kind == "system" and data.get("subtype") == "api_retry":
        attempt, most = data.get("attempt", "?"), data.get("max_retries", "?")
        return [paint(f"model API retry {attempt}/{most}", color, fg="yellow")]
    if kind in ("ccq.stderr", "ccq.raw") and data.get("line"):
        return [paint(f"{kind.removeprefix('ccq.')}: {data['line']}", color, dim=True)]
    return []


def render_event(
    state: StreamState, event: JsonObject, color: bool = False
) -> tuple[StreamState, str]:
    """The text to write for one event (as is, no newline added) and the next state."""
    data = event.get("data") or {}
    if event.get("type") == "stream_event":
        text = _text_delta(data)
        if not text:
            return state, ""
        return StreamState(mid_line=not text.endswith("\n"), streamed_text=True), text
    lines = event_lines(event, state.streamed_text, color)
    out = "".join(line + "\n" for line in lines)
    ends_block = event.get("type") == "assistant"
    if state.mid_line and (lines or ends_block):
        out = "\n" + out
        state = replace(state, mid_line=False)
    if ends_block:
        state = replace(state, streamed_text=False)
    return state, out


def finish_stream(state: StreamState) -> str:
    """What ends the stream cleanly: a newline if it stopped inside a line."""
    return "\n" if state.mid_line else ""


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
    from orchestrator.auth import mint_token

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


def _client(api_url: str | None, token: str | None) -> ApiClient:
    return ApiClient(api_url or _settings().api_url, _token(token))


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def reports_api_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the client's exceptions into one message on stderr and exit 1, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            _fail(format_api_error(exc))
        except ApiUnreachable as exc:
            _fail(format_unreachable(exc.url, exc.reason))

    return wrapper


def _stdout_color() -> bool:
    return sys.stdout.isatty()


def _stderr_color() -> bool:
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
        self._end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())

    def passed(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end


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


class _Tail:
    """Pages a run's events and writes them as they arrive."""

    def __init__(self, client: ApiClient, run_id: str, write: Callable[[str], None]) -> None:
        self.client, self.run_id, self.write = client, run_id, write
        self.state = StreamState()
        self.after: str | None = None
        self.finished = False

    def drain(self, color: bool) -> int:
        """Write every event available now; return how many there were."""
        count = 0
        while True:
            page = self.client.run_events(self.run_id, after=self.after, limit=EVENTS_PAGE)
            events: list[JsonObject] = page.get("events", [])
            for event in events:
                self.state, text = render_event(self.state, event, color)
                if text:
                    self.write(text)
                self.finished = self.finished or event.get("type") == "ccq.run.finished"
            self.after = page.get("next_after") or self.after
            count += len(events)
            if len(events) < EVENTS_PAGE:
                return count

    def close(self) -> None:
        if text := finish_stream(self.state):
            self.write(text)
            self.state = StreamState()


def _stream_run(
    client: ApiClient,
    run: JsonObject,
    deadline: _Deadline,
    write: Callable[[str], None],
    color: bool,
) -> JsonObject:
    """Print the run's events until its ``ccq.run.finished`` event, then the finished run.

    The worker records the final status before its last events reach PostgreSQL, so a
    final status alone does not end the tail: it waits up to FINISH_GRACE seconds more
    for the finished event. A run that never started (cancelled while queued) has none.
    """
    tail = _Tail(client, run["id"], write)
    grace: _Deadline | None = None
    delay = POLL_FIRST
    try:
        while not tail.finished:
            if tail.drain(color):
                delay = POLL_FIRST
                continue
            if grace is None:
                run = client.get_run(run["id"])
                if run["status"] in FINAL_RUN_STATUSES:
                    if not run.get("started_at"):
                        return run
                    grace = _Deadline(FINISH_GRACE)
                elif deadline.passed():
                    raise _StillRunning(run)
            elif grace.passed():
                break
            delay = _pause(delay, grace or deadline)
    finally:
        tail.close()
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
            color = _stdout_color() and not options.as_json
            write = _echo_writer(err=options.as_json)  # --json keeps stdout for the JSON
            run = _stream_run(client, run, deadline, write, color)
        else:
            run = _poll_run(client, run, deadline)
    except _StillRunning as exc:
        still = exc.run
        _fail(
            f"ccq: run {still['id']} is still {still['status']} after {deadline.seconds:g}s; "
            f"it goes on (`ccq show {still['id']}`, `ccq cancel {still['id']}`)"
        )
    except KeyboardInterrupt:
        _fail(f"\nccq: stopped waiting; run {run['id']} goes on (`ccq cancel {run['id']}`)", 130)
    if options.as_json:
        click.echo(json.dumps(run, indent=2))
    else:
        if not options.stream and run.get("result"):
            # A failed run's result is the CLI's error text: stderr, off the pipeline.
            click.echo(run["result"], err=run["status"] != "succeeded")
        click.echo(run_summary(run, _stderr_color()), err=True)
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
    with _client(api_url, token) as client:
        created = client.create_session({k: v for k, v in body.items() if v is not None})
        run = created.get("run")
        if not run:  # only an idempotent replay answers without a run, and we send no key
            _fail(f"ccq: session {created['session']['id']} was created without a run")
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
    with _client(api_url, token) as client:
        # Without -s the API itself waits (one request for a short run); -s must not wait.
        wait = None if stream else deadline.remaining() or MAX_WAIT_SECONDS
        run = client.queue_run(str(session_id), text, wait=wait)
        _finish(client, run, WaitOptions(stream, as_json, timeout), deadline)


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
    with _client(api_url, token) as client:
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
    click.echo(sessions_table(sessions, now, _stdout_color()))
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
    with _client(api_url, token) as client:
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
                _fail(f"ccq: no session or run {key}")
    if as_json:
        click.echo(json.dumps({kind: found}, indent=2))
    elif kind == "session":
        click.echo(session_details(found, datetime.now().astimezone(), _stdout_color()))
    else:
        click.echo(run_details(found, _stdout_color()))


@click.command("cancel")
@click.argument("run_id", metavar="RUN", type=click.UUID)
@api_options
@reports_api_errors
def cancel_command(run_id: uuid.UUID, api_url: str | None, token: str | None) -> None:
    """Cancel a run: a queued one never starts, a running one is killed."""
    with _client(api_url, token) as client:
        run = client.cancel_run(str(run_id))
    # A running run is only flagged here; its worker kills the CLI and ends it cancelled.
    state = "cancelled" if run["status"] == "cancelled" else "cancelling (it was running)"
    click.echo(f"run {run['id']}: {state}")


@click.command("stop")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@api_options
@reports_api_errors
def stop_command(session_id: uuid.UUID, api_url: str | None, token: str | None) -> None:
    """Stop a session: its pending runs are cancelled, its container stops (resumable)."""
    with _client(api_url, token) as client:
        session = client.stop_session(str(session_id))
    click.echo(f"session {session['id']}: {session['status']} (a new prompt resumes it)")


@click.command("rm")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@api_options
@reports_api_errors
def rm_command(session_id: uuid.UUID, api_url: str | None, token: str | None) -> None:
    """Delete a session, its history, its container and its files."""
    with _client(api_url, token) as client:
        deleted = client.delete_session(str(session_id))
    click.echo(f"session {deleted.get('deleted', session_id)}: deleted")


COMMANDS = (
    run_command,
    send_command,
    sessions_command,
    show_command,
    cancel_command,
    stop_command,
    rm_command,
)


def register(group: click.Group) -> None:
    """Add the client commands to the `ccq` group (called from cli/main.py)."""
    for command in COMMANDS:
        group.add_command(command)
