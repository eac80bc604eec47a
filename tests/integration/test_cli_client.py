"""The `ccq` client commands, run as a user runs them, against a real API server process.

A real `ccq api` (gunicorn) serves the test stack; a real worker runs the real Claude Code
CLI against the scripted model server, so every answer is `echo (messages=N): <prompt>`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.auth import mint_token
from orchestrator.settings import Settings
from tests.api_helpers import FINAL, message_count
from tests.processes import ApiProcess
from tests.waiting import free_port, wait_for

pytestmark = pytest.mark.integration

CCQ = str(Path(sys.executable).with_name("ccq"))
SESSION_LINE = re.compile(r"session ([0-9a-f-]{36})\s+run ([0-9a-f-]{36}) (\w+)")


@pytest.fixture(scope="module")
def api_url(api_server: ApiProcess) -> str:
    return api_server.url


@pytest.fixture(scope="module")
def token(settings: Settings) -> str:
    return mint_token(settings, "alice")


class Ccq:
    """Runs the `ccq` console script with the API's URL and a token in its environment."""

    def __init__(self, api_url: str, token: str, cwd: Path) -> None:
        self.env = {**os.environ, "CCQ_API_URL": api_url, "CCQ_TOKEN": token}
        for name in ("CCQ_JWT_SECRET", "CCQ_API_PORT", "CCQ_API_HOST"):
            self.env.pop(name, None)
        self.cwd = cwd

    def __call__(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CCQ, *args],
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            cwd=self.cwd,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [CCQ, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
        )


@pytest.fixture
def ccq(api_url: str, token: str, tmp_path: Path) -> Ccq:
    return Ccq(api_url, token, tmp_path)


class Api:
    """Direct HTTP calls, to check what the commands did."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> dict[str, Any]:
        response = requests.get(self.url + path, headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def get_status(self, path: str) -> int:
        return requests.get(self.url + path, headers=self.headers, timeout=30).status_code

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(self.url + path, json=body, headers=self.headers, timeout=30)
        assert response.status_code < 300, response.text
        reply: dict[str, Any] = response.json()
        return reply

    def wait_run(self, run_id: str, timeout: float = 180) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            run: dict[str, Any] = self.get(f"/api/v1/runs/{run_id}")["run"]
            return run if run["status"] in FINAL else None

        return wait_for(final, timeout=timeout, interval=0.2, what=f"run {run_id} to finish")


@pytest.fixture
def api(api_url: str, token: str) -> Api:
    return Api(api_url, token)


def _summary(stderr: str) -> tuple[str, str, str]:
    """(session id, run id, status) from the summary line `ccq run` prints on stderr."""
    match = SESSION_LINE.search(stderr)
    assert match is not None, stderr
    return match.group(1), match.group(2), match.group(3)


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def test_run_prints_the_answer_and_a_summary(ccq: Ccq) -> None:
    result = ccq("run", "hello")

    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"echo \(messages=\d+\): hello\n", result.stdout), result.stdout
    _, _, status = _summary(result.stderr)
    assert status == "succeeded"
    assert "$0." in result.stderr  # the scripted model's usage has a cost
    assert "1 turn" in result.stderr


def test_run_reads_the_prompt_from_stdin(ccq: Ccq) -> None:
    result = ccq("run", "-", input="from a pipe\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(": from a pipe\n"), result.stdout


def test_run_stream_prints_each_chunk_as_it_comes(ccq: Ccq) -> None:
    result = ccq("run", "-s", "[[stream 5 0.05]]")

    assert result.returncode == 0, result.stderr
    assert "chunk 1/5 chunk 2/5 chunk 3/5 chunk 4/5 chunk 5/5" in result.stdout
    assert result.stdout.count("chunk 5/5") == 1  # the final message does not repeat it
    assert "Claude Code" in result.stdout  # the init line
    assert _summary(result.stderr)[2] == "succeeded"


def test_send_continues_the_conversation(ccq: Ccq) -> None:
    first = ccq("run", "--json", "first prompt")
    assert first.returncode == 0, first.stderr
    first_run = json.loads(first.stdout)

    second = ccq("send", first_run["session_id"], "second prompt", "--json")

    assert second.returncode == 0, second.stderr
    second_run = json.loads(second.stdout)
    assert second_run["session_id"] == first_run["session_id"]
    assert second_run["seq"] == 2
    assert second_run["result"].endswith(": second prompt")
    assert message_count(second_run["result"]) == message_count(first_run["result"]) + 2


def test_send_stream_to_a_session(ccq: Ccq) -> None:
    session_id, _, _ = _summary(ccq("run", "start").stderr)
    result = ccq("send", "-s", session_id, "[[stream 3 0.05]]")
    assert result.returncode == 0, result.stderr
    assert "chunk 1/3 chunk 2/3 chunk 3/3" in result.stdout
    assert _summary(result.stderr)[0] == session_id


def test_sessions_lists_them_as_json_and_as_a_table(ccq: Ccq) -> None:
    session_id, _, _ = _summary(ccq("run", "to be listed").stderr)

    listed = ccq("sessions", "--json")
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)["sessions"]
    ours = next(s for s in sessions if s["id"] == session_id)
    assert ours["runs_count"] == 1

    table = ccq("sessions", "--all", "--limit", "5")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "ID",
        "STATUS",
        "RUNS",
        "COST",
        "LAST",
        "ACTIVE",
    ]
    row = next(line for line in table.stdout.splitlines() if line.startswith(session_id))
    assert row.split()[1:3] == ["idle", "1"]
    assert "\x1b[" not in table.stdout  # not a terminal: no colors


def test_show_a_session_and_a_run(ccq: Ccq) -> None:
    session_id, run_id, _ = _summary(ccq("run", "show me").stderr)

    session = ccq("show", session_id)
    assert session.returncode == 0, session.stderr
    assert session.stdout.startswith(f"session {session_id}\n")
    assert f"last run {run_id} (#1)" in session.stdout
    assert session.stdout.rstrip().endswith(": show me")

    run = ccq("show", run_id)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"run {run_id} (#1)\n")
    assert "  status    succeeded\n" in run.stdout

    as_json = ccq("show", run_id, "--json")
    assert json.loads(as_json.stdout)["run"]["id"] == run_id

    missing = ccq("show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
    assert "no session or run 00000000-0000-0000-0000-000000000000" in missing.stderr


def test_cancel_a_running_run_ends_the_waiting_client_with_exit_1(ccq: Ccq, api: Api) -> None:
    waiting = ccq.popen("run", "-s", "[[stream 200 0.1]]")
    try:

        def streaming_run() -> str | None:
            # This module runs one test at a time: the newest session is this test's.
            newest = api.get("/api/v1/sessions?limit=1")["sessions"][0]
            last = newest["last_run"]
            if not last or last["status"] != "running":
                return None
            events = api.get(f"/api/v1/runs/{last['id']}/events")["events"]
            return str(last["id"]) if len(events) > 5 else None

        run_id = wait_for(streaming_run, timeout=120, what="the run to stream")

        cancelled = ccq("cancel", run_id)

        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout == f"run {run_id}: cancelling (it was running)\n"
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 1, stderr
    assert "chunk 1/200" in stdout
    assert "chunk 200/200" not in stdout
    assert _summary(stderr)[1:] == (run_id, "cancelled")

    again = ccq("cancel", run_id)
    assert again.returncode == 1
    assert "has already finished (cancelled)" in again.stderr
    _no_traceback(again)


def test_run_timeout_stops_waiting_but_not_the_run(ccq: Ccq, api: Api) -> None:
    result = ccq("run", "--timeout", "0.5", "[[sleep 3]] slow")
    assert result.returncode == 1
    match = re.search(r"run ([0-9a-f-]{36}) is still (queued|running) after 0.5s", result.stderr)
    assert match is not None, result.stderr
    assert api.wait_run(match.group(1))["status"] == "succeeded"


def test_stop_then_rm_a_session(ccq: Ccq, api: Api) -> None:
    session_id, _, _ = _summary(ccq("run", "soon stopped").stderr)

    stopped = ccq("stop", session_id)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"session {session_id}: stopped")
    assert api.get(f"/api/v1/sessions/{session_id}")["session"]["status"] == "stopped"

    removed = ccq("rm", session_id)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"session {session_id}: deleted\n"
    assert api.get_status(f"/api/v1/sessions/{session_id}") == 404


def test_a_bad_token_prints_the_apis_message(ccq: Ccq) -> None:
    result = ccq("sessions", env={"CCQ_TOKEN": "not-a-jwt"})
    assert result.returncode == 1
    assert result.stderr.startswith("ccq: token is malformed or its signature is invalid\n")
    assert "not-a-jwt" not in result.stderr + result.stdout  # the token is never echoed
    _no_traceback(result)


def test_an_unreachable_api_says_so(ccq: Ccq) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = ccq("run", "hello", env={"CCQ_API_URL": url})
    assert result.returncode == 1
    assert f"cannot reach the ccq API at {url}" in result.stderr
    assert "make up" in result.stderr
    _no_traceback(result)


def test_an_empty_prompt_names_the_field(ccq: Ccq) -> None:
    result = ccq("run", "")
    assert result.returncode == 1
    assert result.stderr.startswith("ccq: prompt: ")
    _no_traceback(result)


def test_invalid_options_are_the_apis_to_judge(ccq: Ccq) -> None:
    result = ccq("run", "--max-turns", "0", "hello")
    assert result.returncode == 1
    assert result.stderr.startswith("ccq: max_turns: ")
    _no_traceback(result)
