"""The real API over HTTP (``/api/v1``) as one token sees it, for tests of a running stack."""

from __future__ import annotations

import json
from typing import Any

import requests

from tests.api_helpers import FINAL
from tests.processes import ApiProcess
from tests.waiting import wait_for


class HttpApi:
    def __init__(self, server: ApiProcess, token: str) -> None:
        self.server = server
        self.token = token
        self.url = f"{server.url}/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        """The JSON reply, after checking the status (the reply's start in the message)."""
        response = requests.request(
            method, self.url + path, json=body, headers=self.headers, timeout=60
        )
        assert response.status_code == status, f"{method} {path}: {response.text[:2000]}"
        return response.json()

    def get(self, path: str, status: int = 200) -> Any:
        return self.call("GET", path, status=status)

    def post(self, path: str, body: Any, status: int) -> Any:
        return self.call("POST", path, body, status)


def tool(name: str, arguments: dict[str, Any]) -> str:
    """A prompt making the scripted model call a ccq MCP tool (or any tool) once."""
    return f"[[tool {name} {json.dumps(arguments)}]]"


# The seven tools ccq serves every session (as `mcp__ccq__<name>`).
CCQ_TOOLS = frozenset(
    {
        "spawn_child",
        "send_to_child",
        "get_child_result",
        "get_child_output",
        "list_children",
        "stop_child",
        "delegate",
    }
)


def ccq_tool(name: str, arguments: dict[str, Any]) -> str:
    return tool(f"mcp__ccq__{name}", arguments)


def bash(command: str) -> str:
    return tool("Bash", {"command": command})


class SessionApi(HttpApi):
    """The API as one token sees it, with the session calls these tests make."""

    def session(self, prompt: str) -> tuple[str, str]:
        reply = self.post("/sessions", {"prompt": prompt}, 201)
        return reply["session"]["id"], reply["run"]["id"]

    def child(self, parent_id: str, prompt: str) -> tuple[str, str]:
        reply = self.post(f"/sessions/{parent_id}/children", {"prompt": prompt}, 201)
        return reply["session"]["id"], reply["run"]["id"]

    def prompt(self, session_id: str, prompt: str) -> str:
        run_id: str = self.post(f"/sessions/{session_id}/runs", {"prompt": prompt}, 202)["run"][
            "id"
        ]
        return run_id

    def wait_run(self, run_id: str, timeout: float = 180) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            run: dict[str, Any] = self.get(f"/runs/{run_id}")["run"]
            return run if run["status"] in FINAL else None

        return wait_for(final, timeout=timeout, interval=0.2, what=f"run {run_id} to finish")

    def wait_fanout(self, fanout_id: str, timeout: float = 180) -> dict[str, Any]:
        def resumed() -> dict[str, Any] | None:
            fanout: dict[str, Any] = self.get(f"/fanouts/{fanout_id}")["fanout"]
            return fanout if fanout["followup_run_id"] else None

        return wait_for(resumed, timeout=timeout, interval=0.2, what=f"fanout {fanout_id}")
