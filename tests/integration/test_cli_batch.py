"""`ccq batch`, run as a user runs it, against a real API server and worker.

Each item is a real session running the real Claude Code CLI against the scripted model
server, so a plain item's result is `echo (messages=N): <prompt>`. Runs cost a container
each: one batch of three items is submitted once and looked at by several tests.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from orchestrator.auth.owner_tokens import mint_token
from orchestrator.settings import Settings
from tests.integration.test_cli_client import Ccq
from tests.processes import ApiProcess, WorkerProcess
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

UUID = r"[0-9a-f-]{36}"
PROMPTS = ["first item", "second item", "third item"]


@pytest.fixture(scope="module")
def token(settings: Settings) -> str:
    return mint_token(settings, "batch-cli")


@pytest.fixture(scope="module")
def ccq(
    api_server: ApiProcess,
    worker: WorkerProcess,
    token: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Ccq:
    return Ccq(api_server.url, token, tmp_path_factory.mktemp("ccq-batch"))


def _batch(api_server: ApiProcess, token: str, batch_id: str) -> dict[str, Any]:
    response = requests.get(
        f"{api_server.url}/api/v1/batches/{batch_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    batch: dict[str, Any] = response.json()["batch"]
    return batch


def _no_traceback(output: str) -> None:
    assert "Traceback" not in output


@pytest.fixture(scope="module")
def finished(ccq: Ccq) -> tuple[str, str]:
    """A three-item batch submitted with --wait: its ID and what the command wrote on stderr."""
    items = ccq.cwd / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS) + "\n")

    result = ccq("batch", "submit", str(items), "--wait", "--max-concurrency", "2")

    assert result.returncode == 0, result.stderr
    batch_id = result.stdout.strip()
    assert re.fullmatch(UUID, batch_id), result.stdout
    return batch_id, result.stderr


def test_submit_wait_shows_progress_and_the_final_summary(finished: tuple[str, str]) -> None:
    batch_id, stderr = finished
    lines = stderr.splitlines()
    assert lines[0] == f"batch {batch_id}: 3 items queued, at most 2 at a time"
    # stderr is a pipe here: plain progress lines, no redrawing, no colors.
    assert "\r" not in stderr
    assert "\x1b[" not in stderr
    progress = lines[1:-1]
    assert progress[0].endswith("0/3   0%  ✓0 ✗0 …3  $0"), progress  # as submitted
    assert re.search(r"\] 3/3 100%  ✓3 ✗0  \$0\.\d{4}$", progress[-1]), progress
    summary = re.fullmatch(
        rf"batch ({UUID}) succeeded  3/3 done: 3 succeeded  \$0\.\d{{4}}  [\d.ms]+", lines[-1]
    )
    assert summary is not None, lines[-1]
    assert summary.group(1) == batch_id
    _no_traceback(stderr)


def test_results_has_one_line_per_item_in_item_order(ccq: Ccq, finished: tuple[str, str]) -> None:
    batch_id, _ = finished

    result = ccq("batch", "results", batch_id)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    for line, prompt in zip(lines, PROMPTS, strict=True):
        assert line["status"] == "succeeded"
        assert re.fullmatch(rf"echo \(messages=\d+\): {prompt}", line["result"]), line
        assert line["total_cost_usd"] > 0

    out = ccq.cwd / "results.jsonl"
    to_file = ccq("batch", "results", batch_id, "-o", str(out))
    assert to_file.returncode == 0, to_file.stderr
    assert to_file.stdout == ""
    assert out.read_text() == result.stdout


def test_status_json_and_human(
    ccq: Ccq, finished: tuple[str, str], api_server: ApiProcess, token: str
) -> None:
    batch_id, _ = finished

    as_json = ccq("batch", "status", batch_id, "--json")

    assert as_json.returncode == 0, as_json.stderr
    batch = json.loads(as_json.stdout)["batch"]
    assert batch == _batch(api_server, token, batch_id)
    assert batch["status"] == "succeeded"
    assert batch["counts"]["succeeded"] == 3
    assert batch["done"] == batch["total_items"] == 3
    assert batch["max_concurrency"] == 2

    human = ccq("batch", "status", batch_id)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0] == f"batch {batch_id}"
    assert "  status       succeeded" in lines
    assert "  progress     3/3 done (100%)" in lines
    assert "  items        3 succeeded" in lines


def test_status_wait_of_a_finished_batch_returns_at_once(
    ccq: Ccq, finished: tuple[str, str]
) -> None:
    batch_id, _ = finished
    result = ccq("batch", "status", batch_id, "--wait")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"batch {batch_id}\n")
    assert "  status       succeeded" in result.stdout.splitlines()


def test_list_shows_the_batch(ccq: Ccq, finished: tuple[str, str]) -> None:
    batch_id, _ = finished

    result = ccq("batch", "list")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "DONE", "COST", "CREATED"]
    row = next(line for line in lines if line.startswith(batch_id))
    assert row.split()[1:3] == ["succeeded", "3/3"]
    listed = json.loads(ccq("batch", "list", "--json").stdout)
    assert batch_id in [b["id"] for b in listed["batches"]]


def test_cancel_of_a_finished_batch_says_so(ccq: Ccq, finished: tuple[str, str]) -> None:
    batch_id, _ = finished
    result = ccq("batch", "cancel", batch_id)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"ccq: batch {batch_id} has already finished (succeeded); nothing to cancel\n"
    )


def test_invalid_items_are_listed_and_nothing_is_created(ccq: Ccq) -> None:
    before = json.loads(ccq("batch", "list", "--json").stdout)["batches"]
    items = '{"prompt": "fine"}\n{"model": "no prompt"}\nnot json\n'

    result = ccq("batch", "submit", "-", input=items)

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("ccq: 2 invalid item(s), nothing was created; first: item 1: ")
    assert lines[1].startswith("  item 1: prompt: ")
    assert lines[2] == "  item 2: (line): line 3 is not valid JSON"
    _no_traceback(result.stderr)
    after = json.loads(ccq("batch", "list", "--json").stdout)["batches"]
    assert [b["id"] for b in after] == [b["id"] for b in before]


def test_ctrl_c_leaves_the_batch_running_and_cancel_stops_it(
    ccq: Ccq, api_server: ApiProcess, token: str
) -> None:
    # 40 s of streaming output: running (and never silent) until it is cancelled.
    items = "".join(json.dumps({"prompt": f"[[stream 400 0.1]] slow {i}"}) + "\n" for i in range(2))
    path = ccq.cwd / "slow.jsonl"
    path.write_text(items)
    waiting = ccq.live("batch", "submit", str(path), "--wait", "--max-concurrency", "1")
    try:
        batch_id = wait_for(
            lambda: re.fullmatch(rf"({UUID})\n", waiting.stdout) and waiting.stdout.strip(),
            timeout=60,
            what="the batch ID on stdout",
        )
        wait_for(
            lambda: _batch(api_server, token, batch_id)["counts"]["running"] == 1,
            timeout=120,
            interval=0.2,
            what="the first item to run",
        )

        code = waiting.interrupt()
    finally:
        waiting.kill()

    assert code == 130
    assert waiting.stderr.splitlines()[-1] == (
        f"ccq: stopped waiting; batch {batch_id} goes on (`ccq batch cancel {batch_id}` cancels it)"
    )
    _no_traceback(waiting.stderr)
    assert _batch(api_server, token, batch_id)["status"] == "running"

    cancelled = ccq("batch", "cancel", batch_id)

    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == (
        f"batch {batch_id}: cancelled; 1 cancelled, 1 running (the 1 running one is stopping)\n"
    )
    ended = ccq("batch", "status", batch_id, "--wait", "--json")
    assert ended.returncode == 1, ended.stderr  # a cancelled batch did not succeed
    batch = json.loads(ended.stdout)["batch"]
    assert batch["status"] == "cancelled"
    assert batch["finished_at"] is not None
    assert batch["counts"]["cancelled"] == 2
    assert batch["done"] == 2
