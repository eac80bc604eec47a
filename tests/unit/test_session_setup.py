"""The files ccq writes into a session's Claude home: contents, idempotence, the marker."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from orchestrator.runtime.session_setup import (
    MARKER_RELPATH,
    MCP_CONFIG_PATH,
    MCP_CONFIG_RELPATH,
    TEMPLATES_DIR,
    SessionContext,
    mcp_config,
    write_session_files,
)

CHILD = SessionContext(
    session_id="7d4a3c52-52c5-4d8e-9d1e-0c0f2b0b9a11",
    parent_id="0b5f2f55-08f5-4a6e-8ef3-7f1c4d2c9e01",
    depth=1,
    max_depth=3,
)
ROOT = SessionContext(
    session_id="e3b1b9a4-5c1f-4a8b-9f3e-2d6c7a8b9c0d", parent_id=None, depth=0, max_depth=3
)
SKILLS = ("child-status", "coordinate-children", "delegate-task")
EXPECTED_FILES = {
    "CLAUDE.md",
    "settings.json",
    MCP_CONFIG_RELPATH,
    MARKER_RELPATH,
    *(f"skills/{name}/SKILL.md" for name in SKILLS),
}


def _files(home: Path) -> dict[str, bytes]:
    return {
        p.relative_to(home).as_posix(): p.read_bytes()
        for p in sorted(home.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "claude-home"


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the real templates that a test may change."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, copy)
    return copy


GATEWAY = "http://host.docker.internal:8090"


def write(home: Path, context: SessionContext, **kwargs: Any) -> None:
    """ccq's files as the worker writes them, with the gateway at GATEWAY."""
    write_session_files(home, context, gateway_url=GATEWAY, **kwargs)


def test_writes_every_file_into_a_new_claude_home(home: Path) -> None:
    write(home, CHILD)

    assert set(_files(home)) == EXPECTED_FILES
    assert (home / "CLAUDE.md").stat().st_mode & 0o777 == 0o644
    assert (home / "skills").stat().st_mode & 0o777 == 0o755


def test_mcp_config_is_ccqs_tools_at_the_gateway_with_the_token_by_reference(
    home: Path,
) -> None:
    write(home, CHILD)

    config = json.loads((home / MCP_CONFIG_RELPATH).read_text())
    assert config == mcp_config(GATEWAY)
    assert config == {
        "mcpServers": {
            "ccq": {
                "type": "http",
                "url": "http://host.docker.internal:8090/mcp",
                # The CLI expands it from its environment: the per-run token never
                # touches the disk.
                "headers": {"Authorization": "Bearer ${CCQ_SESSION_TOKEN}"},
            }
        }
    }
    assert MCP_CONFIG_PATH == "/home/claude/.claude/" + MCP_CONFIG_RELPATH


def test_a_new_gateway_address_rewrites_the_mcp_config(home: Path) -> None:
    write(home, CHILD)
    write_session_files(home, CHILD, gateway_url="http://10.9.8.7:9999/")
    config = json.loads((home / MCP_CONFIG_RELPATH).read_text())
    assert config["mcpServers"]["ccq"]["url"] == "http://10.9.8.7:9999/mcp"


def test_claude_md_names_the_session_its_parent_depth_and_children_dir(home: Path) -> None:
    write(home, CHILD)

    text = (home / "CLAUDE.md").read_text()
    assert CHILD.session_id in text
    assert f"Your parent session is `{CHILD.parent_id}`" in text
    assert "tree is 1 " in text
    assert "at most 3" in text
    assert "they run at depth 2" in text
    assert "/workspace/children/<child_id>/" in text
    assert "delegate" in text
    assert "end your turn" in text
    assert not re.search(r"\$\w", text), "a placeholder was left unfilled"


def test_claude_md_of_a_root_and_of_a_session_at_the_depth_limit(tmp_path: Path) -> None:
    write(tmp_path / "root", ROOT)
    deepest = SessionContext(
        session_id=CHILD.session_id, parent_id=CHILD.parent_id, depth=3, max_depth=3
    )
    write(tmp_path / "deep", deepest)

    assert "You are a root session" in (tmp_path / "root" / "CLAUDE.md").read_text()
    assert "You cannot create child sessions" in (tmp_path / "deep" / "CLAUDE.md").read_text()


def test_settings_allow_the_ccq_tools_and_keep_transcripts(home: Path) -> None:
    write(home, CHILD)

    settings = json.loads((home / "settings.json").read_text())
    assert "mcp__ccq" in settings["permissions"]["allow"]
    assert settings["cleanupPeriodDays"] >= 3650
    assert settings["env"]["DISABLE_TELEMETRY"] == "1"


@pytest.mark.parametrize("name", SKILLS)
def test_skills_have_front_matter_naming_them(home: Path, name: str) -> None:
    write(home, CHILD)

    text = (home / "skills" / name / "SKILL.md").read_text()
    front = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert front is not None
    fields = dict(line.split(": ", 1) for line in front.group(1).splitlines())
    assert fields["name"] == name
    assert len(fields["description"]) > 40
    assert "mcp__ccq__" in text or "delegate" in text


def test_a_second_call_changes_nothing(home: Path) -> None:
    write(home, CHILD)
    before = {p: (home / p).stat().st_ino for p in EXPECTED_FILES}
    contents = _files(home)

    write(home, CHILD)

    assert _files(home) == contents
    assert {p: (home / p).stat().st_ino for p in EXPECTED_FILES} == before  # not rewritten


def test_edits_stay_and_missing_files_come_back_while_the_marker_matches(home: Path) -> None:
    write(home, CHILD)
    (home / "CLAUDE.md").write_text("my own notes\n")
    (home / "skills" / "child-status" / "SKILL.md").unlink()
    (home / MCP_CONFIG_RELPATH).write_text('{"mcpServers": {}}')

    write(home, CHILD)

    assert (home / "CLAUDE.md").read_text() == "my own notes\n"
    assert (home / "skills" / "child-status" / "SKILL.md").is_file()
    # The MCP config is ccq's plumbing: always put back as it must be.
    assert json.loads((home / MCP_CONFIG_RELPATH).read_text()) == mcp_config(GATEWAY)


def test_a_new_context_rewrites_the_files(home: Path) -> None:
    write(home, CHILD)
    (home / "CLAUDE.md").write_text("my own notes\n")

    write(home, SessionContext(CHILD.session_id, CHILD.parent_id, CHILD.depth, max_depth=5))

    text = (home / "CLAUDE.md").read_text()
    assert "at most 5" in text
    assert "my own notes" not in text


def test_new_templates_rewrite_the_files_and_drop_a_removed_skill(
    home: Path, templates: Path
) -> None:
    write(home, CHILD, templates_dir=templates)
    shutil.rmtree(templates / "skills" / "child-status")
    (templates / "skills" / "new-skill").mkdir()
    (templates / "skills" / "new-skill" / "SKILL.md").write_text("---\nname: new-skill\n---\n")
    (templates / "settings.json").write_text('{"permissions": {"allow": ["mcp__ccq"]}}\n')

    write(home, CHILD, templates_dir=templates)

    assert not (home / "skills" / "child-status").exists()
    assert (home / "skills" / "new-skill" / "SKILL.md").is_file()
    assert json.loads((home / "settings.json").read_text()) == {
        "permissions": {"allow": ["mcp__ccq"]}
    }
    marker = json.loads((home / MARKER_RELPATH).read_text())
    assert "skills/new-skill/SKILL.md" in marker["files"]
    assert "skills/child-status/SKILL.md" not in marker["files"]


def test_a_skill_dir_the_session_added_files_to_is_kept(home: Path, templates: Path) -> None:
    write(home, CHILD, templates_dir=templates)
    (home / "skills" / "child-status" / "notes.txt").write_text("mine")
    shutil.rmtree(templates / "skills" / "child-status")

    write(home, CHILD, templates_dir=templates)

    assert not (home / "skills" / "child-status" / "SKILL.md").exists()
    assert (home / "skills" / "child-status" / "notes.txt").read_text() == "mine"


def test_a_forged_marker_cannot_make_it_delete_other_files(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (home / "projects").mkdir(parents=True)
    (home / "projects" / "t.jsonl").write_text("transcript")
    (home / "ccq").mkdir()
    forged = {"hash": "x", "files": ["../outside.txt", "projects/t.jsonl", "/etc/passwd"]}
    (home / MARKER_RELPATH).write_text(json.dumps(forged))

    write(home, CHILD)

    assert outside.read_text() == "keep me"
    assert (home / "projects" / "t.jsonl").read_text() == "transcript"


def test_symlinks_planted_in_the_home_are_replaced_not_followed(home: Path, tmp_path: Path) -> None:
    outside_dir = tmp_path / "outside-dir"
    outside_dir.mkdir()
    outside_file = tmp_path / "outside.txt"
    outside_file.write_text("keep me")
    home.mkdir()
    (home / "skills").symlink_to(outside_dir)
    (home / "CLAUDE.md").symlink_to(outside_file)
    (home / "ccq").symlink_to(outside_dir)

    write(home, CHILD)

    assert list(outside_dir.iterdir()) == []
    assert outside_file.read_text() == "keep me"
    for name in ("skills", "ccq"):
        assert not (home / name).is_symlink()
        assert (home / name).is_dir()
    assert not (home / "CLAUDE.md").is_symlink()
    assert CHILD.session_id in (home / "CLAUDE.md").read_text()


def test_a_directory_or_fifo_where_a_file_belongs_is_replaced(home: Path) -> None:
    home.mkdir()
    (home / "CLAUDE.md").mkdir()
    (home / "ccq").mkdir()
    os.mkfifo(home / MCP_CONFIG_RELPATH)  # reading it would block

    write(home, CHILD)

    assert (home / "CLAUDE.md").is_file()
    assert json.loads((home / MCP_CONFIG_RELPATH).read_text()) == mcp_config(GATEWAY)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the container user needs root")
def test_as_root_everything_created_belongs_to_the_container_user(home: Path) -> None:
    write(home, CHILD)

    paths = [home, *home.rglob("*")]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in paths} == {(1000, 1000)}
    assert not [p for p in home.rglob("*.tmp")]
