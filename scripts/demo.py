"""`make demo`: one session answers two prompts through ccq, the second resumed; then a
parent delegates to three child sessions and summarises their work; then a small batch
runs with a live progress bar and its results are exported.

Every prompt goes through the API (POST), becomes a Celery task, runs the real Claude
Code CLI in the session's container, and is tailed here live over the run's WebSocket
stream. The parent delegates through ccq's MCP tool `delegate` inside its container: a
Celery chord runs the children in parallel and resumes the parent with their results.
Runs against the scripted model server unless a Claude credential is set, then against
the real API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import requests
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from orchestrator.settings import load_settings

SCRIPTED = not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"))


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, self.base + path, timeout=30, **kwargs)
        if response.status_code >= 400:
            sys.exit(f"demo: {method} {path} -> {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body


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
        return kind + (f" ({data['status']})" if "status" in data else "")
    return None


def tail(api: Api, run_id: str, errors: list[str] | None = None) -> dict[str, Any]:
    """Print the run's events live from its WebSocket stream; return the finished run.

    The stream starts at the run's first event and closes after its last, so this sees
    the whole run even when it finished before the socket opened. Failed tool calls are
    added to ``errors``.
    """
    url = api.base.replace("http", "ws", 1) + f"/api/v1/runs/{run_id}/stream"
    headers = {"Authorization": api.http.headers["Authorization"]}
    with connect(url, additional_headers=headers, proxy=None, open_timeout=30) as ws:
        try:
            while True:
                event = json.loads(ws.recv(timeout=300))
                if "tail" in event:
                    continue
                if errors is not None:
                    errors.extend(tool_errors(event))
                if (line := describe(event)) is not None:
                    print(f"    {line}")
        except ConnectionClosedOK:
            pass  # code 1000: the run finished
        except TimeoutError:
            sys.exit(f"demo: run {run_id} sent nothing for 300 s")
    return api.call("GET", f"/api/v1/runs/{run_id}")["run"]


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


def wait_for_followup(api: Api, session_id: str, timeout: float = 600) -> str:
    """The follow-up run the fan-out queues on the parent once every child ended.

    Called after the delegating run ended, so its children exist already: none means
    the delegation never happened, and that is said at once.
    """
    deadline = time.monotonic() + timeout
    announced: set[str] = set()
    while time.monotonic() < deadline:
        children = api.call("GET", f"/api/v1/sessions/{session_id}/children")["children"]
        if not children:
            sys.exit(f"demo: session {session_id} ended its run without any child session")
        for child in children:
            run = child["last_run"] or {}
            if (
                run.get("status") not in (None, "queued", "running")
                and child["id"] not in announced
            ):
                announced.add(child["id"])
                print(f"    child {child['id']}: {run['status']} -> {run.get('result')!r}")
        fanouts = {c["fanout_id"] for c in children if c["fanout_id"]}
        for fanout_id in fanouts:
            fanout = api.call("GET", f"/api/v1/fanouts/{fanout_id}")["fanout"]
            if fanout["followup_run_id"]:
                return str(fanout["followup_run_id"])
        time.sleep(0.5)
    sys.exit(f"demo: session {session_id} was not resumed within {timeout:.0f} s")


def delegate(api: Api) -> bool:
    prompt = delegation_prompt()
    created = api.call("POST", "/api/v1/sessions", json={"prompt": prompt})
    parent_id = created["session"]["id"]
    print(f"\n[3] parent {parent_id} delegates to three children (MCP tool `delegate`)")
    errors: list[str] = []
    delegated = tail(api, created["run"]["id"], errors)
    if delegated["status"] != "succeeded" or (SCRIPTED and errors):
        # The children never started: say why now instead of waiting for them.
        cause = "; ".join(errors) or delegated.get("error") or delegated.get("result")
        sys.exit(f"demo: the parent could not delegate ({delegated['status']}): {cause}")
    print(f"  < {delegated['status']}; children running in parallel:")
    followup_id = wait_for_followup(api, parent_id)
    print(f"\n[4] the parent, resumed once with all three results (run {followup_id})")
    summary = tail(api, followup_id)
    print(f"  < {summary['status']}")
    print("\n[5] the tree: ccq children " + parent_id)
    ccq = os.path.join(os.path.dirname(sys.executable), "ccq")
    subprocess.run(
        [ccq, "children", parent_id],
        check=True,
        env={**os.environ, "CCQ_API_URL": api.base, "CCQ_TOKEN": api.token},
    )
    return delegated["status"] == "succeeded" and summary["status"] == "succeeded"


BATCH_PROMPTS = [
    "Name a prime number.",
    "Name a colour of the rainbow.",
    "Name a planet.",
    "Name an ocean.",
    "Name a chemical element.",
    "Name a musical instrument.",
]


def batch(api: Api) -> bool:
    """Submit a small batch with `ccq batch submit --wait`, then export its results."""
    ccq = os.path.join(os.path.dirname(sys.executable), "ccq")
    env = {**os.environ, "CCQ_API_URL": api.base, "CCQ_TOKEN": api.token}
    items = "".join(json.dumps({"prompt": p}) + "\n" for p in BATCH_PROMPTS)
    print(f"\n[6] a batch of {len(BATCH_PROMPTS)} prompts: ccq batch submit - --wait")
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
    print(f"\n[7] its results, one NDJSON line per item: ccq batch results {batch_id}")
    exported = subprocess.run(
        [ccq, "batch", "results", batch_id], capture_output=True, text=True, env=env, check=True
    )
    for line in exported.stdout.splitlines():
        item = json.loads(line)
        print(f"    #{item['index']} {item['status']}: {item['result']!r}")
    return submitted.returncode == 0


def check_ready(base: str) -> None:
    """Stop at once, naming the cause, if the stack cannot run prompts."""
    try:
        response = requests.get(base + "/readyz", timeout=10)
    except requests.RequestException as exc:
        sys.exit(f"demo: the API at {base} does not answer ({exc}); run `make up`")
    if response.status_code != 200:
        problems = response.json().get("error", {}).get("details", {})
        lines = "".join(f"\n  {name}: {problem}" for name, problem in problems.items())
        sys.exit(f"demo: the stack at {base} is not ready:{lines or ' ' + response.text}")


def main() -> None:
    settings = load_settings()
    check_ready(settings.api_url)
    token = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ccq"), "token", "--sub", "demo"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    api = Api(settings.api_url, token)
    print(
        f"demo: talking to {settings.api_url}"
        + (" (scripted model server)" if SCRIPTED else " (the real Claude API)")
    )

    first_prompt = "Remember this word: tangerine. Reply briefly."
    created = api.call("POST", "/api/v1/sessions", json={"prompt": first_prompt})
    session_id = created["session"]["id"]
    print(f"\n[1] session {session_id}\n  > {first_prompt}")
    first = tail(api, created["run"]["id"])
    print(f"  < {first['result']!r} ({first['status']})")

    second_prompt = "Which word did I ask you to remember?"
    queued = api.call("POST", f"/api/v1/sessions/{session_id}/runs", json={"prompt": second_prompt})
    print(f"\n[2] same session, resumed by its ID\n  > {second_prompt}")
    second = tail(api, queued["run"]["id"])
    print(f"  < {second['result']!r} ({second['status']})")

    session = api.call("GET", f"/api/v1/sessions/{session_id}")["session"]
    print(
        f"\nsession {session_id}: {session['runs_count']} runs, "
        f"status {session['status']}, cost ${session['total_cost_usd']:.6f}"
    )
    if SCRIPTED:
        print(
            "(the scripted model echoes with the number of messages it received: the "
            "second answer saw the first exchange)"
        )
    if first["status"] != "succeeded" or second["status"] != "succeeded":
        sys.exit("demo: a run did not succeed")
    if not delegate(api):
        sys.exit("demo: the delegation did not succeed")
    if not batch(api):
        sys.exit("demo: the batch did not succeed")


if __name__ == "__main__":
    main()
