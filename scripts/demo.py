"""`make demo`: one session answers two prompts through ccq, the second resumed; then a
parent delegates to three child sessions and summarises their work; then a small batch
runs with a live progress bar and its results are exported.

Every prompt goes through the API (POST), becomes a Celery task, runs the real Claude
Code CLI in the session's container, and is tailed here live over the run's WebSocket
stream. The parent delegates through ccq's MCP tool `delegate` inside its container: a
Celery chord runs the children in parallel and resumes the parent with their results.
Runs against the scripted model server unless a Claude credential is set, then against
the real API. It talks to ccq through the `client` package, as any program would; on a
terminal rich styles the headings, in a CI log the lines are plain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from rich.console import Console

from client import ApiClient, ApiError, ApiUnreachable, ConfigError, Kind, TailTimeout, resolve
from client.config import read_environment

SCRIPTED = not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"))
OWNER = "demo"
RUN_DEADLINE = 600.0  # seconds a run may take before the demo gives up on it
CONSOLE = Console(highlight=False, soft_wrap=True)


def say(text: str, style: str | None = None) -> None:
    """A line of the story; ``style`` (rich's) shows only on a terminal."""
    CONSOLE.print(text, style=style, markup=False)


def step(text: str) -> None:
    """A numbered step's heading, after an empty line."""
    say("")
    say(text, "bold")


def tool_errors(event: dict[str, Any]) -> list[str]:
    """The text of each failed tool call an event reports (a ``user`` tool result)."""
    if event["type"] != "user":
        return []
    errors = []
    for block in event["data"].get("message", {}).get("content", []):
        if isinstance(block, dict) and block.get("type") == "tool_result" and block.get("is_error"):
            content = block.get("content")
            if isinstance(content, list):
                content = " ".join(str(part.get("text", "")) for part in content)
            errors.append(str(content))
    return errors


def describe(event: dict[str, Any]) -> str | None:
    """One readable line per event worth showing."""
    data, kind = event["data"], event["type"]
    if errors := tool_errors(event):
        return "tool error: " + " | ".join(errors)
    if kind == "system" and data.get("subtype") == "init":
        return f"init: Claude Code {data.get('claude_code_version')}, model {data.get('model')}"
    if kind == "assistant":
        parts = []
        for block in data.get("message", {}).get("content", []):
            if block.get("type") == "text":
                parts.append(block["text"])
            elif block.get("type") == "tool_use":
                parts.append(f"[tool {block['name']} {json.dumps(block['input'])}]")
        return "assistant: " + " ".join(parts) if parts else None
    if kind == "result":
        return f"result: {data.get('subtype')}, cost ${data.get('total_cost_usd', 0):.6f}"
    if kind.startswith("ccq."):
        return str(kind) + (f" ({data['status']})" if "status" in data else "")
    return None


def tail(api: ApiClient, run_id: str, errors: list[str] | None = None) -> dict[str, Any]:
    """Print the run's events live from its stream; return the finished run.

    The stream starts at the run's first event and closes after its last, so this sees
    the whole run even when it finished before the socket opened. Failed tool calls are
    added to ``errors``.
    """

    def show(event: dict[str, Any], _raw: str) -> None:
        if errors is not None:
            errors.extend(tool_errors(event))
        if (line := describe(event)) is not None:
            say(f"    {line}")

    try:
        api.follower(Kind.RUN, run_id).follow(show, deadline=time.monotonic() + RUN_DEADLINE)
    except TailTimeout:
        sys.exit(f"demo: run {run_id} did not finish within {RUN_DEADLINE:.0f} s")
    return api.get_run(run_id)


ANIMALS = {
    "octopuses": "An octopus has three hearts.",
    "honeybees": "Honeybees dance to tell each other where flowers are.",
    "tardigrades": "Tardigrades survive years without water.",
}


def delegation_prompt() -> str:
    """The parent's task: fan out one child per animal, then summarise."""
    if not SCRIPTED:
        return (
            "Find one surprising fact each about octopuses, honeybees and tardigrades. "
            "Call the ccq `delegate` tool once with three prompts, one per animal, each "
            "asking the child to write its fact to fact.txt and reply with the fact; then "
            "end your turn. When you are resumed, summarise the three facts in two sentences."
        )
    children = [
        f"Write a fact about {animal} to fact.txt. "
        + "[[tool Bash "
        + json.dumps({"command": f"echo '{fact}' | tee fact.txt"})
        + "]]"
        for animal, fact in ANIMALS.items()
    ]
    arguments = {"prompts": children, "then": "Summarise your children's facts."}
    return f"[[tool mcp__ccq__delegate {json.dumps(arguments)}]]"


def wait_for_followup(api: ApiClient, session_id: str, timeout: float = 600) -> str:
    """The follow-up run the fan-out queues on the parent once every child ended.

    Called after the delegating run ended, so its children exist already: none means
    the delegation never happened, and that is said at once.
    """
    deadline = time.monotonic() + timeout
    announced: set[str] = set()
    while time.monotonic() < deadline:
        children = api.children(session_id, recursive=False)["children"]
        if not children:
            sys.exit(f"demo: session {session_id} ended its run without any child session")
        for child in children:
            run = child["last_run"] or {}
            if (
                run.get("status") not in (None, "queued", "running")
                and child["id"] not in announced
            ):
                announced.add(child["id"])
                say(f"    child {child['id']}: {run['status']} -> {run.get('result')!r}")
        fanouts = {c["fanout_id"] for c in children if c["fanout_id"]}
        for fanout_id in fanouts:
            fanout = api.get_fanout(fanout_id)["fanout"]
            if fanout["followup_run_id"]:
                return str(fanout["followup_run_id"])
        time.sleep(0.5)
    sys.exit(f"demo: session {session_id} was not resumed within {timeout:.0f} s")


def delegate(api: ApiClient) -> bool:
    prompt = delegation_prompt()
    created = api.create_session({"prompt": prompt})
    parent_id = created["session"]["id"]
    step(f"[3] parent {parent_id} delegates to three children (MCP tool `delegate`)")
    errors: list[str] = []
    delegated = tail(api, created["run"]["id"], errors)
    if delegated["status"] != "succeeded" or (SCRIPTED and errors):
        # The children never started: say why now instead of waiting for them.
        cause = "; ".join(errors) or delegated.get("error") or delegated.get("result")
        sys.exit(f"demo: the parent could not delegate ({delegated['status']}): {cause}")
    say(f"  < {delegated['status']}; children running in parallel:")
    followup_id = wait_for_followup(api, parent_id)
    step(f"[4] the parent, resumed once with all three results (run {followup_id})")
    summary = tail(api, followup_id)
    say(f"  < {summary['status']}")
    step("[5] the tree: ccq children " + parent_id)
    ccq = os.path.join(os.path.dirname(sys.executable), "ccq")
    subprocess.run(
        [ccq, "children", parent_id],
        check=True,
        env={**os.environ, "CCQ_API_URL": api.base_url, "CCQ_TOKEN": api.token},
    )
    return bool(delegated["status"] == "succeeded" and summary["status"] == "succeeded")


BATCH_PROMPTS = [
    "Name a prime number.",
    "Name a colour of the rainbow.",
    "Name a planet.",
    "Name an ocean.",
    "Name a chemical element.",
    "Name a musical instrument.",
]


def batch(api: ApiClient) -> bool:
    """Submit a small batch with `ccq batch submit --wait`, then export its results."""
    ccq = os.path.join(os.path.dirname(sys.executable), "ccq")
    env = {**os.environ, "CCQ_API_URL": api.base_url, "CCQ_TOKEN": api.token}
    items = "".join(json.dumps({"prompt": p}) + "\n" for p in BATCH_PROMPTS)
    step(f"[6] a batch of {len(BATCH_PROMPTS)} prompts: ccq batch submit - --wait")
    submitted = subprocess.run(
        [ccq, "batch", "submit", "-", "--max-concurrency", "3", "--wait"],
        input=items,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    batch_id = submitted.stdout.strip().splitlines()[0] if submitted.stdout.strip() else ""
    if not batch_id:
        return False
    step(f"[7] its results, one NDJSON line per item: ccq batch results {batch_id}")
    exported = subprocess.run(
        [ccq, "batch", "results", batch_id], capture_output=True, text=True, env=env, check=True
    )
    for line in exported.stdout.splitlines():
        item = json.loads(line)
        say(f"    #{item['index']} {item['status']}: {item['result']!r}")
    return submitted.returncode == 0


def check_ready(api: ApiClient) -> None:
    """Stop at once, naming the cause, if the stack cannot run prompts."""
    try:
        api.ready()
    except ApiUnreachable as exc:
        sys.exit(f"demo: the API at {api.base_url} does not answer ({exc.reason}); run `make up`")
    except ApiError as exc:
        problems = exc.details if isinstance(exc.details, dict) else {}
        lines = "".join(f"\n  {name}: {problem}" for name, problem in problems.items())
        sys.exit(f"demo: the stack at {api.base_url} is not ready:{lines or ' ' + exc.message}")


def connect() -> ApiClient:
    """The local stack's API, with a token for owner ``demo`` minted from the stack's
    ``CCQ_JWT_SECRET`` (a shell's CCQ_API_URL and CCQ_TOKEN are not the demo's)."""
    values = {k: v for k, v in read_environment().items() if k not in ("CCQ_API_URL", "CCQ_TOKEN")}
    try:
        config = resolve(values=values, subject=OWNER)
    except ConfigError as exc:
        sys.exit(f"demo: {exc}; run `make up`")
    return ApiClient(config.api_url, config.token)


def story(api: ApiClient) -> None:
    say(
        f"demo: talking to {api.base_url}"
        + (" (scripted model server)" if SCRIPTED else " (the real Claude API)")
    )

    first_prompt = "Remember this word: tangerine. Reply briefly."
    created = api.create_session({"prompt": first_prompt})
    session_id = created["session"]["id"]
    step(f"[1] session {session_id}")
    say(f"  > {first_prompt}")
    first = tail(api, created["run"]["id"])
    say(f"  < {first['result']!r} ({first['status']})")

    second_prompt = "Which word did I ask you to remember?"
    queued = api.queue_run(session_id, second_prompt)
    step("[2] same session, resumed by its ID")
    say(f"  > {second_prompt}")
    second = tail(api, queued["id"])
    say(f"  < {second['result']!r} ({second['status']})")

    session = api.get_session(session_id)
    say(
        f"\nsession {session_id}: {session['runs_count']} runs, "
        f"status {session['status']}, cost ${session['total_cost_usd']:.6f}"
    )
    if SCRIPTED:
        say(
            "(the scripted model echoes with the number of messages it received: the "
            "second answer saw the first exchange)"
        )
    if first["status"] != "succeeded" or second["status"] != "succeeded":
        sys.exit("demo: a run did not succeed")
    if not delegate(api):
        sys.exit("demo: the delegation did not succeed")
    if not batch(api):
        sys.exit("demo: the batch did not succeed")


def main() -> None:
    with connect() as api:
        check_ready(api)
        try:
            story(api)
        except ApiError as exc:
            sys.exit(f"demo: the API answered {exc.status} {exc.code}: {exc.message}")
        except ApiUnreachable as exc:
            sys.exit(f"demo: {exc}")


if __name__ == "__main__":
    main()
