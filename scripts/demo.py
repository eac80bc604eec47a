"""`make demo`: one session answers two prompts through ccq, the second resumed.

Every prompt goes through the API (POST), becomes a Celery task, runs the real Claude
Code CLI in the session's container, and is tailed here live over the run's WebSocket
stream. Runs against the scripted model server unless a Claude credential is set, then
against the real API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import requests
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from orchestrator.settings import load_settings

SCRIPTED = not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"))


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, self.base + path, timeout=30, **kwargs)
        if response.status_code >= 400:
            sys.exit(f"demo: {method} {path} -> {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body


def describe(event: dict[str, Any]) -> str | None:
    """One readable line per event worth showing."""
    data, kind = event["data"], event["type"]
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


def tail(api: Api, run_id: str) -> dict[str, Any]:
    """Print the run's events live from its WebSocket stream; return the finished run.

    The stream starts at the run's first event and closes after its last, so this sees
    the whole run even when it finished before the socket opened.
    """
    url = api.base.replace("http", "ws", 1) + f"/api/v1/runs/{run_id}/stream"
    headers = {"Authorization": api.http.headers["Authorization"]}
    with connect(url, additional_headers=headers, proxy=None, open_timeout=30) as ws:
        try:
            while True:
                event = json.loads(ws.recv(timeout=300))
                if "tail" not in event and (line := describe(event)) is not None:
                    print(f"    {line}")
        except ConnectionClosedOK:
            pass  # code 1000: the run finished
        except TimeoutError:
            sys.exit(f"demo: run {run_id} sent nothing for 300 s")
    return api.call("GET", f"/api/v1/runs/{run_id}")["run"]


def main() -> None:
    settings = load_settings()
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


if __name__ == "__main__":
    main()
