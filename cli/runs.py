"""`ccq run`, `ccq send` and `ccq cancel`: prompts in, answers out.

A run is waited for (cli/waiting.py) and printed: its result on stdout, a summary on
stderr, or its events as they happen with `-s`.
"""

from __future__ import annotations

import uuid

import click

from cli.context import fail, uses_api
from cli.waiting import (
    Deadline,
    WaitOptions,
    finish,
    read_prompt,
    wait_options,
)
from client import ApiClient, JsonObject
from client.http import MAX_WAIT_SECONDS


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
@uses_api
def run_command(
    client: ApiClient,
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
) -> None:
    """Start a session with PROMPT (`-` reads stdin), wait, and print the answer."""
    body: JsonObject = {
        "prompt": read_prompt(prompt),
        "model": model,
        "max_turns": max_turns,
        "max_budget_usd": max_budget_usd,
        "append_system_prompt": append_system_prompt,
        "allowed_tools": list(allowed_tools) or None,
        "disallowed_tools": list(disallowed_tools) or None,
    }
    created = client.create_session({k: v for k, v in body.items() if v is not None})
    run = created.get("run")
    if not run:  # only an idempotent replay answers without a run, and we send no key
        fail(f"ccq: session {created['session']['id']} was created without a run")
    finish(client, run, WaitOptions(stream, as_json, timeout), Deadline(timeout))


@click.command("send")
@click.argument("session_id", metavar="SESSION", type=click.UUID)
@click.argument("prompt")
@wait_options
@uses_api
def send_command(
    client: ApiClient,
    session_id: uuid.UUID,
    prompt: str,
    stream: bool,
    as_json: bool,
    timeout: float | None,
) -> None:
    """Send PROMPT (`-` reads stdin) to SESSION, wait, and print the answer."""
    text = read_prompt(prompt)
    deadline = Deadline(timeout)
    # Without -s the API itself waits (one request for a short run); -s must not wait.
    wait = None if stream else deadline.remaining() or MAX_WAIT_SECONDS
    run = client.queue_run(str(session_id), text, wait=wait)
    finish(client, run, WaitOptions(stream, as_json, timeout), deadline)


@click.command("cancel")
@click.argument("run_id", metavar="RUN", type=click.UUID)
@uses_api
def cancel_command(client: ApiClient, run_id: uuid.UUID) -> None:
    """Cancel a run: a queued one never starts, a running one is killed."""
    run = client.cancel_run(str(run_id))
    # A running run is only flagged here; its worker kills the CLI and ends it cancelled.
    state = "cancelled" if run["status"] == "cancelled" else "cancelling (it was running)"
    click.echo(f"run {run['id']}: {state}")
