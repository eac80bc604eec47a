"""What a session's container is made of (its directories, limits and labels), and the
handle the rest of ccq holds for one: plain values, nothing of docker-py."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.runtime.containers.network import OPEN, NetworkPolicy
from orchestrator.runtime.labels import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_PARENT,
    LABEL_SESSION,
)

CONTAINER_WORKSPACE = "/workspace"
# Children's workspaces, inside their parent's.
CHILDREN_DIR = "children"
CONTAINER_CLAUDE_HOME = "/home/claude/.claude"
CONTAINER_UID = 1000


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
    # The network it joins (ccq's session network; None: the engine's default bridge),
    # and how that network is made (isolated: only the gateway's ports on the host).
    network: str | None = None
    network_policy: NetworkPolicy = OPEN
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
class SessionContainer:
    """A handle on a session's container: what callers hold instead of docker-py's object.

    A value, not a live view: ``status`` is the engine's word when the handle was made.
    Everything done to the container goes through
    :class:`~orchestrator.runtime.containers.ContainerRuntime`, which raises
    :class:`~orchestrator.runtime.containers.ContainerMissing` once it is gone.
    """

    id: str
    name: str
    session_id: str
    status: str  # Docker's: created, running, exited, ...

    @property
    def running(self) -> bool:
        return self.status == "running"
