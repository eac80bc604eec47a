"""The `ccq` client commands, run as a user runs them, against a real API server process.

A real `ccq api` (gunicorn) serves the test stack; a real worker runs the real Claude Code
CLI against the scripted model server, so every answer is `echo (messages=N): <prompt>`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest
import requests

from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.settings import Settings
from tests.api_helpers import FINAL, message_count
from tests.processes import ApiProcess, WorkerProcess, stack_environment
from tests.stream_helpers import history, run_history
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

    def live(self, *args: str) -> Live:
        return Live(self.popen(*args))


class Live:
    """A running `ccq` whose output is collected as it comes, for commands that go on."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        assert process.stdout is not None
        assert process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(process.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(process.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], chunks: list[bytes]) -> None:
        raw = stream.buffer  # type: ignore[attr-defined]
        while chunk := raw.read1(65536):
            chunks.append(chunk)

    @property
    def stdout(self) -> str:
        return b"".join(self._out).decode(errors="replace")

    @property
    def stderr(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    def wait_for_output(self, text: str, *, err: bool = False, timeout: float = 120) -> None:
        def shown() -> bool:
            if text in (self.stderr if err else self.stdout):
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"ccq exited: {self.stdout}\n{self.stderr}")
            return False

        wait_for(shown, timeout=timeout, what=f"{text!r} from ccq")

    def wait(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code

    def interrupt(self) -> int:
        """Ctrl-C."""
        self.process.send_signal(signal.SIGINT)
        return self.wait(timeout=30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.wait(timeout=30)


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


def test_fanout_follow_shows_the_children_then_the_parents_follow_up(ccq: Ccq, api: Api) -> None:
    session_id, _, _ = _summary(ccq("run", "the parent").stderr)

    result = ccq(
        "fanout", session_id, "--prompt", "first child", "--prompt", "[[error 500 broken]]",
        "--then", "Report back.", "-f",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "Report back." in result.stdout  # the follow-up's echo, streamed to stdout
    assert result.stdout.index("first child") < result.stdout.index("Status: failed")
    assert "[1/2]" in result.stderr
    assert "[2/2]" in result.stderr
    _no_traceback(result)


def test_children_prints_the_tree_with_states_and_costs(ccq: Ccq, api: Api) -> None:
    session_id, _, _ = _summary(ccq("run", "root").stderr)
    child = api.post(f"/api/v1/sessions/{session_id}/children", {"prompt": "child"})
    grandchild = api.post(
        f"/api/v1/sessions/{child['session']['id']}/children", {"prompt": "grandchild"}
    )
    for reply in (child, grandchild):
        api.wait_run(reply["run"]["id"])

    result = ccq("children", session_id)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert session_id in lines[0]
    assert "(tree $" in lines[0]
    assert any(child["session"]["id"] in line and "└─" in line for line in lines)
    assert any(grandchild["session"]["id"] in line and "   └─" in line for line in lines)
    assert lines[-1].startswith("3 sessions:")
    as_json = json.loads(ccq("children", session_id, "--json").stdout)
    assert as_json["children"][0]["children"][0]["id"] == grandchild["session"]["id"]

    # Stopping and deleting the root say what happened to the tree under it.
    stopped = ccq("stop", session_id)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"session {session_id}: stopped, and 2 descendants stopped")
    removed = ccq("rm", session_id)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"session {session_id}: deleted, and 2 descendants deleted\n"
    assert api.get_status(f"/api/v1/sessions/{grandchild['session']['id']}") == 404


def test_children_of_an_unknown_session_says_so(ccq: Ccq) -> None:
    result = ccq("children", "00000000-0000-0000-0000-000000000000")
    assert result.returncode != 0
    assert "not found" in result.stderr
    _no_traceback(result)


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


# --- ccq tail ---------------------------------------------------------------------------

FOOTER = re.compile(r"^run ([0-9a-f-]{36}) (\w+)  \$(\S+)  (\d+|-) turns?$", re.MULTILINE)


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_tail_json_prints_exactly_the_runs_events(
    ccq: Ccq, api: Api, api_server: ApiProcess, token: str
) -> None:
    run = api.post("/api/v1/sessions", {"prompt": "[[stream 5 0.05]] tailed"})["run"]

    result = ccq("tail", run["id"], "--json")

    assert result.returncode == 0, result.stderr
    events = _json_lines(result.stdout)
    assert events == run_history(api_server, run["id"], token)  # the same objects, in order
    assert events[0]["type"] == "ccq.run.queued"
    assert events[-1]["type"] == "ccq.run.finished"
    assert result.stderr == ""


def test_tail_shows_the_answer_tool_calls_and_the_cost(ccq: Ccq, api: Api) -> None:
    prompt = '[[tool Bash {"command": "echo from-a-tool"}]] [[echo]] look'
    run = api.post("/api/v1/sessions", {"prompt": prompt})["run"]

    result = ccq("tail", run["id"])

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Claude Code ")  # the init line
    assert '-> Bash {"command": "echo from-a-tool"}' in lines
    assert any(line.startswith("<- ") for line in lines), result.stdout
    footer = FOOTER.search(result.stdout)
    assert footer is not None, result.stdout
    assert footer.group(1, 2) == (run["id"], "succeeded")
    assert footer.group(3).startswith("0.")  # the scripted model's usage has a cost
    assert lines[-1] == footer.group(0)
    assert "\x1b[" not in result.stdout  # not a terminal: no colors


def test_tail_of_a_failed_run_shows_the_error_and_exits_1(ccq: Ccq, api: Api) -> None:
    run = api.post("/api/v1/sessions", {"prompt": "[[error 500 the model broke]] hi"})["run"]

    result = ccq("tail", run["id"])

    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    footer = FOOTER.fullmatch(lines[-1])
    assert footer is not None, result.stdout
    assert footer.group(1, 2) == (run["id"], "failed")
    # The CLI's own error message, once (the footer does not repeat it).
    assert [line for line in lines if "the model broke" in line] == [lines[-2]]
    assert lines[-2].startswith("API Error: 500 the model broke")


def test_tail_session_live_shows_each_new_run_until_ctrl_c(
    ccq: Ccq, api: Api, api_server: ApiProcess, token: str
) -> None:
    created = api.post("/api/v1/sessions", {"prompt": "before the tail"})
    session_id, first = created["session"]["id"], created["run"]["id"]
    api.wait_run(first)
    tail = ccq.live("tail", session_id)
    try:
        tail.wait_for_output(f"following session {session_id} from now on", err=True)
        second = api.post(f"/api/v1/sessions/{session_id}/runs", {"prompt": "while tailed"})["run"]
        tail.wait_for_output(f"run {second['id']} succeeded")

        code = tail.interrupt()
    finally:
        tail.kill()

    assert code == 130
    out = tail.stdout
    assert first not in out  # live from now: nothing from before the tail
    assert out.startswith(f"=== run {second['id']} (#2)\n"), out
    assert re.search(r"^echo \(messages=\d+\): while tailed$", out, re.MULTILINE), out
    assert "Traceback" not in tail.stderr
    assert tail.stderr.splitlines() == [
        f"ccq: following session {session_id} from now on (Ctrl-C to stop)"
    ]


def test_tail_session_from_start_json_replays_then_follows(
    ccq: Ccq, api: Api, api_server: ApiProcess, token: str
) -> None:
    created = api.post("/api/v1/sessions", {"prompt": "first"})
    session_id, first = created["session"]["id"], created["run"]["id"]
    tail = ccq.live("tail", session_id, "--from-start", "--json")
    try:
        first_events = run_history(api_server, first, token)
        tail.wait_for_output(first_events[-1]["id"])  # the first run, replayed or live
        second = api.post(f"/api/v1/sessions/{session_id}/runs", {"prompt": "second"})["run"]
        second_events = run_history(api_server, second["id"], token)
        tail.wait_for_output(second_events[-1]["id"])

        code = tail.interrupt()
    finally:
        tail.kill()

    assert code == 130
    session_events = history(api_server, f"/api/v1/sessions/{session_id}/events", token)
    assert [e["id"] for e in _json_lines(tail.stdout)] == [e["id"] for e in session_events]
    assert {e["run_id"] for e in session_events} == {first, second["id"]}


def test_tail_ends_with_the_reason_when_the_session_is_deleted(ccq: Ccq, api: Api) -> None:
    created = api.post("/api/v1/sessions", {"prompt": "short-lived"})
    session_id = created["session"]["id"]
    api.wait_run(created["run"]["id"])
    tail = ccq.live("tail", session_id)
    try:
        tail.wait_for_output(f"following session {session_id}", err=True)
        assert ccq("rm", session_id).returncode == 0
        code = tail.wait(timeout=60)
    finally:
        tail.kill()

    assert code == 1
    assert tail.stderr.splitlines()[-1] == f"ccq: session {session_id} was deleted"


def test_tail_of_an_unknown_or_someone_elses_id_says_so(
    ccq: Ccq, api_url: str, settings: Settings
) -> None:
    mallory = Api(api_url, mint_token(settings, "mallory"))
    theirs = mallory.post("/api/v1/sessions", {"prompt": "not yours"})
    unknown = "00000000-0000-4000-8000-000000000000"

    for object_id in (unknown, theirs["session"]["id"], theirs["run"]["id"]):
        result = ccq("tail", object_id)
        assert result.returncode == 1, object_id
        assert result.stderr == f"ccq: no session or run {object_id}\n"
        assert result.stdout == ""

    not_an_id = ccq("tail", "yesterday")
    assert not_an_id.returncode == 2
    assert "is not a valid UUID" in not_an_id.stderr


def test_tail_reconnects_across_an_api_restart_and_loses_or_repeats_nothing(
    settings: Settings,
    model_server: ModelServer,
    worker: WorkerProcess,
    token: str,
    tmp_path: Path,
) -> None:
    # A server of its own: the restart must not disturb the other tests' server.
    server = ApiProcess(stack_environment(settings, model_server), tmp_path / "api.log")
    try:
        server.wait_ready()
        api = Api(server.url, token)
        # 20 s of streaming: longer than the API's graceful shutdown (10 s), during which
        # the old process keeps serving the tail it has.
        run = api.post("/api/v1/sessions", {"prompt": "[[stream 400 0.05]] a long answer"})
        run_id = run["run"]["id"]
        tail = Ccq(server.url, token, tmp_path).live("tail", run_id, "--json")
        try:
            tail.wait_for_output('"chunk 5/400 "')
            server.restart()
            code = tail.wait(timeout=120)
        finally:
            tail.kill()

        assert code == 0, tail.stderr
        received = [e["id"] for e in _json_lines(tail.stdout)]
        assert received == [e["id"] for e in run_history(server, run_id, token)]
        assert "chunk 400/400" in tail.stdout
        notes = tail.stderr.splitlines()
        assert notes[0].startswith("ccq: "), notes
        assert notes[0].endswith("; reconnecting"), notes
        assert "ccq: reconnected" in notes
    finally:
        server.stop()
