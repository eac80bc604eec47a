"""The files ccq writes into a session's Claude config dir before its runs.

The session's Claude home (a host directory, mounted at ``/home/claude/.claude`` =
``CLAUDE_CONFIG_DIR`` in its container) gets:

| file | what |
|---|---|
| ``ccq/mcp.json`` | the MCP config passed as ``--mcp-config``: ccq's tools at the gateway |
| ``CLAUDE.md`` | who the session is (ID, parent, depth), its children, its tools, limits |
| ``settings.json`` | Claude Code settings: ccq tools allowed, no telemetry, transcripts kept |
| ``skills/<name>/SKILL.md`` | skills on delegating to and managing children |
| ``ccq/session-files.json`` | the marker: the hash of what ccq last wrote, and which files |

The templates live in ``worker_image/session/``; ``CLAUDE.md.template`` is filled with
:class:`string.Template` (``$session_id``, ``$parent_line``, ``$depth``, ``$max_depth``,
``$children_dir``, ``$spawn_line``), the others are copied as they are.

**When files are rewritten.** :func:`write_session_files` is cheap and meant to be called
before every run. ``ccq/mcp.json`` is ccq's plumbing and is rewritten whenever it differs.
For the others, the marker holds a hash of their rendered contents (templates plus the
session's context): when it matches, only missing files are put back and files the
session edited are left alone; when it differs (the first run, new templates after an
upgrade, a changed depth limit), every ccq file is rewritten, edits included, and files
ccq wrote before but no longer ships (a removed skill) are deleted.

**What is not in any file.** ccq's tools are an ``http`` MCP server: the gateway's
``/mcp`` endpoint (Streamable HTTP), so no process starts in the container for them. Its
bearer token is the run's session token, written in the config as
``${CCQ_SESSION_TOKEN}``: the CLI expands it from the environment of the ``claude -p``
process (``docker exec -e``) when it connects (checked with Claude Code 2.1.329), so the
token, per run and short-lived, never touches the disk.

**Safety.** The container (uid 1000) can write anything in this directory, including
symlinks, while the worker may run as root. Every path is therefore walked with
``O_NOFOLLOW`` relative to directory descriptors: a symlink (or a file) where ccq expects
a directory or one of its files is replaced, never followed, and a FIFO is never read.
Files are written to a temporary name and renamed into place. As root, whatever is created
is given to uid/gid 1000 (the container user), like ``SessionDirs.create`` does (both
walk directories with :mod:`orchestrator.runtime.nofollow`).

Standard library only: no Docker, no database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import worker_image
from orchestrator.runtime import nofollow
from orchestrator.runtime.claude_cli import SESSION_TOKEN_VARIABLE

TEMPLATES_DIR = worker_image.directory() / "session"  # package data, installed or not
CLAUDE_MD_TEMPLATE = "CLAUDE.md.template"
SETTINGS_FILE = "settings.json"
SKILLS_DIR = "skills"
SKILL_FILE = "SKILL.md"

# As the container sees it: the Claude home is mounted at /home/claude/.claude.
CONTAINER_CLAUDE_HOME = "/home/claude/.claude"
MCP_CONFIG_RELPATH = "ccq/mcp.json"
MCP_CONFIG_PATH = f"{CONTAINER_CLAUDE_HOME}/{MCP_CONFIG_RELPATH}"
MARKER_RELPATH = "ccq/session-files.json"

MCP_SERVER_NAME = "ccq"
MCP_PATH = "/mcp"  # where the gateway serves ccq's tools
CHILDREN_DIR = "/workspace/children"

CONTAINER_UID = 1000
CONTAINER_GID = 1000
FILE_MODE = 0o644
DIR_MODE = 0o755
# Bumped when the marker's meaning changes, so every session is rewritten once.
_MARKER_FORMAT = "ccq-session-files/v1"


@dataclass(frozen=True)
class SessionContext:
    """What a session's CLAUDE.md says about it."""

    session_id: str
    parent_id: str | None
    depth: int
    max_depth: int


def mcp_config(gateway_url: str) -> dict[str, Any]:
    """The ``--mcp-config`` document: the ``ccq`` server at the gateway, over HTTP.

    Args:
        gateway_url: the gateway as the session's container reaches it.
    """
    return {
        "mcpServers": {
            MCP_SERVER_NAME: {
                "type": "http",
                "url": gateway_url.rstrip("/") + MCP_PATH,
                # Expanded by the CLI from its environment; see the module docstring.
                "headers": {"Authorization": f"Bearer ${{{SESSION_TOKEN_VARIABLE}}}"},
            }
        }
    }


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _claude_md_values(context: SessionContext) -> dict[str, str]:
    if context.parent_id:
        parent_line = (
            f"Your parent session is `{context.parent_id}`: it gave you this task and "
            f"reads your final answer and your files."
        )
    else:
        parent_line = "You are a root session: your prompts come from a user or a program."
    if context.depth < context.max_depth:
        spawn_line = f"You may create child sessions; they run at depth {context.depth + 1}."
    else:
        spawn_line = (
            "You cannot create child sessions (they would be deeper than that): do the "
            "work yourself."
        )
    return {
        "session_id": context.session_id,
        "parent_line": parent_line,
        "depth": str(context.depth),
        "max_depth": str(context.max_depth),
        "children_dir": CHILDREN_DIR,
        "spawn_line": spawn_line,
    }


def render_session_files(
    context: SessionContext, templates_dir: Path = TEMPLATES_DIR
) -> dict[str, bytes]:
    """Every ccq file but the MCP config and the marker: relative path → contents.

    Raises:
        OSError: a template is missing or unreadable.
        KeyError, ValueError: CLAUDE.md.template has an unknown ``$placeholder`` or a
            stray ``$`` (write ``$$`` for a literal dollar sign).
    """
    template = string.Template((templates_dir / CLAUDE_MD_TEMPLATE).read_text())
    files = {
        "CLAUDE.md": template.substitute(_claude_md_values(context)).encode(),
        SETTINGS_FILE: (templates_dir / SETTINGS_FILE).read_bytes(),
    }
    for skill in sorted((templates_dir / SKILLS_DIR).glob(f"*/{SKILL_FILE}")):
        files[f"{SKILLS_DIR}/{skill.parent.name}/{SKILL_FILE}"] = skill.read_bytes()
    return files


def session_files_hash(files: Mapping[str, bytes]) -> str:
    """sha256 over the marker format and each file's path and bytes, length-prefixed."""
    digest = hashlib.sha256()
    for field in (_MARKER_FORMAT.encode(), *_path_and_bytes(files)):
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.hexdigest()


def _path_and_bytes(files: Mapping[str, bytes]) -> Iterator[bytes]:
    for path in sorted(files):
        yield path.encode()
        yield files[path]


def write_session_files(
    claude_home: Path,
    context: SessionContext,
    *,
    gateway_url: str,
    templates_dir: Path = TEMPLATES_DIR,
) -> None:
    """Bring ccq's files in ``claude_home`` up to date (see the module docstring).

    Idempotent; creates ``claude_home`` and any directory it needs. As root, what it
    creates is owned by 1000:1000.

    Raises:
        OSError: the directory cannot be written (e.g. not root and owned by another user).
    """
    files = render_session_files(context, templates_dir)
    current = session_files_hash(files)
    if not claude_home.is_dir():
        claude_home.mkdir(parents=True)
        if os.geteuid() == 0:
            os.chown(claude_home, CONTAINER_UID, CONTAINER_GID)
    with _Tree.open(claude_home) as tree:
        mcp_json = _json_bytes(mcp_config(gateway_url))
        if tree.read(MCP_CONFIG_RELPATH) != mcp_json:
            tree.write(MCP_CONFIG_RELPATH, mcp_json)

        marker = _parse_marker(tree.read(MARKER_RELPATH))
        if marker.get("hash") == current:
            for path, content in files.items():
                if not tree.is_file(path):
                    tree.write(path, content)
            return
        for path, content in files.items():
            tree.write(path, content)
        for stale in _string_list(marker.get("files")):
            if stale not in files and _is_ours(stale):
                tree.remove(stale)
        # Last: a failure above leaves the old marker, so the next call rewrites again.
        tree.write(MARKER_RELPATH, _json_bytes({"hash": current, "files": sorted(files)}))


def _parse_marker(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        marker = json.loads(raw)
    except ValueError:
        return {}
    return marker if isinstance(marker, dict) else {}


def _string_list(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _is_ours(relative: str) -> bool:
    """Whether a path from the marker (which the session could edit) is one ccq writes."""
    parts = PurePosixPath(relative).parts
    if any(part in ("", ".", "..") for part in parts) or relative.startswith("/"):
        return False
    return relative in ("CLAUDE.md", SETTINGS_FILE) or (
        len(parts) == 3 and parts[0] == SKILLS_DIR and parts[2] == SKILL_FILE
    )


class _Tree:
    """A directory written through descriptors, never following symlinks inside it."""

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._as_root = os.geteuid() == 0

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path) -> Iterator[_Tree]:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            yield cls(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _parent(self, relative: str, *, create: bool) -> Iterator[tuple[int, str] | None]:
        """The directory fd holding ``relative`` and its last name (None if absent)."""
        *dirs, name = PurePosixPath(relative).parts
        fd = os.dup(self._root_fd)
        try:
            for part in dirs:
                child = self._open_dir(fd, part, create=create)
                os.close(fd)
                fd = child
                if fd < 0:
                    break
            yield (fd, name) if fd >= 0 else None
        finally:
            if fd >= 0:
                os.close(fd)

    def _open_dir(self, parent_fd: int, name: str, *, create: bool) -> int:
        """Open (or with ``create``, make) a subdirectory; -1 if absent and not created.

        A symlink or non-directory in its place is removed first when creating.
        """
        if create:
            return nofollow.ensure_dir(parent_fd, name, nofollow.CONTAINER_OWNED, replace=True)
        try:
            return nofollow.open_dir(parent_fd, name)
        except (FileNotFoundError, nofollow.UnsafePath):
            return -1

    def read(self, relative: str) -> bytes | None:
        """A regular file's bytes; None if it is absent or anything else (a symlink…)."""
        with self._parent(relative, create=False) as found:
            if found is None:
                return None
            dir_fd, name = found
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(name, flags, dir_fd=dir_fd)
            except OSError:
                return None
            with os.fdopen(fd, "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    return None
                return file.read()

    def is_file(self, relative: str) -> bool:
        with self._parent(relative, create=False) as found:
            if found is None:
                return False
            dir_fd, name = found
            try:
                mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return False
            return stat.S_ISREG(mode)

    def write(self, relative: str, content: bytes) -> None:
        """Write to a temporary name, then rename over whatever ``relative`` was."""
        with self._parent(relative, create=True) as found:
            assert found is not None  # create=True makes every directory
            dir_fd, name = found
            temporary = f".{name}.ccq-{secrets.token_hex(6)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, FILE_MODE, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(content)
                    os.fchmod(file.fileno(), FILE_MODE)
                    if self._as_root:
                        os.fchown(file.fileno(), CONTAINER_UID, CONTAINER_GID)
                self._clear_directory(dir_fd, name)
                os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary, dir_fd=dir_fd)
                raise

    def remove(self, relative: str) -> None:
        """Delete a file ccq wrote, and its directory if that leaves it empty."""
        with self._parent(relative, create=False) as found:
            if found is None:
                return
            dir_fd, name = found
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
        parent = str(PurePosixPath(relative).parent)
        if parent not in (".", SKILLS_DIR):
            with self._parent(parent, create=False) as found:
                if found is not None:
                    # Fails when not empty (the session added files) or gone: fine.
                    with contextlib.suppress(OSError):
                        os.rmdir(found[1], dir_fd=found[0])

    @staticmethod
    def _clear_directory(dir_fd: int, name: str) -> None:
        """A directory where a file must go cannot be renamed over: remove it first."""
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            shutil.rmtree(name, dir_fd=dir_fd)  # symlink-safe on Linux (fd-based)
