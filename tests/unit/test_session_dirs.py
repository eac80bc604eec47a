"""Session directories on a real file system: the layout, and that a symlink planted
anywhere a container could is never followed when the worker makes or deletes them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from orchestrator.runtime.containers import SessionDirs
from orchestrator.runtime.nofollow import UnsafePath

ROOT, CHILD, GRANDCHILD = "root-0", "child-1", "grandchild-2"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the data dir that must never be touched."""
    target = tmp_path / "outside"
    target.mkdir()
    (target / "precious.txt").write_text("keep me\n")
    return target


def _owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me\n"
    st = os.stat(outside)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_create_makes_the_layout_with_root_owned_ways_and_container_owned_ends(
    data: Path,
) -> None:
    root = SessionDirs.for_session(data, ROOT)
    child = SessionDirs.for_lineage(data, [ROOT, CHILD])
    root.create()
    child.create()

    sessions = data / "sessions"
    assert root.workspace == sessions / ROOT / "workspace"
    assert child.workspace == sessions / ROOT / "children" / ROOT / CHILD
    assert child.workspace.parent == root.children  # the parent's /workspace/children
    for made in (root.workspace, root.children, child.workspace, child.children):
        assert made.is_dir()
        assert not made.is_symlink()
    assert (root.workspace / "children").is_dir()  # the children mount's mount point
    assert child.claude_home == sessions / CHILD / "claude-home"
    if os.geteuid() == 0:
        for way in (
            sessions / ROOT,
            sessions / ROOT / "children",
            root.children,
            child.children,
            sessions / CHILD,
        ):
            assert _owner(way) == (0, 0, 0o755), way
        for end in (root.workspace, child.workspace, root.claude_home, child.claude_home):
            assert _owner(end) == (1000, 1000, 0o755), end
    # Idempotent.
    child.create()
    root.create()


def test_a_symlink_in_place_of_a_childs_workspace_is_refused_never_followed(
    data: Path, outside: Path
) -> None:
    root = SessionDirs.for_session(data, ROOT)
    root.create()
    child = SessionDirs.for_lineage(data, [ROOT, CHILD])
    # The escape of issue 15, on the worker's side: the child's workspace replaced by a
    # symlink (here planted directly; no container can write its parent directory).
    child.workspace.symlink_to(outside)

    with pytest.raises(UnsafePath):
        child.create()
    assert child.workspace.is_symlink()
    _untouched(outside)


@pytest.mark.parametrize("component", ["sessions", ROOT, "children", "claude-home"])
def test_a_symlink_anywhere_on_the_way_is_refused(
    data: Path, outside: Path, component: str
) -> None:
    child = SessionDirs.for_lineage(data, [ROOT, CHILD])
    planted = {
        "sessions": data / "sessions",
        ROOT: data / "sessions" / ROOT,
        "children": data / "sessions" / ROOT / "children",
        "claude-home": data / "sessions" / CHILD / "claude-home",
    }[component]
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.symlink_to(outside)

    with pytest.raises(UnsafePath):
        child.create()
    _untouched(outside)


def test_a_symlink_as_the_children_mount_point_is_replaced_by_a_directory(
    data: Path, outside: Path
) -> None:
    root = SessionDirs.for_session(data, ROOT)
    root.create()
    # What the session itself can do in its workspace: the mount point made a symlink.
    mount_point = root.workspace / "children"
    mount_point.rmdir()
    mount_point.symlink_to(outside)

    root.create()
    assert mount_point.is_dir()
    assert not mount_point.is_symlink()
    _untouched(outside)


def test_deleting_never_follows_a_symlink_out_of_the_tree(data: Path, outside: Path) -> None:
    root = SessionDirs.for_session(data, ROOT)
    child = SessionDirs.for_lineage(data, [ROOT, CHILD])
    grandchild = SessionDirs.for_lineage(data, [ROOT, CHILD, GRANDCHILD])
    for dirs in (root, child, grandchild):
        dirs.create()
    # Links a container could plant in what it can write.
    (child.workspace / "link").symlink_to(outside)
    (grandchild.workspace / "link").symlink_to(outside / "precious.txt")
    (child.claude_home / "projects").symlink_to(outside)

    child.delete([GRANDCHILD])

    for gone in (
        child.workspace,
        child.children,
        grandchild.workspace,
        grandchild.children,
        data / "sessions" / CHILD,
        data / "sessions" / GRANDCHILD,
    ):
        assert not os.path.lexists(gone), gone
    assert root.workspace.is_dir()
    assert root.children.is_dir()
    _untouched(outside)

    (root.workspace / "link").symlink_to(outside)
    root.delete()
    assert not os.path.lexists(data / "sessions" / ROOT)
    _untouched(outside)


def test_deleting_a_symlink_in_place_of_a_directory_removes_the_link_only(
    data: Path, outside: Path
) -> None:
    root = SessionDirs.for_session(data, ROOT)
    child = SessionDirs.for_lineage(data, [ROOT, CHILD])
    root.create()
    child.workspace.symlink_to(outside)
    (data / "sessions" / CHILD).symlink_to(outside)

    child.delete()

    assert not os.path.lexists(child.workspace)
    assert not os.path.lexists(data / "sessions" / CHILD)
    _untouched(outside)


def test_deleting_what_was_never_made_is_no_error(data: Path) -> None:
    SessionDirs.for_lineage(data, [ROOT, CHILD]).delete(["x"])
    data.mkdir()
    SessionDirs.for_lineage(data, [ROOT, CHILD]).delete(["x"])
    SessionDirs.for_session(data, ROOT).delete()
