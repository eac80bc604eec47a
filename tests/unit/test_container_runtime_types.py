"""The container runtime's surface without an engine: the handle is a plain value, and
docker-py's errors come out as the runtime's, under one root."""

from __future__ import annotations

import dataclasses

import docker.errors
import pytest
import requests

from orchestrator.runtime.containers import (
    ContainerError,
    ContainerMissing,
    EngineUnavailable,
    ImageMissing,
    NetworkError,
    SessionContainer,
)
from orchestrator.runtime.containers.client import engine_errors


def test_the_handle_is_a_frozen_value_naming_the_container_and_its_session() -> None:
    handle = SessionContainer(id="c" * 64, name="ccq-session-s", session_id="s", status="running")

    assert handle.running
    assert not dataclasses.replace(handle, status="exited").running
    with pytest.raises(dataclasses.FrozenInstanceError):
        handle.status = "exited"  # type: ignore[misc]
    assert handle == SessionContainer("c" * 64, "ccq-session-s", "s", "running")
    assert len({handle, dataclasses.replace(handle)}) == 1  # hashable, compared by value
    assert [f.name for f in dataclasses.fields(handle)] == ["id", "name", "session_id", "status"]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (docker.errors.NotFound("No such container: x"), ContainerMissing),
        (docker.errors.ImageNotFound("No such image: x"), ImageMissing),
        (docker.errors.APIError("conflict"), ContainerError),
        (
            docker.errors.DockerException("Error while fetching the version"),
            EngineUnavailable,
        ),
        (requests.exceptions.ConnectionError("socket gone"), EngineUnavailable),
        (requests.exceptions.ReadTimeout("no answer"), EngineUnavailable),
    ],
)
def test_docker_errors_are_translated_at_the_boundary(
    raised: Exception, expected: type[ContainerError]
) -> None:
    with pytest.raises(expected, match=r"^doing it: ") as caught, engine_errors("doing it"):
        raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised  # the engine's own words stay in the chain


def test_the_runtimes_own_errors_and_others_pass_through_unchanged() -> None:
    with pytest.raises(NetworkError, match=r"^no gateway$"), engine_errors("doing it"):
        raise NetworkError("no gateway")
    with pytest.raises(ValueError, match=r"^not docker$"), engine_errors("doing it"):
        raise ValueError("not docker")


def test_every_error_of_the_runtime_has_one_root() -> None:
    for kind in (ContainerMissing, ImageMissing, EngineUnavailable, NetworkError):
        assert issubclass(kind, ContainerError)
    assert not issubclass(ContainerError, docker.errors.DockerException)
