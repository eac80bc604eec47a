"""Children and fan-out on the real stack: the real CLI calls ccq's MCP tools, which call
the real API with the run's session token; the scripted model server drives the calls."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from orchestrator.auth import session_tokens
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.db.engine import session_scope
from orchestrator.runtime.containers import SessionDirs
from orchestrator.runtime.labels import LABEL_SESSION
from orchestrator.settings import Settings
from tests.http_api import SessionApi as Api
from tests.http_api import bash, ccq_tool
from tests.processes import ApiProcess, WorkerProcess
from tests.session_tokens import mint_live_token
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def alice(api_server: ApiProcess, settings: Settings, worker: WorkerProcess) -> Api:
    return Api(api_server, mint_token(settings, "alice"))


@pytest.fixture(scope="module")
def mallory(api_server: ApiProcess, settings: Settings) -> Api:
    return Api(api_server, mint_token(settings, "mallory"))


def test_delegate_runs_three_children_in_parallel_and_resumes_the_parent_once(
    alice: Api,
) -> None:
    # Each child writes a file in its own workspace and answers with what it wrote.
    prompts = [f"[[sleep 1]] {bash(f'echo {word} | tee note.txt')}" for word in WORDS]
    parent_id, first_run = alice.session(
        ccq_tool("delegate", {"prompts": prompts, "then": "Summarise what your children wrote."})
    )

    delegated = alice.wait_run(first_run)
    assert delegated["status"] == "succeeded", delegated
    assert "tool result:" in delegated["result"]  # the tool answered, not an error
    tree = alice.get(f"/sessions/{parent_id}/children")
    children = tree["children"]
    assert len(children) == 3
    fanout_id = children[0]["fanout_id"]
    assert {c["fanout_id"] for c in children} == {fanout_id}

    fanout = alice.wait_fanout(fanout_id)
    followup = alice.wait_run(fanout["followup_run_id"])
    assert followup["status"] == "succeeded", followup
    # The parent's answer reflects every child's result (the scripted model echoes).
    for child, word in zip(_in_prompt_order(alice, fanout_id), WORDS, strict=True):
        assert f"tool result: {word}" in followup["result"]
        assert child["id"] in followup["result"]
        assert child["last_run"]["status"] == "succeeded"

    runs = [alice.get(f"/runs/{c['last_run']['id']}")["run"] for c in children]
    assert max(r["started_at"] for r in runs) < min(r["finished_at"] for r in runs), (
        "the three children never ran at the same time"
    )
    parent = alice.get(f"/sessions/{parent_id}")["session"]
    assert parent["runs_count"] == 2  # resumed exactly once
    children_cost = sum(c["total_cost_usd"] for c in _in_prompt_order(alice, fanout_id))
    assert parent["tree_cost_usd"] == pytest.approx(parent["total_cost_usd"] + children_cost)

    # The parent reads a child's file directly, under /workspace/children/<child_id>/.
    first_child = _in_prompt_order(alice, fanout_id)[0]
    read = alice.wait_run(
        alice.prompt(parent_id, bash(f"cat /workspace/children/{first_child['id']}/note.txt"))
    )
    assert read["result"] == f"tool result: {WORDS[0]}", read


WORDS = ["alpha", "beta", "gamma"]


def _in_prompt_order(api: Api, fanout_id: str) -> list[dict[str, Any]]:
    children: list[dict[str, Any]] = api.get(f"/fanouts/{fanout_id}")["children"]
    return children


def test_spawn_child_then_get_child_result(alice: Api) -> None:
    parent_id, run_id = alice.session(ccq_tool("spawn_child", {"prompt": "hello from the child"}))
    assert alice.wait_run(run_id)["status"] == "succeeded"
    (child,) = alice.get(f"/sessions/{parent_id}/children")["children"]
    assert child["parent_id"] == parent_id
    assert child["depth"] == 1
    alice.wait_run(child["last_run"]["id"])

    asked = alice.wait_run(
        alice.prompt(parent_id, ccq_tool("get_child_result", {"child_id": child["id"]}))
    )
    assert asked["result"].endswith("): hello from the child"), asked["result"]
    assert child["id"] in asked["result"]


def test_get_child_result_on_an_unfinished_child_says_so(alice: Api) -> None:
    parent_id, run_id = alice.session("a parent")
    alice.wait_run(run_id)
    # Answered first, then still streaming for 20 s: the child's run is unfinished while
    # the parent asks, and its earlier run's result must not be passed off as the answer.
    child_id, first = alice.child(parent_id, "first answer")
    alice.wait_run(first)
    slow = alice.prompt(child_id, "[[stream 100 0.2]]")
    wait_for(
        lambda: alice.get(f"/runs/{slow}")["run"]["status"] == "running",
        timeout=60,
        what="the child's second run to start",
    )

    asked = alice.wait_run(
        alice.prompt(parent_id, ccq_tool("get_child_result", {"child_id": child_id}))
    )
    assert "has NOT finished" in asked["result"], asked
    assert "first answer" not in asked["result"]
    alice.post(f"/runs/{slow}/cancel", {}, 202)
    assert alice.wait_run(slow)["status"] == "cancelled"


def test_the_depth_limit_reaches_the_model_as_a_tool_error(alice: Api, settings: Settings) -> None:
    assert settings.max_depth == 2  # the test stack's limit (tests/processes.py)
    root_id, _run_id = alice.session("root")
    child_id, _ = alice.child(root_id, "child")
    grandchild_id, grandchild_run = alice.child(
        child_id, ccq_tool("spawn_child", {"prompt": "one level too deep"})
    )

    ran = alice.wait_run(grandchild_run)
    assert ran["status"] == "succeeded", ran  # the run completes; the tool call failed
    # The scripted model quotes the tool's result; an is_error result reads "tool error:".
    assert "tool error: Error executing tool spawn_child" in ran["result"], ran["result"]
    assert "depth limit" in ran["result"]
    assert "409" in ran["result"]

    refused = alice.post(f"/sessions/{grandchild_id}/children", {"prompt": "x"}, 409)
    assert refused["error"]["code"] == "limit_exceeded"
    assert refused["error"]["details"][0]["field"] == "depth"
    assert alice.get(f"/sessions/{grandchild_id}/children")["children"] == []


def test_fanout_past_the_children_limit_creates_nothing(alice: Api, settings: Settings) -> None:
    parent_id, _ = alice.session("a parent")
    too_many = ["x"] * (settings.max_children + 1)
    refused = alice.post(f"/sessions/{parent_id}/fanout", {"prompts": too_many}, 409)
    assert refused["error"]["details"][0]["field"] == "children"
    assert alice.get(f"/sessions/{parent_id}/children")["children"] == []


def test_fanout_input_errors_name_the_field(alice: Api) -> None:
    parent_id, _ = alice.session("a parent")
    empty = alice.post(f"/sessions/{parent_id}/fanout", {"prompts": []}, 400)
    assert empty["error"]["details"][0]["field"] == "prompts"
    blank = alice.post(f"/sessions/{parent_id}/fanout", {"prompts": ["ok", ""]}, 400)
    assert blank["error"]["details"][0]["field"] == "prompts.1"
    huge = alice.post(f"/sessions/{parent_id}/fanout", {"prompts": ["x" * 300_000]}, 413)
    assert huge["error"]["details"][0]["field"] == "prompts.0"
    assert alice.get(f"/sessions/{parent_id}/children")["children"] == []


def test_a_failed_child_still_resumes_the_parent(alice: Api) -> None:
    parent_id, _ = alice.session("a parent")
    started = alice.post(
        f"/sessions/{parent_id}/fanout",
        {"prompts": ["all good", "[[error 500 the child broke]]"], "then": "Report."},
        202,
    )
    good, bad = started["fanout"]["child_ids"]

    followup = alice.wait_run(alice.wait_fanout(started["fanout"]["id"])["followup_run_id"])
    assert followup["status"] == "succeeded"
    assert alice.get(f"/sessions/{bad}")["session"]["last_run"]["status"] == "failed"
    text = followup["result"]
    assert text.index(good) < text.index("Status: succeeded") < text.index(bad)
    assert "Status: failed" in text[text.index(bad) :]


def test_stopping_a_parent_stops_its_descendants_and_cancels_their_runs(alice: Api) -> None:
    parent_id, _ = alice.session("a parent")
    child_id, child_run = alice.child(parent_id, "[[stream 200 0.2]]")
    wait_for(
        lambda: alice.get(f"/runs/{child_run}")["run"]["status"] == "running",
        timeout=60,
        what="the child's run to start",
    )

    stopped = alice.post(f"/sessions/{parent_id}/stop", {}, 202)
    assert set(stopped["stopped"]) == {parent_id, child_id}
    assert alice.wait_run(child_run)["status"] == "cancelled"
    assert alice.get(f"/sessions/{child_id}")["session"]["status"] == "stopped"


def test_deleting_a_parent_removes_its_descendants_containers_and_files(
    alice: Api, settings: Settings, docker_client: docker.DockerClient
) -> None:
    root_id, root_run = alice.session("root")
    child_id, child_run = alice.child(root_id, bash("echo kept > file.txt"))
    grandchild_id, grandchild_run = alice.child(child_id, "grandchild")
    for run_id in (root_run, child_run, grandchild_run):
        alice.wait_run(run_id)
    tree_ids = [root_id, child_id, grandchild_id]
    child_dirs = SessionDirs.for_lineage(settings.data_dir, [root_id, child_id])
    assert (child_dirs.workspace / "file.txt").read_text() == "kept\n"
    assert all(_container(docker_client, i) for i in tree_ids)

    deleted = alice.call("DELETE", f"/sessions/{root_id}", status=202)
    assert set(deleted["descendants"]) == {child_id, grandchild_id}

    def gone() -> bool:
        paths = [settings.data_dir / "sessions" / i for i in tree_ids]
        return not any(_container(docker_client, i) for i in tree_ids) and not any(
            p.exists() for p in paths
        )

    wait_for(gone, timeout=60, what="the tree's containers and files to be removed")
    for session_id in tree_ids:
        alice.get(f"/sessions/{session_id}", status=404)


def _container(client: docker.DockerClient, session_id: str) -> bool:
    return bool(
        client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session_id}"})
    )


# --- session tokens -------------------------------------------------------------------


def test_a_session_token_acts_only_within_its_own_tree(
    alice: Api, api_server: ApiProcess, db_factory: Any
) -> None:
    root_id, root_run = alice.session("root")
    child_id, child_run = alice.child(root_id, "child")
    other_id, _ = alice.session("another tree of the same owner")
    alice.wait_run(child_run)
    token, acting_run = mint_live_token(db_factory, child_id)
    as_child = Api(api_server, token)

    assert as_child.get(f"/sessions/{child_id}")["session"]["id"] == child_id
    # Outside its tree: its parent, another tree, another owner's view: all unknown.
    for path in (f"/sessions/{root_id}", f"/sessions/{other_id}", f"/runs/{root_run}"):
        assert as_child.get(path, status=404)["error"]["code"] == "not_found"
    as_child.post(f"/sessions/{other_id}/stop", {}, 404)
    as_child.post(f"/sessions/{root_id}/children", {"prompt": "x"}, 404)
    # Owner-wide endpoints are not for session tokens at all.
    assert as_child.get("/sessions", status=403)["error"]["code"] == "forbidden"
    as_child.post("/sessions", {"prompt": "x"}, 403)
    # Its own subtree: it may spawn a child of its own.
    grandchild = as_child.post(f"/sessions/{child_id}/children", {"prompt": "hi"}, 201)
    assert grandchild["session"]["parent_id"] == child_id
    alice.wait_run(grandchild["run"]["id"])

    with session_scope(db_factory) as db:
        session_tokens.revoke_run(db, acting_run)
    assert as_child.get(f"/sessions/{child_id}", status=401)["error"]["code"] == "unauthorized"


def test_a_runs_session_token_is_revoked_when_the_run_ends(
    alice: Api, api_server: ApiProcess, settings: Settings
) -> None:
    # Into the workspace: printed, it would reach the result redacted.
    session_id, run_id = alice.session(bash("printenv CCQ_SESSION_TOKEN > token"))
    ran = alice.wait_run(run_id)
    assert ran["status"] == "succeeded", ran
    workspace = SessionDirs.for_session(settings.data_dir, session_id).workspace
    token = (workspace / "token").read_text().strip()
    assert token.startswith(session_tokens.TOKEN_PREFIX)
    Api(api_server, token).get(f"/sessions/{session_id}", status=401)


def test_mallory_cannot_see_alices_tree(alice: Api, mallory: Api) -> None:
    parent_id, _ = alice.session("alice's")
    mallory.get(f"/sessions/{parent_id}/children", status=404)
    mallory.post(f"/sessions/{parent_id}/fanout", {"prompts": ["x"]}, 404)
    mallory.post(f"/sessions/{parent_id}/children", {"prompt": "x"}, 404)
