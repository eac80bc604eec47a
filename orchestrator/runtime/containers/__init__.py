"""Session containers on the Docker engine: the only code in ccq that uses docker-py.

The rest of ccq holds :class:`SessionContainer` handles (name, ID, session), asks
:class:`ContainerRuntime` to act on them, and catches :class:`ContainerError`, the one
root of what the runtime raises (docker-py's ``NotFound`` is :class:`ContainerMissing`).
A process shares one Docker client, :func:`docker_client`. ``tests/unit/test_docker_boundary.py``
fails if a module outside this package imports ``docker``.

- ``runtime``: :class:`ContainerRuntime`, the one entry point;
- ``spec``: a session container's directories (their layout), limits and labels, and
  the handle;
- ``exec_process``: a ``docker exec`` read in short polls;
- ``network``: the session network and the host's address on it;
- ``client``: the per-process client and the translation of docker-py's errors;
- ``errors``: the exceptions.
"""

from orchestrator.runtime.containers.client import docker_client
from orchestrator.runtime.containers.errors import (
    ContainerError,
    ContainerMissing,
    EngineUnavailable,
    ImageMissing,
    NetworkError,
)
from orchestrator.runtime.containers.exec_process import ExecProcess, FrameDecoder, Output
from orchestrator.runtime.containers.network import NetworkPolicy, SessionNetwork
from orchestrator.runtime.containers.runtime import ContainerRuntime
from orchestrator.runtime.containers.spec import (
    CHILDREN_DIR,
    CONTAINER_CHILDREN,
    CONTAINER_CLAUDE_HOME,
    CONTAINER_PATH,
    CONTAINER_UID,
    CONTAINER_WORKSPACE,
    ContainerLimits,
    SessionContainer,
    SessionContainerSpec,
    SessionDirs,
)

__all__ = [
    "CHILDREN_DIR",
    "CONTAINER_CHILDREN",
    "CONTAINER_CLAUDE_HOME",
    "CONTAINER_PATH",
    "CONTAINER_UID",
    "CONTAINER_WORKSPACE",
    "ContainerError",
    "ContainerLimits",
    "ContainerMissing",
    "ContainerRuntime",
    "EngineUnavailable",
    "ExecProcess",
    "FrameDecoder",
    "ImageMissing",
    "NetworkError",
    "NetworkPolicy",
    "Output",
    "SessionContainer",
    "SessionContainerSpec",
    "SessionDirs",
    "SessionNetwork",
    "docker_client",
]
