"""The container runtime on the real engine: callers hold handles, a container that is gone
is ``ContainerMissing`` (never docker-py's ``NotFound``), and a process shares one client."""

from __future__ import annotations

import dataclasses
import os
import uuid

import docker
import pytest

from orchestrator.runtime.cli_runner import run_cli
from orchestrator.runtime.containers import (
    ContainerMissing,
    ContainerRuntime,
    ImageMissing,
    SessionContainer,
    SessionContainerSpec,
    docker_client,
)
from orchestrator.settings import Settings

pytestmark = pytest.mark.integration


def _removed_behind_its_back(docker_client: docker.DockerClient, handle: SessionContainer) -> None:
    """As an operator's ``docker rm -f`` would: the runtime is not told."""
    docker_client.containers.get(handle.id).remove(force=True)


def test_ensure_running_and_find_hand_out_handles(
    runtime: ContainerRuntime, spec: SessionContainerSpec
) -> None:
    handle = runtime.ensure_running(spec)

    assert type(handle) is SessionContainer
    assert (handle.name, handle.session_id, handle.running) == (spec.name, spec.session_id, True)
    assert runtime.find(spec.session_id) == handle
    assert handle in runtime.managed(spec.instance)
    assert runtime.remove_container(handle)
    assert runtime.find(spec.session_id) is None


def test_a_container_removed_behind_the_runtimes_back_is_container_missing(
    runtime: ContainerRuntime, spec: SessionContainerSpec, docker_client: docker.DockerClient
) -> None:
    handle = runtime.ensure_running(spec)
    _removed_behind_its_back(docker_client, handle)

    with pytest.raises(ContainerMissing, match=handle.name) as caught:
        runtime.exec(handle, ["true"], env={})
    assert isinstance(caught.value.__cause__, docker.errors.NotFound)
    with pytest.raises(ContainerMissing):
        run_cli(
            runtime,
            handle,
            run_id=str(uuid.uuid4()),
            argv=["true"],
            prompt="",
            env={},
            on_event=lambda _: None,
            silence_timeout=10,
            time_limit=10,
        )
    # Removing what is already gone is no error, and the next prompt gets a new one.
    assert runtime.remove_container(handle) is False
    assert runtime.find(spec.session_id) is None
    assert runtime.ensure_running(spec).id != handle.id


def test_an_exec_whose_container_goes_is_container_missing(
    runtime: ContainerRuntime, spec: SessionContainerSpec, docker_client: docker.DockerClient
) -> None:
    handle = runtime.ensure_running(spec)
    process = runtime.exec(handle, ["sleep", "60"], env={})
    try:
        assert process.exit_code() is None  # still running
        _removed_behind_its_back(docker_client, handle)
        with pytest.raises(ContainerMissing):
            process.exit_code()
    finally:
        process.close()


def test_a_missing_image_is_image_missing_and_the_engine_check_says_so(
    runtime: ContainerRuntime, spec: SessionContainerSpec, settings: Settings
) -> None:
    absent = f"ccq-test-absent-{uuid.uuid4().hex[:8]}:never"
    with pytest.raises(ImageMissing, match="run `make image`"):
        runtime.ensure_running(dataclasses.replace(spec, image=absent))
    with pytest.raises(ImageMissing):
        runtime.check_engine(absent)
    runtime.check_engine(settings.worker_image)


def test_a_process_shares_one_client_and_a_forked_child_makes_its_own() -> None:
    parent = docker_client()
    assert docker_client() is parent
    assert ContainerRuntime().find(str(uuid.uuid4())) is None  # the shared one, by default

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        try:
            child = docker_client()
            ok = child is not parent and child is docker_client() and child.ping()
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert docker_client() is parent
