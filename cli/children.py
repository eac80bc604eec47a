"""`ccq children` and `ccq fanout`: a session's tree of children, and fanning out to new
ones (followed with `-f` until the parent's follow-up run ends)."""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, Protocol

import click

from cli.console import stderr_color, stdout_color, stdout_tty
from cli.context import fail, json_option, uses_api
from cli.render_children import (
    children_tree,
    fanout_child_done,
    fanout_children_done,
    fanout_started,
)
from cli.waiting import FINAL_RUN_STATUSES, Deadline, WaitOptions, finish
from client import ApiClient, JsonObject

FANOUT_POLL_FIRST, FANOUT_POLL_MAX = 0.5, 2.0
# A fan-out should get its follow-up run as it is marked finished; one seen finished
# without it gets this long to show it before the parent is taken as not resumed (so a
# fan-out the API could not resume never keeps `ccq fanout -f` waiting for ever).
FOLLOWUP_GRACE = 10.0


@click.command("children")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@json_option
@uses_api
def children_command(client: ApiClient, session_id: uuid.UUID, as_json: bool) -> None:
    """Show SESSION's tree of child sessions: states, last runs and costs."""
    tree = client.children(str(session_id), recursive=True)
    if as_json:
        click.echo(json.dumps(tree, indent=2))
        return
    # On a terminal each line fits its width; piped, results are cut at a fixed length.
    width = shutil.get_terminal_size().columns if stdout_tty() else None
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
    finish(client, run, WaitOptions(stream=True, as_json=as_json, timeout=None), Deadline(None))


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
@uses_api
def fanout_command(
    client: ApiClient,
    session_id: uuid.UUID,
    prompts: tuple[str, ...],
    prompt_files: tuple[str, ...],
    then: str | None,
    model: str | None,
    max_turns: int | None,
    follow: bool,
    as_json: bool,
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
    answer = client.fanout(str(session_id), texts, then, model=model, max_turns=max_turns)
    if as_json and not follow:
        click.echo(json.dumps(answer, indent=2))
    elif not follow:
        click.echo(fanout_started(answer))
    else:
        click.echo(fanout_started(answer), err=True)
        _follow_fanout(client, answer, as_json)
