"""A session container is a box (issue 15): a parent cannot redirect its child's
workspace, the root filesystem is read-only, and nothing a session plants on its PATH
defeats cancel, the time limit or the real CLI.

Real stack, real Docker, the real CLI in the worker image; the scripted model server
makes the CLI run the Bash commands a hostile session would.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import docker
import pytest

from model_server.server import ModelServer
from orchestrator.auth.owner_tokens import mint_token
from orchestrator.runtime.cli_runner import CliRunResult, StopReason
from orchestrator.runtime.containers import (
    CONTAINER_PATH,
    ContainerRuntime,
    SessionContainer,
    SessionContainerSpec,
    SessionDirs,
)
from orchestrator.settings import Settings
from tests.http_api import SessionApi as Api
from tests.http_api import bash
from tests.processes import ApiProcess, WorkerProcess
from tests.scripted_cli import run_scripted_cli
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

HOST_ROOT_NAMES = {"bin", "boot", "etc", "proc", "usr", "var", "sys", "root"}


@pytest.fixture(scope="module")
def alice(api_server: ApiProcess, settings: Settings, worker: WorkerProcess) -> Api:
    return Api(api_server, mint_token(settings, "alice"))


def _codes(text: str) -> dict[str, int]:
    """``name=CODE`` pairs a Bash command printed."""
    return {name: int(code) for name, code in re.findall(r"(\w[\w-]*)=(\d+)", text)}


# --- children's files ---------------------------------------------------------------


def test_a_parent_cannot_redirect_a_stopped_childs_workspace_to_the_host(
    alice: Api, settings: Settings, runtime: ContainerRuntime
) -> None:
    # The escape of issue 15: root R, child C, C stopped; R replaces
    # /workspace/children/<C> with a symlink to / ; C's next container would mount it.
    root_id, root_run = alice.session("root")
    assert alice.wait_run(root_run)["status"] == "succeeded"
    child_id, child_run = alice.child(root_id, bash("echo mine > marker.txt && echo written"))
    assert alice.wait_run(child_run)["status"] == "succeeded"
    alice.post(f"/sessions/{child_id}/stop", {}, 202)
    wait_for(lambda: runtime.find(child_id) is None, timeout=60, what="the child's container")

    attack = alice.wait_run(
        alice.prompt(
            root_id,
            bash(
                f"cd /workspace/children; id -u; ls; "
                f"ln -s / {child_id}.new; echo link=$?; "
                f"mv -T {child_id}.new {child_id}; echo replace=$?; "
                f"mv {child_id} {child_id}.old; echo rename=$?; "
                f"rmdir {child_id}; echo remove=$?; "
                f"cd /; mv /workspace/children /workspace/elsewhere; echo move-children=$?; "
                f"rmdir /workspace/children; echo rmdir-children=$?; "
                f"ln -sfn / /workspace/children; echo link-children=$?; "
                f"test -d /workspace/children/{child_id} && echo still-there=0"
            ),
        )
    )
    assert attack["status"] == "succeeded", attack
    text = attack["result"]
    assert text.startswith("tool result: 1000\n"), text  # the session's uid, as in the issue
    assert child_id in text  # it saw the child's workspace
    codes = _codes(text)
    for step in ("link", "replace", "rename", "remove", "move-children", "rmdir-children"):
        assert codes.get(step, 0) != 0, (step, text)
    assert codes.get("still-there") == 0, text
    workspace = SessionDirs.for_lineage(settings.data_dir, [root_id, child_id]).workspace
    assert workspace.is_dir()
    assert not workspace.is_symlink()

    # The child's next run, in a new container, sees its own files and nothing else.
    seen = alice.wait_run(alice.prompt(child_id, bash("ls -a /workspace; cat marker.txt")))
    assert seen["status"] == "succeeded", seen
    assert runtime.find(child_id) is not None  # a new container did mount it
    names = set(seen["result"].removeprefix("tool result: ").split("\n"))
    assert {"marker.txt", "mine"} <= names, seen["result"]
    assert not names & HOST_ROOT_NAMES, seen["result"]


def test_a_child_made_while_its_parents_container_runs_appears_in_it_at_once(
    alice: Api, runtime: ContainerRuntime
) -> None:
    root_id, root_run = alice.session("root")
    alice.wait_run(root_run)
    before = runtime.find(root_id)
    assert before is not None
    assert before.running

    child_id, child_run = alice.child(root_id, bash("echo hello-from-child > note.txt"))
    assert alice.wait_run(child_run)["status"] == "succeeded"
    grandchild_id, grandchild_run = alice.child(child_id, bash("echo deep > deep.txt"))
    assert alice.wait_run(grandchild_run)["status"] == "succeeded"

    read = alice.wait_run(
        alice.prompt(
            root_id, bash(f"cat /workspace/children/{child_id}/note.txt; ls /workspace/children")
        )
    )
    assert read["result"] == f"tool result: hello-from-child\n{child_id}", read
    after = runtime.find(root_id)
    assert after is not None
    assert after.id == before.id  # the same container: the child appeared in its mount
    # The child sees its own child; the grandchild's files are not in the root's view.
    deep = alice.wait_run(
        alice.prompt(child_id, bash(f"cat /workspace/children/{grandchild_id}/deep.txt"))
    )
    assert deep["result"] == "tool result: deep", deep


# --- the container itself -------------------------------------------------------------


def _sh(docker_client: docker.DockerClient, handle: SessionContainer, script: str) -> str:
    container = docker_client.containers.get(handle.id)
    result = container.exec_run(
        ["/bin/sh", "-c", script], user="1000:1000", environment={"PATH": CONTAINER_PATH}
    )
    return str(result.output.decode())


def test_the_root_filesystem_is_read_only_with_tmp_and_home_writable(
    runtime: ContainerRuntime, spec: SessionContainerSpec, docker_client: docker.DockerClient
) -> None:
    handle = runtime.ensure_running(spec)
    out = _sh(
        docker_client,
        handle,
        "for f in /usr/local/bin/x /etc/x /usr/bin/x /x /var/tmp/x; do "
        '  touch "$f" 2>/dev/null; echo "$(basename $(dirname $f))=$?"; done; '
        "touch /tmp/x; echo tmp=$?; "
        "mkdir -p ~/.local/bin && touch ~/.local/bin/x; echo home=$?; "
        "printf '#!/bin/sh\\necho ran\\n' > /tmp/t.sh && chmod +x /tmp/t.sh && /tmp/t.sh; "
        "touch /workspace/x; echo workspace=$?; "
        "touch /workspace/children/x 2>/dev/null; echo children=$?; "
        "grep CapEff /proc/self/status; id -u; echo $PATH",
    )
    codes = _codes(out)
    for place in ("bin", "etc", "tmp", "workspace"):
        assert place in codes, out
    assert codes["bin"] != 0  # /usr/local/bin, /usr/bin: read-only
    assert codes["etc"] != 0
    assert codes["tmp"] == 0  # /tmp (the last "tmp" key: /var/tmp is read-only too)
    assert codes["home"] == 0
    assert codes["workspace"] == 0
    assert codes["children"] != 0  # root-owned: entries are ccq's alone
    assert "ran" in out.split("\n")  # /tmp allows exec (builds run there)
    assert "CapEff:\t0000000000000000" in out
    assert f"1000\n{CONTAINER_PATH}" in out

    attrs = docker_client.containers.get(handle.id).attrs
    host = attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) == {"/tmp", "/home/claude"}
    assert host["Memory"] == spec.limits.memory_bytes
    assert host["NanoCpus"] == spec.limits.nano_cpus
    assert host["PidsLimit"] == spec.limits.pids
    mounts = {m["Destination"]: m["Source"] for m in attrs["Mounts"]}
    assert mounts["/workspace/children"] == str(spec.dirs.children)


# --- PATH cannot be hijacked -------------------------------------------------------------

PLANT = """
plant='#!/bin/sh
echo "HIJACKED $0" >> /tmp/hijacked.log
exec /usr/bin/sleep 100000'
mkdir -p "$HOME/.local/bin"
for d in $(echo "$PATH" | tr : ' ') /tmp /workspace "$HOME/.local/bin"; do
  for n in sh kill claude tr grep sleep bash env ps; do
    if printf '%s\\n' "$plant" > "$d/$n" 2>/dev/null && chmod +x "$d/$n"; then
      echo "planted $d/$n"
    fi
  done
done
"""


def _cli(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    model: ModelServer,
    prompt: str,
    **options: Any,
) -> CliRunResult:
    return run_scripted_cli(runtime, spec, model, prompt, events=[], **options)


def _session_processes(docker_client: docker.DockerClient, handle: SessionContainer) -> list[str]:
    """Every process in the container but tini and its idle sleep (and ps itself)."""
    top = docker_client.containers.get(handle.id).top(ps_args="-eo pid,args")
    return [
        " ".join(row[1:])
        for row in top["Processes"]
        if " ".join(row[1:]) not in ("tini -- sleep infinity", "sleep infinity")
    ]


def test_a_session_that_plants_sh_kill_and_claude_is_still_cancelled_timed_out_and_run_by_the_real_cli(  # noqa: E501
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    model: ModelServer,
    docker_client: docker.DockerClient,
) -> None:
    planted = _cli(runtime, spec, model, bash(PLANT), resume=False)
    assert planted.stop_reason is StopReason.EXITED, planted
    text = planted.outcome.result_text or ""
    assert "planted /home/claude/.local/bin/claude" in text, text
    assert "planted /home/claude/.local/bin/sh" in text
    assert "planted /tmp/kill" in text
    assert "planted /usr/local/bin/" not in text  # the root filesystem is read-only
    handle = runtime.ensure_running(spec)

    # Cancelled mid-command, with a process that hid from the kill: a new session,
    # without CCQ_RUN_ID, double-forked away from the CLI.
    hidden = "sleep 100001"

    def hiding() -> bool:
        return any(hidden in p for p in _session_processes(docker_client, handle))

    cancelled = _cli(
        runtime,
        spec,
        model,
        bash(f"(setsid env -u CCQ_RUN_ID {hidden} </dev/null >/dev/null 2>&1 &); sleep 600"),
        resume=True,
        should_cancel=hiding,
    )
    assert cancelled.stop_reason is StopReason.CANCELLED
    # The kill helper ended everything, the hidden process included: the container stays.
    assert runtime.find(spec.session_id) == handle
    assert _session_processes(docker_client, handle) == []

    timed_out = _cli(
        runtime,
        spec,
        model,
        bash("echo waiting; sleep 600; echo never"),
        resume=True,
        time_limit=15,
    )
    assert timed_out.stop_reason is StopReason.TIME_LIMIT
    assert runtime.find(spec.session_id) == handle
    assert _session_processes(docker_client, handle) == []

    # The next run is the real CLI, answering through the scripted model.
    answered = _cli(runtime, spec, model, "still the real CLI?", resume=True)
    assert answered.stop_reason is StopReason.EXITED
    assert (answered.outcome.result_text or "").endswith("still the real CLI?"), answered
    assert answered.outcome.cli_version  # the real CLI's init event
    assert runtime.find(spec.session_id) == handle
    check = _sh(
        docker_client,
        handle,
        "test -e /tmp/hijacked.log; echo log=$?; test -x ~/.local/bin/claude; echo planted=$?",
    )
    assert _codes(check)["planted"] == 0, check  # still planted, never run
    assert _codes(check)["log"] != 0, check  # nothing planted ever ran


def test_a_process_the_kill_helper_cannot_end_gets_the_container_removed(
    runtime: ContainerRuntime,
    spec: SessionContainerSpec,
    model: ModelServer,
    docker_client: docker.DockerClient,
) -> None:
    handle = runtime.ensure_running(spec)
    # Started by the test as another user: uid 1000's helper cannot signal it.
    docker_client.containers.get(handle.id).exec_run(
        ["/usr/bin/sleep", "100002"], user="0", detach=True
    )
    wait_for(
        lambda: any("sleep 100002" in p for p in _session_processes(docker_client, handle)),
        timeout=10,
        what="the unkillable process",
    )

    stopped = _cli(
        runtime,
        spec,
        model,
        bash("echo waiting; sleep 600"),
        resume=False,
        should_cancel=lambda: True,
    )

    assert stopped.stop_reason is StopReason.CANCELLED
    assert runtime.find(spec.session_id) is None  # removed: its files stay
    assert spec.dirs.claude_home.is_dir()


def test_deleting_a_tree_never_follows_what_its_sessions_planted(
    alice: Api, settings: Settings, tmp_path: Path
) -> None:
    outside = tmp_path / "host-files"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    plant = (
        f"ln -s {outside} /workspace/link && ln -s {outside}/precious.txt /workspace/file "
        f"&& ln -s {outside} ~/.claude/link && echo planted"
    )
    root_id, root_run = alice.session(bash(plant))
    assert alice.wait_run(root_run)["result"] == "tool result: planted"
    child_id, child_run = alice.child(root_id, bash(plant))
    assert alice.wait_run(child_run)["result"] == "tool result: planted"
    root_dirs = SessionDirs.for_session(settings.data_dir, root_id)
    assert (root_dirs.workspace / "link").is_symlink()

    alice.call("DELETE", f"/sessions/{root_id}", status=202)

    sessions = settings.data_dir / "sessions"
    wait_for(
        lambda: not any(os.path.lexists(sessions / i) for i in (root_id, child_id)),
        timeout=60,
        what="the tree's files to be removed",
    )
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me\n"


def test_on_the_stack_a_session_with_planted_tools_is_cancelled_and_answers_again(
    alice: Api, runtime: ContainerRuntime, docker_client: docker.DockerClient
) -> None:
    session_id, planting = alice.session(bash(PLANT))
    assert "planted /home/claude/.local/bin/kill" in alice.wait_run(planting)["result"]
    slow = alice.prompt(
        session_id,
        bash("(setsid env -u CCQ_RUN_ID sleep 100003 </dev/null >/dev/null 2>&1 &); sleep 600"),
    )
    handle = runtime.find(session_id)
    assert handle is not None
    wait_for(
        lambda: any("sleep 600" in p for p in _session_processes(docker_client, handle)),
        timeout=60,
        what="the slow command to run",
    )

    alice.post(f"/runs/{slow}/cancel", {}, 202)

    assert alice.wait_run(slow, timeout=60)["status"] == "cancelled"
    assert runtime.find(session_id) == handle  # ended by the helper, in place
    assert _session_processes(docker_client, handle) == []
    again = alice.wait_run(alice.prompt(session_id, "still the real CLI?"))
    assert again["status"] == "succeeded", again
    assert again["result"].endswith("still the real CLI?")
    assert "no-log" in _sh(docker_client, handle, "test -e /tmp/hijacked.log || echo no-log")
