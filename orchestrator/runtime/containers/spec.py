"""What a session's container is made of (its directories, limits and labels), and the
handle the rest of ccq holds for one: plain values, nothing of docker-py."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.runtime import nofollow
from orchestrator.runtime.containers.network import OPEN, NetworkPolicy
from orchestrator.runtime.labels import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_PARENT,
    LABEL_SESSION,
)
from orchestrator.runtime.nofollow import CONTAINER_OWNED, ROOT_OWNED

CONTAINER_WORKSPACE = "/workspace"
# Where a session sees its children's workspaces: a mount of its own, inside /workspace.
CHILDREN_DIR = "children"
CONTAINER_CHILDREN = f"{CONTAINER_WORKSPACE}/{CHILDREN_DIR}"
CONTAINER_HOME = "/home/claude"
CONTAINER_CLAUDE_HOME = f"{CONTAINER_HOME}/.claude"
CONTAINER_UID = 1000
# System directories first: nothing the session can write comes before them (its root
# filesystem is read-only; ~/.local/bin, where `pip --user` and `npm -g` put tools, last).
CONTAINER_PATH = (
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/home/claude/.local/bin"
)
SESSIONS_DIR = "sessions"
WORKSPACE_DIR = "workspace"
CLAUDE_HOME_DIR = "claude-home"


@dataclass(frozen=True)
class SessionDirs:
    """A session's host directories, which outlive its containers.

    Under ``<data>/sessions``, for session S of the tree rooted at R (S = R for a root)::

        <R>/                      root-owned 0755
          workspace/              R's workspace (uid 1000), R's /workspace
          children/               root-owned
            <S>/                  root-owned: S's /workspace/children (a mount of its own)
              <C>/                child C's workspace (uid 1000), C's /workspace
        <S>/                      root-owned
          claude-home/            S's /home/claude/.claude (uid 1000)

    Every directory on the way to a bind source is one no container can write; only
    the last one (the workspace, the Claude home) is a container's, and it is a mount
    point in that container, so it cannot be renamed there. A parent sees a child's
    workspace through its own children mount, whose entries it cannot rename or
    replace. :meth:`create` walks all of it without following symlinks.
    """

    data_dir: Path
    # Root first, this session last.
    lineage: tuple[str, ...]

    @classmethod
    def for_session(cls, data_dir: Path, session_id: str) -> SessionDirs:
        """A root session's directories."""
        return cls(data_dir, (session_id,))

    @classmethod
    def for_lineage(cls, data_dir: Path, lineage: Sequence[str]) -> SessionDirs:
        """The directories of the last session of ``lineage`` (root first)."""
        if not lineage:
            raise ValueError("a lineage names at least the session itself")
        return cls(data_dir, tuple(lineage))

    @property
    def session_id(self) -> str:
        return self.lineage[-1]

    @property
    def root_id(self) -> str:
        return self.lineage[0]

    @property
    def sessions(self) -> Path:
        return self.data_dir / SESSIONS_DIR

    @property
    def workspace_parts(self) -> tuple[str, ...]:
        """The workspace's path below ``sessions``."""
        if len(self.lineage) == 1:
            return (self.root_id, WORKSPACE_DIR)
        return (self.root_id, CHILDREN_DIR, self.lineage[-2], self.session_id)

    @property
    def children_parts(self) -> tuple[str, ...]:
        """Below ``sessions``: the directory of this session's children's workspaces."""
        return (self.root_id, CHILDREN_DIR, self.session_id)

    @property
    def workspace(self) -> Path:
        return self.sessions.joinpath(*self.workspace_parts)

    @property
    def children(self) -> Path:
        """Mounted at ``/workspace/children``: each child's workspace is in it."""
        return self.sessions.joinpath(*self.children_parts)

    @property
    def claude_home(self) -> Path:
        return self.sessions / self.session_id / CLAUDE_HOME_DIR

    def create(self) -> None:
        """Make every directory (idempotent), none through a symlink.

        As root, the directories on the way are root's (0755) and the workspace and the
        Claude home uid 1000's; a directory found with another owner is given the right
        one. A symlink (or file) on the way raises
        :class:`~orchestrator.runtime.nofollow.UnsafePath`; none is ever followed.
        The workspace's own ``children`` (the children mount's mount point, which the
        session could have replaced) is made a directory again if it is not one.
        """
        *ways, last = self.workspace_parts
        workspace_parts = [(name, ROOT_OWNED) for name in ways] + [(last, CONTAINER_OWNED)]
        with (
            nofollow.open_trusted(self.data_dir, create=True) as data,
            nofollow.walk(data, [(SESSIONS_DIR, ROOT_OWNED)]) as sessions,
        ):
            with nofollow.walk(sessions, workspace_parts) as workspace:
                mount_point = nofollow.ensure_dir(
                    workspace, CHILDREN_DIR, CONTAINER_OWNED, replace=True
                )
                os.close(mount_point)
            nofollow.ensure_path(sessions, [(name, ROOT_OWNED) for name in self.children_parts])
            nofollow.ensure_path(
                sessions, [(self.session_id, ROOT_OWNED), (CLAUDE_HOME_DIR, CONTAINER_OWNED)]
            )

    def delete(self, descendants: Sequence[str] = ()) -> None:
        """Delete every directory of this session and of its ``descendants``.

        Walked without following symlinks, and removed through descriptors: nothing
        outside ``<data>/sessions`` is ever touched. A root takes its whole tree
        (``<R>/``); a child its workspace, its children directory (its descendants'
        workspaces) and each member's own directory (its Claude home).

        Raises:
            OSError: a directory could not be removed (the rest is still attempted).
        """
        if not self.data_dir.is_dir():
            return
        failures: list[OSError] = []
        with nofollow.open_trusted(self.data_dir) as data:

            def remove(parent: Sequence[str], name: str) -> None:
                try:
                    with nofollow.open_path(data, (SESSIONS_DIR, *parent)) as fd:
                        if fd is not None:
                            nofollow.remove_tree(fd, name)
                except OSError as exc:
                    failures.append(exc)

            if len(self.lineage) == 1:
                remove((), self.root_id)  # its workspace and every descendant's
            else:
                *parent, name = self.workspace_parts
                remove(parent, name)
            for member in (self.session_id, *descendants):
                remove((self.root_id, CHILDREN_DIR), member)
                remove((), member)
        if failures:
            raise failures[0]


@dataclass(frozen=True)
class ContainerLimits:
    memory_bytes: int = 2 * 1024**3
    nano_cpus: int = 2 * 10**9
    pids: int = 512
    # Each of /tmp and /home/claude, tmpfs (their pages count against memory_bytes).
    tmpfs_bytes: int = 512 * 1024**2

    @classmethod
    def of(
        cls,
        *,
        memory_mb: int,
        cpus: float,
        pids: int,
        tmp_mb: int = 512,
    ) -> ContainerLimits:
        return cls(
            memory_bytes=memory_mb * 1024**2,
            nano_cpus=round(cpus * 10**9),
            pids=pids,
            tmpfs_bytes=tmp_mb * 1024**2,
        )


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
