"""The Docker engine behind a small interface: one labelled container per session.

Containers are found again by their ``ccq.session`` label after any restart of the worker,
so nothing here keeps state in memory. The CLI runs through ``docker exec`` with its
prompt on stdin; output is read from the hijacked exec socket in short polls, so callers
can enforce silence and time limits between reads.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from orchestrator.runtime.labels import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_PARENT,
    LABEL_SESSION,
)
from orchestrator.runtime.session_network import NetworkError, ensure_network

CONTAINER_WORKSPACE = "/workspace"
# Children's workspaces, inside their parent's.
CHILDREN_DIR = "children"
CONTAINER_CLAUDE_HOME = "/home/claude/.claude"
CONTAINER_UID = 1000


class RuntimeError_(Exception):
    """Root of every error raised by the container runtime."""


class ContainerMissing(RuntimeError_):
    pass


@dataclass(frozen=True)
class SessionDirs:
    """Host directories that outlive the container: the workspace and the Claude home."""

    workspace: Path
    claude_home: Path

    @classmethod
    def for_session(cls, data_dir: Path, session_id: str) -> SessionDirs:
        """A root session's directories."""
        return cls.for_lineage(data_dir, [session_id])

    @classmethod
    def for_lineage(cls, data_dir: Path, lineage: Sequence[str]) -> SessionDirs:
        """The directories of the last session of ``lineage`` (root first).

        A child's workspace lies inside its parent's, at ``children/<child_id>``, so the
        parent's container sees it as ``/workspace/children/<child_id>/``. Every session
        keeps its Claude home under its own ID.
        """
        root, *descendants = lineage
        workspace = data_dir / "sessions" / root / "workspace"
        for session_id in descendants:
            workspace = workspace / CHILDREN_DIR / session_id
        claude_home = data_dir / "sessions" / lineage[-1] / "claude-home"
        return cls(workspace=workspace, claude_home=claude_home)

    def create(self) -> None:
        for path in (self.workspace, self.claude_home):
            missing = [p for p in (path, *path.parents) if not p.exists()]
            path.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                # The CLI runs as uid 1000 in the container and must own its files, and
                # the `children` directories a parent's workspace gains on the way.
                for made in missing:
                    if made == path or made.name == CHILDREN_DIR:
                        os.chown(made, CONTAINER_UID, CONTAINER_UID)


@dataclass(frozen=True)
class ContainerLimits:
    memory_bytes: int = 2 * 1024**3
    nano_cpus: int = 2 * 10**9
    pids: int = 512


@dataclass(frozen=True)
class SessionContainerSpec:
    session_id: str
    owner: str
    image: str
    dirs: SessionDirs
    instance: str = "ccq"
    parent_id: str | None = None
    # The network it joins (ccq's session network; None: the engine's default bridge).
    network: str | None = None
    limits: ContainerLimits = field(default_factory=ContainerLimits)
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"ccq-session-{self.session_id}"

    def labels(self) -> dict[str, str]:
        return {
            LABEL_MANAGED: "1",
            LABEL_INSTANCE: self.instance,
            LABEL_SESSION: self.session_id,
            LABEL_OWNER: self.owner,
            LABEL_PARENT: self.parent_id or "",
            **self.extra_labels,
        }


@dataclass(frozen=True)
class ManagedContainer:
    """A session container as the reaper sees it (docker-py's objects stay in here)."""

    id: str
    name: str
    session_id: str
    status: str  # Docker's: created, running, exited, ...

    @property
    def running(self) -> bool:
        return self.status == "running"


class FrameDecoder:
    """Decodes Docker's multiplexed stream (8-byte header: stream, 0, 0, 0, size u32 BE)."""

    STDOUT, STDERR = 1, 2

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= 8:
            stream, size = struct.unpack(">BxxxL", self._buffer[:8])
            if len(self._buffer) < 8 + size:
                break
            frames.append((stream, bytes(self._buffer[8 : 8 + size])))
            del self._buffer[: 8 + size]
        return frames


@dataclass(frozen=True)
class Output:
    stream: int  # FrameDecoder.STDOUT or STDERR
    data: bytes


class ExecProcess:
    """A running ``docker exec``: write stdin once, then poll its output."""

    def __init__(self, api: docker.APIClient, exec_id: str, sock: Any) -> None:
        self._api = api
        self.exec_id = exec_id
        # exec_start hands back a SocketIO wrapper holding an io reference on the socket:
        # both must be closed for the file descriptor to be released.
        self._wrapper = sock
        self._sock: socket.socket = getattr(sock, "_sock", sock)
        self._decoder = FrameDecoder()
        self.eof = False

    def write_stdin_and_close(self, data: bytes) -> None:
        self._sock.sendall(data)
        # Half-close: the engine closes the process's stdin, and output keeps flowing.
        self._sock.shutdown(socket.SHUT_WR)

    def poll(self, timeout: float) -> list[Output]:
        """Output that arrived within ``timeout`` seconds ([] on silence); sets ``eof``."""
        if self.eof:
            return []
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return []
        if not data:
            self.eof = True
            return []
        return [Output(s, d) for s, d in self._decoder.feed(data)]

    def exit_code(self) -> int | None:
        info = self._api.exec_inspect(self.exec_id)
        code = info.get("ExitCode")
        return None if info.get("Running") else code

    def close(self) -> None:
        for closable in (self._wrapper, self._sock):
            with contextlib.suppress(OSError):
                closable.close()


class ContainerRuntime:
    """Session containers on one Docker engine."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    def find(self, session_id: str) -> Container | None:
        found = self.client.containers.list(
            all=True, filters={"label": f"{LABEL_SESSION}={session_id}"}
        )
        return found[0] if found else None

    def ensure_running(self, spec: SessionContainerSpec) -> Container:
        """The session's container, running; created anew over the same directories if
        it is gone or not running.

        A container that is not running is never started again but replaced: everything
        a session keeps lives in its directories, and a new container picks up the
        current image, network and limits.
        """
        container = self.find(spec.session_id)
        if container is not None and container.status != "running":
            self.remove_container(container.id)
            container = None
        if container is None:
            spec.dirs.create()
            container = self._create(spec)
        if container.status != "running":
            container.start()
            container.reload()
        return container

    def _create(self, spec: SessionContainerSpec) -> Container:
        try:
            network = ensure_network(self.client, spec.network or "bridge", spec.instance)
        except NetworkError as exc:
            raise RuntimeError_(str(exc)) from exc
        try:
            return self.client.containers.create(
                spec.image,
                name=spec.name,
                labels=spec.labels(),
                user=f"{CONTAINER_UID}:{CONTAINER_UID}",
                working_dir=CONTAINER_WORKSPACE,
                volumes={
                    str(spec.dirs.workspace): {"bind": CONTAINER_WORKSPACE, "mode": "rw"},
                    str(spec.dirs.claude_home): {"bind": CONTAINER_CLAUDE_HOME, "mode": "rw"},
                },
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                mem_limit=spec.limits.memory_bytes,
                nano_cpus=spec.limits.nano_cpus,
                pids_limit=spec.limits.pids,
                network=network.name,
                extra_hosts=network.extra_hosts(),
                detach=True,
            )
        except docker.errors.ImageNotFound as exc:
            raise RuntimeError_(f"worker image {spec.image} not found; run `make image`") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # created concurrently under the same name
                existing = self.find(spec.session_id)
                if existing is not None:
                    return existing
            raise RuntimeError_(f"cannot create container: {exc.explanation}") from exc

    def exec(
        self,
        container: Container,
        argv: list[str],
        *,
        env: Mapping[str, str],
        workdir: str = CONTAINER_WORKSPACE,
    ) -> ExecProcess:
        """Start ``argv`` in the container with stdin attached; nothing passes a shell."""
        api = self.client.api
        exec_id = api.exec_create(
            container.id,
            argv,
            stdin=True,
            stdout=True,
            stderr=True,
            tty=False,
            environment=dict(env),
            workdir=workdir,
            user=f"{CONTAINER_UID}:{CONTAINER_UID}",
        )["Id"]
        sock = api.exec_start(exec_id, socket=True, demux=False)
        return ExecProcess(api, exec_id, sock)

    def remove(self, session_id: str) -> bool:
        """Remove the session's container, running or not (its directories stay)."""
        container = self.find(session_id)
        if container is None:
            return False
        return self.remove_container(container.id)

    def remove_container(self, container_id: str) -> bool:
        """Remove one container, running or not; False if it was already gone (or going)."""
        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another removal of it is under way
                return False
            raise RuntimeError_(f"cannot remove container: {exc.explanation}") from exc
        return True

    def managed(self, instance: str) -> list[ManagedContainer]:
        """Every session container of this ccq instance, running or not (one list call,
        no inspect per container: a host may hold thousands)."""
        listed = self.client.api.containers(
            all=True, filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_INSTANCE}={instance}"]}
        )
        return [
            ManagedContainer(
                id=c["Id"],
                name=(c.get("Names") or ["?"])[0].lstrip("/"),
                session_id=(c.get("Labels") or {}).get(LABEL_SESSION, ""),
                status=c.get("State", ""),
            )
            for c in listed
        ]
