"""The parent's follow-up prompt and where children's workspaces lie: pure logic."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

from orchestrator.domain.fanout import RESULT_CHARS_IN_PROMPT, ChildOutcome, followup_prompt
from orchestrator.runtime.containers import SessionDirs

FANOUT = uuid.UUID(int=7)


def outcome(index: int, status: str = "succeeded", **fields: object) -> ChildOutcome:
    values: dict[str, object] = {
        "index": index,
        "session_id": uuid.UUID(int=100 + index),
        "run_id": uuid.UUID(int=200 + index),
        "status": status,
        "result": f"answer {index}",
        "error": None,
        "cost_usd": Decimal("0.0125"),
    }
    values.update(fields)
    return ChildOutcome(**values)  # type: ignore[arg-type]


def test_the_follow_up_carries_then_and_every_child_in_order() -> None:
    text = followup_prompt("Compare them.", FANOUT, [outcome(0), outcome(1)])
    assert text.startswith("Compare them.\n")
    first, second = str(uuid.UUID(int=100)), str(uuid.UUID(int=101))
    assert text.index(first) < text.index("answer 0") < text.index(second) < text.index("answer 1")
    assert f"Files: /workspace/children/{first}/" in text
    assert "Status: succeeded ($0.0125)" in text
    assert f"fan-out {FANOUT} (2 children)" in text


def test_a_failed_child_shows_its_error_and_no_invented_result() -> None:
    failed = outcome(0, "failed", result=None, error="the CLI exited (1)", cost_usd=None)
    text = followup_prompt("Go on.", FANOUT, [failed])
    assert "Status: failed (cost unknown)" in text
    assert "Error: the CLI exited (1)" in text
    assert "Result:" not in text


def test_long_results_are_clipped_and_say_where_the_rest_is() -> None:
    long = "x" * (RESULT_CHARS_IN_PROMPT + 500)
    text = followup_prompt("Go on.", FANOUT, [outcome(0, result=long)])
    assert "x" * RESULT_CHARS_IN_PROMPT in text
    assert "x" * (RESULT_CHARS_IN_PROMPT + 1) not in text
    assert "500 more characters: use get_child_result" in text


def test_session_directories_lie_in_root_owned_trees_not_in_their_parents() -> None:
    data = Path("/data")
    root = SessionDirs.for_lineage(data, ["r"])
    assert root == SessionDirs.for_session(data, "r")
    assert root.workspace == Path("/data/sessions/r/workspace")
    assert root.children == Path("/data/sessions/r/children/r")
    grandchild = SessionDirs.for_lineage(data, ["r", "c", "g"])
    # In its parent's children directory (the parent's /workspace/children), not inside
    # any workspace a container can write.
    assert grandchild.workspace == Path("/data/sessions/r/children/c/g")
    assert grandchild.workspace.parent == SessionDirs.for_lineage(data, ["r", "c"]).children
    assert grandchild.children == Path("/data/sessions/r/children/g")
    assert grandchild.claude_home == Path("/data/sessions/g/claude-home")
