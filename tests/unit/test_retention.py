"""Retention's pure parts: the policy read from settings, cut-offs, and the bounded,
symlink-proof workspace measurement (on a temporary directory)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.domain.retention import RetentionPolicy, cutoff
from orchestrator.runtime import workspaces
from orchestrator.runtime.containers import SessionDirs
from orchestrator.runtime.workspaces import TreeSize, measure_tree, workspace_size
from orchestrator.settings import ConfigError, load_settings

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_zero_days_keeps_for_ever_and_the_defaults_are_documented_ones() -> None:
    defaults = RetentionPolicy.from_settings(load_settings(env_file=None))
    assert defaults == RetentionPolicy(
        event_days=30, workspace_days=14, stopped_session_days=90, batch_size=1000
    )
    forever = RetentionPolicy.from_settings(
        load_settings(
            env_file=None,
            event_retention_days=0,
            workspace_retention_days=0,
            stopped_session_retention_days=0,
        )
    )
    assert (forever.event_days, forever.workspace_days, forever.stopped_session_days) == (
        None,
        None,
        None,
    )
    assert cutoff(NOW, None) is None
    assert cutoff(NOW, 30) == NOW - timedelta(days=30)


@pytest.mark.parametrize(
    ("name", "value"),
    [("event_retention_days", -1), ("retention_batch_size", 0), ("workspace_max_mb", 0)],
)
def test_bad_retention_settings_are_refused_naming_the_variable(name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"CCQ_{name.upper()}"):
        load_settings(env_file=None, **{name: value})


def _write(path: Path, size: int) -> None:
    path.write_bytes(b"x" * size)


def _measure(parent: Path, name: str, **bounds: int) -> TreeSize:
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return measure_tree(fd, name, **bounds)
    finally:
        os.close(fd)


def test_a_tree_is_measured_without_following_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    _write(outside / "big", 1_000_000)
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    _write(tree / "top", 10)
    _write(tree / "a" / "mid", 200)
    _write(tree / "a" / "b" / "deep", 3000)
    (tree / "a" / "to-dir").symlink_to(outside)
    (tree / "to-file").symlink_to(outside / "big")

    size = _measure(tmp_path, "tree")

    links = len(str(outside)) + len(str(outside / "big"))  # a link counts as its own size
    assert size == TreeSize(bytes=10 + 200 + 3000 + links, entries=7, complete=True)


def test_a_symlink_at_the_top_counts_as_itself_and_absent_is_zero(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    _write(tmp_path / "target" / "big", 5000)
    (tmp_path / "link").symlink_to(tmp_path / "target")

    assert _measure(tmp_path, "link") == TreeSize(len(str(tmp_path / "target")), 1)
    assert _measure(tmp_path, "missing") == TreeSize()


def test_the_walk_stops_at_its_entry_bound_and_says_so(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(50):
        _write(tree / f"f{i}", 1)

    size = _measure(tmp_path, "tree", max_entries=20)

    assert (size.entries, size.bytes, size.complete) == (20, 20, False)


def test_the_walk_stops_at_its_depth_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workspaces, "MAX_DEPTH", 3)
    deep = tmp_path / "tree" / "1" / "2" / "3" / "4"
    deep.mkdir(parents=True)
    _write(deep / "hidden", 7)

    size = _measure(tmp_path, "tree")

    assert size.bytes == 0
    assert not size.complete


def test_workspace_size_finds_a_root_and_a_child_workspace(tmp_path: Path) -> None:
    root, child = "r" * 8, "c" * 8
    root_dirs = SessionDirs.for_session(tmp_path, root)
    child_dirs = SessionDirs.for_lineage(tmp_path, [root, child])
    root_dirs.create()
    child_dirs.create()
    _write(root_dirs.workspace / "notes.md", 123)
    _write(child_dirs.workspace / "out.txt", 45)

    assert workspace_size(tmp_path, [root]).bytes == 123
    assert workspace_size(tmp_path, [root, child]).bytes == 45
    assert workspace_size(tmp_path, ["nobody"]) == TreeSize()
    assert workspace_size(tmp_path / "absent", [root]) == TreeSize()
