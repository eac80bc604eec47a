"""Directories walked through descriptors, never following a symlink.

Session containers (uid 1000) write their workspaces and Claude homes while the worker
that makes, fills and deletes those directories may run as root. A symlink a container
planted must never make the worker create, chown, write or delete anything outside the
tree it means. So below a trusted starting directory (the operator's data dir), every
component is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's
descriptor, directories are made with ``mkdir`` at that descriptor, and ownership is set
with ``fchown`` on the opened directory itself.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_MODE = 0o755


class UnsafePath(OSError):
    """A symlink or a non-directory where ccq expects one of its own directories."""


@dataclass(frozen=True)
class DirOwner:
    """Who a directory ccq makes belongs to (applied only when the worker is root)."""

    uid: int
    gid: int
    mode: int = DIR_MODE


ROOT_OWNED = DirOwner(0, 0)
CONTAINER_OWNED = DirOwner(1000, 1000)


def is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def open_trusted(path: Path, *, create: bool = False) -> Iterator[int]:
    """A descriptor on a directory the operator chose (the data dir): its own path may
    hold symlinks and is followed; only what lies below it is walked without following.
    """
    if create:
        path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def open_dir(parent_fd: int, name: str) -> int:
    """Open the directory ``name`` in ``parent_fd`` without following a symlink.

    Raises:
        FileNotFoundError: absent.
        UnsafePath: a symlink or something else than a directory.
    """
    _check_name(name)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(exc.errno, f"{name!r} is not a directory (a symlink?)") from exc
        raise


def ensure_dir(parent_fd: int, name: str, owner: DirOwner, *, replace: bool = False) -> int:
    """Open the directory ``name`` in ``parent_fd``, making it if missing; its descriptor.

    As root, a directory made here, or found owned by someone else or writable by
    group or others, is given to ``owner`` (through its descriptor: a race cannot turn
    the chown onto another file).

    Args:
        replace: a symlink or non-directory in its place is removed (never followed)
            and the directory made; without it, that raises :class:`UnsafePath`.
    """
    try:
        fd = open_dir(parent_fd, name)
    except FileNotFoundError:
        fd = -1
    except UnsafePath:
        if not replace:
            raise
        os.unlink(name, dir_fd=parent_fd)  # the link itself, never its target
        fd = -1
    if fd < 0:
        # Made concurrently (another worker process) is fine: it is opened below.
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, owner.mode, dir_fd=parent_fd)
        fd = open_dir(parent_fd, name)
    try:
        _own(fd, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _own(fd: int, owner: DirOwner) -> None:
    st = os.fstat(fd)
    if not is_root():
        return
    if (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.fchown(fd, owner.uid, owner.gid)
    if stat.S_IMODE(st.st_mode) != owner.mode:
        os.fchmod(fd, owner.mode)


def ensure_path(base_fd: int, parts: Sequence[tuple[str, DirOwner]]) -> None:
    """Make every directory of ``parts`` below ``base_fd``, each with its owner; no
    component may be a symlink (:class:`UnsafePath`)."""
    with walk(base_fd, parts):
        pass


@contextlib.contextmanager
def walk(base_fd: int, parts: Sequence[tuple[str, DirOwner]]) -> Iterator[int]:
    """The descriptor of the last of ``parts`` below ``base_fd``, each made if missing."""
    fd = os.dup(base_fd)
    try:
        for name, owner in parts:
            child = ensure_dir(fd, name, owner)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_path(base_fd: int, parts: Sequence[str]) -> Iterator[int | None]:
    """The descriptor of ``parts`` below ``base_fd``, opened without following any
    symlink; None if a component is missing, a symlink or not a directory."""
    fd = os.dup(base_fd)
    try:
        for name in parts:
            try:
                child = open_dir(fd, name)
            except (FileNotFoundError, UnsafePath):
                os.close(fd)
                fd = -1
                break
            os.close(fd)
            fd = child
        yield fd if fd >= 0 else None
    finally:
        if fd >= 0:
            os.close(fd)


def remove_tree(parent_fd: int, name: str) -> bool:
    """Delete ``name`` in ``parent_fd`` and everything below it, never following a
    symlink: the walk is descriptor-based (:func:`shutil.rmtree` with ``dir_fd``), and a
    symlink at the top is unlinked itself, its target untouched. False if absent.
    """
    _check_name(name)
    try:
        mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(mode):
        log.warning("not following %r (not a directory): removing the entry itself", name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)
        return True
    shutil.rmtree(name, dir_fd=parent_fd)
    return True


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name:
        raise ValueError(f"not a single path component: {name!r}")
