"""How big a session's workspace is, measured without following a symlink.

A session's container writes its workspace freely, so the walk must neither leave the
tree (a symlink to ``/`` would make it measure the host) nor run for ever (a million
small files, a deep nest): every directory is opened with ``O_NOFOLLOW`` relative to its
parent's descriptor (:mod:`orchestrator.runtime.nofollow`), symlinks count as their own
size, and the walk stops after ``max_entries`` entries or ``MAX_DEPTH`` levels, saying
it is incomplete (its bytes are then a lower bound).

Standard library only, besides ccq's own descriptor walk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.runtime import nofollow
from orchestrator.runtime.containers.spec import SESSIONS_DIR, SessionDirs

# Directory levels walked below the workspace: each holds one descriptor open at a time.
MAX_DEPTH = 64
# Entries one workspace's measurement looks at; past it the size is a lower bound.
MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class TreeSize:
    """What a bounded walk counted: apparent bytes of regular files and symlinks."""

    bytes: int = 0
    entries: int = 0
    # False when the walk stopped at a bound or met an unreadable directory.
    complete: bool = True


def measure_tree(parent_fd: int, name: str, *, max_entries: int = MAX_ENTRIES) -> TreeSize:
    """The size of ``name`` in ``parent_fd`` and everything below it, no symlink followed.

    Absent: zero. A symlink or a file at the top counts as itself.
    """
    try:
        top = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return TreeSize()
    if not stat.S_ISDIR(top.st_mode):
        return TreeSize(_counted(top), 1)
    walk = _Walk(max_entries)
    try:
        fd = nofollow.open_dir(parent_fd, name)
    except OSError:
        return TreeSize(complete=False)
    try:
        walk.directory(fd, depth=0)
    finally:
        os.close(fd)
    return TreeSize(walk.bytes, walk.entries, walk.complete)


def workspace_size(
    data_dir: Path, lineage: Sequence[str], *, max_entries: int = MAX_ENTRIES
) -> TreeSize:
    """The workspace of the last session of ``lineage`` (root first; for a child, its
    root, its parent and itself suffice). A child's own children are not counted: their
    workspaces are theirs."""
    dirs = SessionDirs.for_lineage(data_dir, lineage)
    *parent, name = dirs.workspace_parts
    if not data_dir.is_dir():
        return TreeSize()
    with (
        nofollow.open_trusted(data_dir) as data,
        nofollow.open_path(data, (SESSIONS_DIR, *parent)) as fd,
    ):
        if fd is None:
            return TreeSize()
        return measure_tree(fd, name, max_entries=max_entries)


class _Walk:
    """Depth-first through descriptors; one instance per measurement."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.bytes = 0
        self.entries = 0
        self.complete = True

    def directory(self, fd: int, depth: int) -> None:
        if depth >= MAX_DEPTH:
            self.complete = False
            return
        subdirs: list[str] = []
        # scandir on a descriptor: entries are named relative to it, never resolved by path.
        with os.scandir(fd) as entries:
            for entry in entries:
                if self.entries >= self.max_entries:
                    self.complete = False
                    return
                self.entries += 1
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    self.complete = False
                    continue
                if stat.S_ISDIR(info.st_mode):
                    subdirs.append(entry.name)
                else:
                    self.bytes += _counted(info)
        for name in subdirs:
            if self.entries >= self.max_entries:
                self.complete = False
                return
            try:
                child = nofollow.open_dir(fd, name)
            except OSError:  # gone meanwhile, or swapped for a symlink: not followed
                self.complete = False
                continue
            try:
                self.directory(child, depth + 1)
            finally:
                os.close(child)


def _counted(info: os.stat_result) -> int:
    """Regular files and symlinks count their apparent size; devices, sockets nothing."""
    if stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
        return info.st_size
    return 0
