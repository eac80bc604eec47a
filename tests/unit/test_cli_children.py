"""`ccq children` and `ccq fanout` without a server: the tree and fan-out rendering, the
fan-out poll loop against a stub, the commands' argument checks, and the requests the
client methods make (the API's answers are stubbed; the end-to-end tests use a real one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import click
import pytest
import requests
from click.testing import CliRunner

from cli import children as commands
from cli.main import cli
from cli.render_children import (
    MIN_RESULT_CHARS,
    RESULT_CHARS,
    children_tree,
    fanout_child_done,
    fanout_children_done,
    fanout_started,
    first_line,
    run_outcome,
    tree_rows,
)
from cli.waiting import WaitOptions
from client import ApiClient, ApiError, JsonObject

ROOT = "00000000-0000-4000-8000-000000000000"
FANOUT_ID = "f0000000-0000-4000-8000-000000000000"
FOLLOWUP_ID = "e0000000-0000-4000-8000-000000000000"


def _id(n: int) -> str:
    return f"{n:08d}-0000-4000-8000-000000000000"


def _run(status: str = "succeeded", cost: float | None = 0.01, **overrides: Any) -> JsonObject:
    run: JsonObject = {
        "id": "r" + _id(0)[1:],
        "session_id": ROOT,
        "seq": 1,
        "status": status,
        "result": "done",
        "error": None,
        "total_cost_usd": cost,
    }
    return {**run, **overrides}


def _node(
    session_id: str,
    status: str = "idle",
    own: float = 0.01,
    tree: float | None = None,
    last_run: JsonObject | None = None,
    children: list[JsonObject] | None = None,
) -> JsonObject:
    return {
        "id": session_id,
        "status": status,
        "parent_id": None,
        "runs_count": 1 if last_run else 0,
        "total_cost_usd": own,
        "tree_cost_usd": own if tree is None else tree,
        "children_count": len(children or []),
        "last_run": last_run,
        "children": children or [],
    }


def _tree() -> JsonObject:
    """A root with two children; the first has a child of its own."""
    grandchild = _node(
        _id(3),
        "failed",
        0.001,
        last_run=_run("failed", 0.001, result=None, error="the CLI exited 1\ntrace"),
    )
    first = _node(_id(1), "idle", 0.0123, 0.0133, _run(result="first line\nsecond"), [grandchild])
    second = _node(_id(2), "running", 0, last_run=_run("running", None, result=None))
    root = _node(ROOT, "idle", 0.01, 0.0233, _run(result="Done."))
    return {"session": root, "children": [first, second]}


# --- one line of text -----------------------------------------------------------------


def test_first_line_skips_blank_lines_and_cuts_with_an_ellipsis() -> None:
    assert first_line("\n  \n  hello there  \nmore", 20) == "hello there"
    assert first_line("abcdefghij", 5) == "abcd…"
    assert first_line("abcde", 5) == "abcde"
    assert first_line(None, 5) == ""


def test_a_run_without_a_result_shows_its_error() -> None:
    assert run_outcome(_run(result="answer\nrest")) == "answer"
    assert run_outcome(_run("failed", result=None, error="boom\nstack")) == "error: boom"
    assert run_outcome(_run("running", result=None)) == ""
    assert run_outcome(None) == ""


# --- the tree -------------------------------------------------------------------------


def test_tree_rows_draw_nested_children_depth_first() -> None:
    assert [(prefix, s["id"]) for prefix, s in tree_rows(_tree())] == [
        ("", ROOT),
        ("├─ ", _id(1)),
        ("│  └─ ", _id(3)),
        ("└─ ", _id(2)),
    ]


def test_a_last_childs_descendants_get_no_vertical_bar() -> None:
    grandchild = _node(_id(2))
    tree = {"session": _node(ROOT), "children": [_node(_id(1), children=[grandchild])]}
    assert [prefix for prefix, _ in tree_rows(tree)] == ["", "└─ ", "   └─ "]


def test_the_roots_own_children_list_is_read_when_the_answer_has_none_beside_it() -> None:
    tree = {"session": _node(ROOT, children=[_node(_id(1))])}
    assert [s["id"] for _, s in tree_rows(tree)] == [ROOT, _id(1)]


def test_children_tree_lines_up_states_costs_and_results() -> None:
    assert children_tree(_tree()).splitlines() == [
        f"{ROOT}        idle     run succeeded  $0.0100  (tree $0.0233)  Done.",
        f"├─ {_id(1)}     idle     run succeeded  $0.0123  (tree $0.0133)  first line",
        f"│  └─ {_id(3)}  failed   run failed     $0.0010  (tree $0.0010)  error: the CLI exited 1",
        f"└─ {_id(2)}     running  run running    $0       (tree $0)",
        "4 sessions: 2 idle, 1 running, 1 failed; tree cost $0.0233",
    ]


def test_a_session_without_runs_says_so() -> None:
    tree = {"session": _node(ROOT), "children": [_node(_id(1), "starting", 0)]}
    assert "starting  no runs" in children_tree(tree).splitlines()[1]


def test_a_tree_without_children_says_so() -> None:
    tree = {"session": _node(ROOT, own=0.5, last_run=_run()), "children": []}
    assert children_tree(tree).splitlines() == [
        f"{ROOT}  idle  run succeeded  $0.5000  (tree $0.5000)  done",
        "└─ (no children)",
        "1 session: 1 idle; tree cost $0.5000",
    ]


def test_long_results_are_cut_to_a_fixed_length_without_a_width() -> None:
    tree = {"session": _node(ROOT, last_run=_run(result="x" * 500)), "children": []}
    line = children_tree(tree).splitlines()[0]
    assert line.endswith("x" * (RESULT_CHARS - 1) + "…")


def test_long_results_are_cut_to_fit_the_terminals_width() -> None:
    long = _run(result="word " * 100)
    tree = {"session": _node(ROOT, last_run=long), "children": [_node(_id(1), last_run=long)]}
    for width in (120, 160):
        lines = children_tree(tree, width=width).splitlines()
        assert all(len(line) < width for line in lines[:2])
        assert all(line.endswith("…") for line in lines[:2])
    narrow = children_tree(tree, width=40).splitlines()[0]
    assert narrow.endswith("…")
    assert len(narrow.split("  ")[-1]) == MIN_RESULT_CHARS  # some of it, however narrow


def test_colors_keep_the_columns() -> None:
    colored = children_tree(_tree(), color=True)
    assert click.style("failed", fg="red") in colored
    assert click.style(ROOT, bold=True) in colored  # the root's line is the header
    assert click.unstyle(colored) == children_tree(_tree())


def test_a_missing_tree_cost_is_the_sum_of_own_costs() -> None:
    tree = _tree()
    tree["session"]["tree_cost_usd"] = None
    assert children_tree(tree).splitlines()[-1].endswith("tree cost $0.0233")


# --- fan-out lines --------------------------------------------------------------------


def _answer(children: int = 2) -> JsonObject:
    ids = [_id(i + 1) for i in range(children)]
    return {
        "fanout": {
            "id": FANOUT_ID,
            "session_id": ROOT,
            "status": "running",
            "child_ids": ids,
            "followup_run_id": None,
            "then_chars": 9,
        },
        "children": [_node(i, "starting", 0) for i in ids],
        "runs": [_run("queued", None, id=f"run-{i}", session_id=i) for i in ids],
    }


def test_fanout_started_names_each_child_and_its_run() -> None:
    assert fanout_started(_answer()).splitlines() == [
        f"fanout {FANOUT_ID}: 2 children of session {ROOT}, which resumes once they all finish",
        f"  child {_id(1)}  run run-{_id(1)}",
        f"  child {_id(2)}  run run-{_id(2)}",
    ]
    assert "1 child of" in fanout_started(_answer(1))


def test_a_finished_child_line_counts_progress_and_shows_the_outcome() -> None:
    child = _node(_id(1), last_run=_run(cost=0.0123, result="answer\nmore"))
    assert fanout_child_done(child, 1, 3) == f"[1/3] child {_id(1)}  succeeded  $0.0123  answer"
    # Counters line up from [1/12] to [12/12].
    assert fanout_child_done(child, 1, 12).startswith(" [1/12] child")
    failed = _node(_id(1), last_run=_run("failed", None, result=None, error="boom"))
    assert fanout_child_done(failed, 2, 3).endswith("failed  -  error: boom")


def test_the_children_tally_says_whether_the_parent_resumed() -> None:
    done = [
        _node(_id(1), last_run=_run(cost=0.01)),
        _node(_id(2), last_run=_run("failed", 0.02)),
        _node(_id(3), last_run=_run(cost=0.01)),
    ]
    fanout = {**_answer()["fanout"], "status": "finished", "followup_run_id": FOLLOWUP_ID}
    assert fanout_children_done(fanout, done).splitlines() == [
        "children done: 2 succeeded, 1 failed; $0.0400",
        f"session {ROOT} resumed: run {FOLLOWUP_ID}",
    ]
    cancelled = {**fanout, "status": "cancelled", "followup_run_id": None}
    assert fanout_children_done(cancelled, done[:1]).splitlines() == [
        f"fanout {FANOUT_ID} cancelled: 1 succeeded; $0.0100",
        f"session {ROOT} is not resumed",
    ]


# --- following a fan-out --------------------------------------------------------------


class StubFanouts:
    """Answers ``get_fanout`` from a script, one answer per poll (the last one repeats)."""

    def __init__(self, *answers: JsonObject) -> None:
        self.answers = list(answers)
        self.polls = 0

    def get_fanout(self, fanout_id: str) -> JsonObject:
        assert fanout_id == FANOUT_ID
        self.polls += 1
        return self.answers[min(self.polls, len(self.answers)) - 1]


def _state(
    finished: dict[int, str], followup: str | None = None, status: str = "running"
) -> JsonObject:
    """The fan-out of :func:`_answer` (2 children) with the given children's runs ended."""
    answer = _answer()
    children = [
        _node(
            _id(n),
            "idle" if n in finished else "running",
            last_run=_run(finished.get(n, "running")),
        )
        for n in (1, 2)
    ]
    fanout = {**answer["fanout"], "status": status, "followup_run_id": followup}
    return {"fanout": fanout, "children": children}


def test_children_are_told_once_as_they_finish_until_the_parent_resumes() -> None:
    source = StubFanouts(
        _state({}),
        _state({2: "failed"}),
        _state({2: "failed"}),
        _state({1: "succeeded", 2: "failed"}, FOLLOWUP_ID, "finished"),
    )
    said: list[str] = []
    delays: list[float] = []
    fanout, children = commands.await_children(source, _answer(), said.append, sleep=delays.append)
    assert fanout["followup_run_id"] == FOLLOWUP_ID
    assert [c["id"] for c in children] == [_id(1), _id(2)]
    assert [line.split("  ")[0:2] for line in said] == [
        [f"[1/2] child {_id(2)}", "failed"],
        [f"[2/2] child {_id(1)}", "succeeded"],
    ]
    assert source.polls == 4
    assert delays == [0.5, 0.75, 1.125, 1.6875]


def test_polls_back_off_to_two_seconds() -> None:
    source = StubFanouts(*[_state({})] * 7, _state({}, FOLLOWUP_ID, "finished"))
    delays: list[float] = []
    commands.await_children(source, _answer(), lambda _: None, sleep=delays.append)
    assert delays[:4] == [0.5, 0.75, 1.125, 1.6875]
    assert delays[4:] == [2.0] * 4
    assert all(d > 0 for d in delays)  # never a busy loop


def test_a_cancelled_fanout_ends_the_wait() -> None:
    source = StubFanouts(_state({1: "cancelled"}, status="cancelled"))
    said: list[str] = []
    fanout, _ = commands.await_children(source, _answer(), said.append, sleep=lambda _: None)
    assert fanout["status"] == "cancelled"
    assert len(said) == 1
    assert source.polls == 1


def test_a_finished_fanout_without_its_followup_is_given_up_after_a_grace() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    source = StubFanouts(_state({1: "succeeded", 2: "succeeded"}, None, "finished"))
    fanout, _ = commands.await_children(
        source, _answer(), lambda _: None, sleep=sleep, clock=lambda: now[0]
    )
    assert fanout["followup_run_id"] is None
    assert (
        commands.FOLLOWUP_GRACE
        <= now[0]
        <= commands.FOLLOWUP_GRACE + commands.FANOUT_POLL_MAX + 0.5
    )


# --- the commands, with the API stubbed -----------------------------------------------

API = ["--api-url", "http://127.0.0.1:9", "--token", "t"]


def _invoke(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, [*args, *API], input=input)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[JsonObject]:
    """``ApiClient.fanout`` records what it was asked and answers :func:`_answer`."""
    calls: list[JsonObject] = []

    def fanout(
        self: ApiClient, session_id: str, prompts: list[str], then: str | None, **options: Any
    ) -> JsonObject:
        calls.append({"session_id": session_id, "prompts": prompts, "then": then, **options})
        return _answer(len(prompts))

    monkeypatch.setattr(ApiClient, "fanout", fanout)
    return calls


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--then", "go on"], "--prompt TEXT or --prompt-file FILE"),
        (
            ["--prompt", "a", "--prompt", "", "--then", "go on"],
            "'--prompt': a prompt must not be empty",
        ),
        (["--prompt", " \n", "--then", "go on"], "'--prompt'"),
        (["--prompt", "a", "--then", "  "], "'--then': the follow-up prompt must not be empty"),
        (["--prompt", "a", "--then", "x", "--max-turns", "0"], "'--max-turns'"),
        (["--prompt-file", "/no/such/file", "--then", "x"], "'--prompt-file'"),
        (["--prompt-file", "-", "--prompt-file", "-", "--then", "x"], "'--prompt-file'"),
    ],
)
def test_bad_fanout_arguments_are_refused_before_calling_the_api(
    sent: list[JsonObject], args: list[str], named: str
) -> None:
    result = _invoke("fanout", ROOT, *args, input="from stdin")
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert sent == []


def test_an_empty_prompt_file_is_refused(sent: list[JsonObject], tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = _invoke("fanout", ROOT, "--prompt-file", str(empty), "--then", "x")
    assert result.exit_code == 2
    assert f"'--prompt-file': {empty} holds no prompt" in result.output
    result = _invoke("fanout", ROOT, "--prompt-file", "-", "--then", "x", input="")
    assert "'--prompt-file': stdin holds no prompt" in result.output
    assert sent == []


def test_a_session_that_is_not_an_id_is_refused(sent: list[JsonObject]) -> None:
    result = _invoke("fanout", "nope", "--prompt", "a", "--then", "b")
    assert result.exit_code == 2
    assert "SESSION" in result.output


def test_fanout_without_then_leaves_the_follow_up_prompt_to_the_server(
    sent: list[JsonObject],
) -> None:
    result = _invoke("fanout", ROOT, "--prompt", "one")
    assert result.exit_code == 0, result.output
    assert sent[0]["then"] is None


def test_fanout_sends_prompts_in_order_with_files_and_stdin(
    sent: list[JsonObject], tmp_path: Path
) -> None:
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("from a file\nline two\n")
    result = _invoke(
        "fanout", ROOT, "--prompt", "one", "--prompt-file", str(prompt_file),
        "--prompt", "two", "--prompt-file", "-", "--then", "sum up",
        "--model", "m", "--max-turns", "3",
        input="from stdin\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sent == [
        {
            "session_id": ROOT,
            "prompts": ["one", "two", "from a file\nline two", "from stdin"],
            "then": "sum up",
            "model": "m",
            "max_turns": 3,
        }
    ]
    assert result.stdout == fanout_started(_answer(4)) + "\n"


def test_fanout_json_prints_the_apis_answer(sent: list[JsonObject]) -> None:
    result = _invoke("fanout", ROOT, "--prompt", "one", "--then", "go", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == _answer(1)
    assert sent[0]["model"] is None  # the client leaves unset options out of the body


def test_fanout_follow_shows_children_then_follows_the_parents_run(
    sent: list[JsonObject], monkeypatch: pytest.MonkeyPatch
) -> None:
    done = _state({1: "succeeded", 2: "failed"}, FOLLOWUP_ID, "finished")
    monkeypatch.setattr(ApiClient, "get_fanout", lambda self, fanout_id: done)
    monkeypatch.setattr(ApiClient, "get_run", lambda self, run_id: _run("queued", id=run_id))
    followed: list[tuple[JsonObject, WaitOptions]] = []

    def finish(client: ApiClient, run: JsonObject, options: WaitOptions, _: Any) -> NoReturn:
        followed.append((run, options))
        raise SystemExit(0)

    monkeypatch.setattr(commands, "finish", finish)
    monkeypatch.setattr(commands, "FANOUT_POLL_FIRST", 0.01)
    result = _invoke("fanout", ROOT, "--prompt", "a", "--prompt", "b", "--then", "go", "-f")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # the follow-up run's events are _finish's, stubbed here
    err = result.stderr.splitlines()
    assert err[0].startswith(f"fanout {FANOUT_ID}: 2 children")
    assert err[3].startswith(f"[1/2] child {_id(1)}  succeeded")
    assert err[4].startswith(f"[2/2] child {_id(2)}  failed")
    assert err[5:] == [
        "children done: 1 succeeded, 1 failed; $0.0200",
        f"session {ROOT} resumed: run {FOLLOWUP_ID}",
    ]
    [(run, options)] = followed
    assert run["id"] == FOLLOWUP_ID
    assert options == WaitOptions(stream=True, as_json=False, timeout=None)


def test_fanout_follow_of_a_cancelled_fanout_exits_1(
    sent: list[JsonObject], monkeypatch: pytest.MonkeyPatch
) -> None:
    cancelled = _state({1: "cancelled", 2: "cancelled"}, None, "cancelled")
    monkeypatch.setattr(ApiClient, "get_fanout", lambda self, fanout_id: cancelled)
    monkeypatch.setattr(commands, "FANOUT_POLL_FIRST", 0.01)
    result = _invoke("fanout", ROOT, "--prompt", "a", "--then", "go", "--follow")
    assert result.exit_code == 1
    assert f"session {ROOT} is not resumed" in result.stderr


def test_children_prints_the_tree_or_the_apis_json(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, bool]] = []

    def children(self: ApiClient, session_id: str, *, recursive: bool = True) -> JsonObject:
        asked.append((session_id, recursive))
        return _tree()

    monkeypatch.setattr(ApiClient, "children", children)
    result = _invoke("children", ROOT)
    assert result.exit_code == 0
    assert result.stdout == children_tree(_tree()) + "\n"  # piped: no colors, fixed cut
    assert asked == [(ROOT, True)]
    result = _invoke("children", ROOT, "--json")
    assert json.loads(result.stdout) == _tree()


def test_an_api_error_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(self: ApiClient, session_id: str, *, recursive: bool = True) -> NoReturn:
        raise ApiError(404, "not_found", f"no session {session_id}")

    monkeypatch.setattr(ApiClient, "children", missing)
    result = _invoke("children", ROOT)
    assert result.exit_code == 1
    assert result.stderr == f"ccq: no session {ROOT}\n"


# --- the client's requests ------------------------------------------------------------


class RecordingHttp(requests.Session):
    """Records each request and answers ``{"ok": true}`` (no network)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        response = requests.Response()
        response.status_code = 200
        response._content = b'{"ok": true}'
        return response


def test_the_client_methods_call_the_documented_endpoints() -> None:
    http = RecordingHttp()
    client = ApiClient("http://api/", "t", http)
    client.children(ROOT)
    client.children(ROOT, recursive=False)
    client.fanout(ROOT, ["a", "b"], "then", model="m", max_turns=None)
    client.get_fanout(FANOUT_ID)
    calls = [(c["method"], c["url"], c["params"], c["json"]) for c in http.calls]
    assert calls == [
        ("GET", f"http://api/api/v1/sessions/{ROOT}/children", {"recursive": "true"}, None),
        ("GET", f"http://api/api/v1/sessions/{ROOT}/children", {}, None),
        (
            "POST",
            f"http://api/api/v1/sessions/{ROOT}/fanout",
            {},
            {"prompts": ["a", "b"], "then": "then", "model": "m"},
        ),
        ("GET", f"http://api/api/v1/fanouts/{FANOUT_ID}", {}, None),
    ]
