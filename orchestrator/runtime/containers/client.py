"""One Docker client per process, shared by everything in it that talks to the engine,
and the translation of docker-py's errors into the runtime's own.

A client holds a pool of connections to the engine's socket. Connections must not cross a
fork (a prefork Celery pool forks after its parent may have used one), so the client is
kept with the ID of the process that made it, and a forked child makes its own on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
import requests

from orchestrator.runtime.containers.errors import (
    ContainerError,
    ContainerMissing,
    EngineUnavailable,
    ImageMissing,
)

# Seconds an engine call may take: creating a container or pulling an image can be slow.
ENGINE_TIMEOUT = 120

_lock = threading.Lock()
_shared: tuple[int, docker.DockerClient] | None = None


def docker_client() -> docker.DockerClient:
    """This process's Docker client, connected on first use.

    Raises:
        EngineUnavailable: the engine does not answer (nothing is kept: the next call
            tries again).
    """
    global _shared
    pid = os.getpid()
    with _lock:
        if _shared is None or _shared[0] != pid:
            # A parent's client is dropped, not closed: closing would shut sockets the
            # parent still uses.
            with engine_errors("cannot connect to the Docker engine"):
                _shared = (pid, docker.from_env(timeout=ENGINE_TIMEOUT))
        return _shared[1]


def _after_fork_in_child() -> None:
    global _lock
    # Another thread of the parent may have held the lock at the fork: the child's copy
    # would stay locked forever.
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def engine_errors(doing: str) -> Iterator[None]:
    """Re-raise docker-py's (and ``requests``') errors as the runtime's, prefixed with
    ``doing`` (what the runtime was doing, e.g. ``cannot start container X``)."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageMissing(f"{doing}: {_explain(exc)}") from exc
    except docker.errors.NotFound as exc:
        raise ContainerMissing(f"{doing}: {_explain(exc)}") from exc
    except docker.errors.APIError as exc:
        raise ContainerError(f"{doing}: {_explain(exc)}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise EngineUnavailable(f"{doing}: {exc}") from exc


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)
