"""`ccq batch` without a server: the progress line and its throttling, the batch texts,
item errors, the client's requests, the follower on a batch stream (a scripted WebSocket
server in this process) and the commands with the API stubbed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import click
import pytest
import requests
from click.testing import CliRunner
from rich.console import Console
from urllib3.exceptions import ProtocolError
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from cli import batches as batch_cli
from cli.main import cli
from cli.progress import (
    PLAIN_EVERY_SECONDS,
    ProgressDisplay,
    RichProgress,
    Shown,
    plain_line_due,
)
from cli.render import detail_line, format_api_error
from cli.render_batches import (
    BAR_MAX,
    batch_cancelled,
    batch_details,
    batch_submitted,
    batch_summary,
    batches_table,
    format_eta,
    progress_line,
)
from client import ApiClient, ApiError, ApiUnreachable, JsonObject
from client.tail import Action, Backoff, Decision, Follower, Kind, on_close, stream_url
from tests.waiting import free_port

BATCH_ID = "b0000000-0000-4000-8000-000000000000"
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")


def _batch(
    total: int = 200, status: str = "running", cost: float = 0.024, **counts: int
) -> JsonObject:
    """A batch as the API shows it; ``counts`` by state, the rest of the items queued."""
    tally = {state: counts.get(state, 0) for state in STATES}
    tally["queued"] = counts.get("queued", total - sum(tally.values()))
    done = sum(n for state, n in tally.items() if state not in ("queued", "running"))
    finished = status != "running"
    return {
        "id": BATCH_ID,
        "status": status,
        "total_items": total,
        "counts": tally,
        "done": done,
        "progress": round(done / total, 4) if total else 1.0,
        "total_cost_usd": cost,
        "max_concurrency": None,
        "metadata": {},
        "notify_url": None,
        "created_at": "2026-01-31T11:58:00+00:00",
        "started_at": "2026-01-31T11:58:01+00:00",
        "finished_at": "2026-01-31T12:00:00+00:00" if finished else None,
        "elapsed_seconds": 119.5 if finished else 60.0,
        "eta_seconds": None if finished else 80.0,
    }


UNDER_WAY = _batch(succeeded=118, failed=2, running=8)  # 120 of 200 done, 72 queued


# --- the progress line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0s"),
        (-3, "0s"),
        (45.4, "45s"),
        (59.6, "1m00s"),
        (80, "1m20s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7500, "2h05m"),
        (90061, "1d01h"),
    ],
)
def test_eta_is_the_two_largest_whole_units(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


def test_the_progress_line_shows_bar_counts_cost_and_eta() -> None:
    line = progress_line(UNDER_WAY, width=80)
    assert line == (
        "[" + "█" * 16 + "░" * 12 + "] 120/200  60%  ✓118 ✗2 ▶8 …72  $0.0240  ETA 1m20s"
    )
    assert len(line) == 79  # one column short of the width: a terminal never wraps it


def test_the_bar_is_full_only_when_every_item_is_done() -> None:
    almost = progress_line(_batch(succeeded=199), width=80)
    assert "199/200  99%" in almost
    assert "░" in almost
    done = progress_line(_batch(status="succeeded", succeeded=200), width=80)
    assert "200/200 100%  ✓200 ✗0  $0.0240" in done
    assert "░" not in done
    assert "ETA" not in done  # a finished batch has none
    assert "▶" not in done
    assert "…" not in done


def test_failed_counts_timed_out_items_and_cancelled_ones_show_once_there_are_some() -> None:
    line = progress_line(_batch(10, succeeded=3, failed=1, timed_out=2, running=1), width=80)
    assert "✓3 ✗3 ▶1 …3" in line
    assert "⊘" not in line
    cancelled = progress_line(_batch(10, status="cancelled", succeeded=3, cancelled=7), width=80)
    assert "✓3 ✗0 ⊘7" in cancelled


def test_counts_are_right_aligned_so_the_line_keeps_its_place() -> None:
    assert "  5/200   2%" in progress_line(_batch(succeeded=5), width=100)
    assert "  0/200   0%  ✓0 ✗0 …200  $0" in progress_line(_batch(cost=0), width=100)


def test_a_wide_terminal_gets_a_bar_of_at_most_bar_max() -> None:
    line = progress_line(UNDER_WAY, width=300)
    assert line.index("]") == BAR_MAX + 1


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (62, "[██████░░░░] 120/200  60%  ✓118 ✗2 ▶8 …72  $0.0240  ETA 1m20s"),
        (60, "120/200  60%  ✓118 ✗2 ▶8 …72  $0.0240  ETA 1m20s"),
        (45, "120/200  60%  ✓118 ✗2 ▶8 …72  ETA 1m20s"),
        (30, "120/200  60%  ETA 1m20s"),
        (20, "120/200  60%"),
        (5, "120/200  60%"),  # the counter always stays
    ],
)
def test_a_narrow_terminal_drops_the_bar_then_cost_then_counts_then_eta(
    width: int, expected: str
) -> None:
    assert progress_line(UNDER_WAY, width=width) == expected


def test_the_line_fits_every_width_it_can() -> None:
    for width in range(14, 200):
        assert len(progress_line(UNDER_WAY, width=width)) < width, width


def test_colors_only_when_asked_and_they_do_not_change_the_text() -> None:
    plain = progress_line(UNDER_WAY, width=80, color=False)
    colored = progress_line(UNDER_WAY, width=80, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[" in colored
    assert click.unstyle(colored) == plain
    for ends in (_batch(cost=0), _batch(status="succeeded", succeeded=200)):
        assert "m\x1b[0m" not in progress_line(ends, color=True)  # no styles around nothing


def test_an_empty_batch_is_complete() -> None:
    assert "0/0 100%" in progress_line(_batch(0, status="succeeded"), width=80)


# --- when a plain progress line is written --------------------------------------------


def test_the_first_plain_line_is_always_written() -> None:
    assert plain_line_due(None, 0.0, 0, 200, "a")


def test_an_unchanged_line_is_never_repeated_not_even_the_final_one() -> None:
    last = Shown(at=0.0, done=5, line="same")
    assert not plain_line_due(last, 100.0, 5, 200, "same")
    assert not plain_line_due(last, 100.0, 5, 200, "same", final=True)


def test_the_final_line_is_written_at_once() -> None:
    assert plain_line_due(Shown(0.0, 190, "old"), 0.1, 200, 200, "new", final=True)


def test_a_tenth_of_the_items_more_is_written_at_once_less_waits() -> None:
    last = Shown(at=10.0, done=20, line="old")
    assert plain_line_due(last, 10.1, 40, 200, "new")  # +20 = 10% of 200
    assert not plain_line_due(last, 10.1, 39, 200, "new")
    assert not plain_line_due(last, 10.0 + PLAIN_EVERY_SECONDS - 0.01, 39, 200, "new")
    assert plain_line_due(last, 10.0 + PLAIN_EVERY_SECONDS, 21, 200, "new")


def test_in_a_small_batch_every_item_done_is_a_tenth() -> None:
    assert plain_line_due(Shown(0.0, 1, "old"), 0.1, 2, 3, "new")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_gets_one_line_redrawn_in_place_and_a_newline_at_the_end() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system=None)
    display = RichProgress(console)
    first, second = _batch(succeeded=10), _batch(succeeded=11)

    display.update(first)
    display.update(second)
    display.note("ccq: the connection dropped; reconnecting")
    display.close()

    written = out.getvalue()
    # The bar makes way for the note (the line is erased, the note printed on its own)...
    assert "\r\x1b[2Kccq: the connection dropped; reconnecting\n" in written
    # ...and comes back under it, redrawn in place, showing the last state at the end.
    last = written.rsplit("\r\x1b[2K", 1)[1]
    assert "11/200" in last
    assert "✓11" in last
    assert "10/200" not in last
    assert last.endswith("\n\x1b[?25h")  # a newline after the bar, the cursor back
    display.close()
    assert out.getvalue() == written  # closing twice adds nothing


def test_elsewhere_plain_lines_are_throttled_and_the_final_one_is_written() -> None:
    written: list[str] = []
    clock = Clock()
    display = ProgressDisplay(written.append, clock=clock)

    display.update(_batch(succeeded=0))  # the first: written
    clock.now = 1.0
    display.update(_batch(succeeded=5))  # too soon, too little: not written
    clock.now = 2.0
    display.update(_batch(succeeded=25))  # +25 since the last written, over a tenth
    clock.now = 3.0
    display.update(_batch(succeeded=26))  # not written...
    display.close()  # ...but the last state always is

    assert [line.split("]")[1].split("%")[0].strip() for line in written] == [
        "0/200   0",
        "25/200  12",
        "26/200  13",
    ]
    assert all(line.endswith("\n") and "\r" not in line for line in written)
    assert all("\x1b[" not in line for line in written)  # not a terminal: no colors


# --- batch texts ----------------------------------------------------------------------


def test_item_errors_name_the_item_its_field_and_the_reason() -> None:
    error = ApiError(
        400,
        "invalid_input",
        "3 invalid item(s), nothing was created; first: item 1: prompt: Field required",
        [
            {"index": 1, "field": "items.1.prompt", "reason": "Field required"},
            {"index": 3, "field": "items.3.(line)", "reason": "line 5 is not valid JSON"},
            {"index": 7, "field": "items.7.allowed_tools.0", "reason": "Input should be a string"},
        ],
    )
    assert format_api_error(error).splitlines() == [
        "ccq: 3 invalid item(s), nothing was created; first: item 1: prompt: Field required",
        "  item 1: prompt: Field required",
        "  item 3: (line): line 5 is not valid JSON",
        "  item 7: allowed_tools.0: Input should be a string",
    ]


def test_details_without_an_index_keep_their_field() -> None:
    assert detail_line({"field": "items", "reason": "at most 10000"}) == "items: at most 10000"
    assert detail_line({"index": True, "field": "f", "reason": "r"}) == "f: r"


def test_the_submitted_line_says_how_many_and_how_many_at_a_time() -> None:
    batch = {**_batch(3), "max_concurrency": 2}
    assert batch_submitted(batch) == f"batch {BATCH_ID}: 3 items queued, at most 2 at a time"
    assert batch_submitted(_batch(1)) == f"batch {BATCH_ID}: 1 item queued"
    assert batch_submitted(_batch(3, succeeded=1), created=False) == (
        f"batch {BATCH_ID}: already submitted with this idempotency key (running, 1/3 done)"
    )


def test_the_summary_has_state_tally_cost_and_duration() -> None:
    batch = _batch(3, status="failed", succeeded=2, timed_out=1, cost=0.0123)
    assert batch_summary(batch) == (
        f"batch {BATCH_ID} failed  3/3 done: 2 succeeded, 1 timed_out  $0.0123  1m59s"
    )


def test_cancel_says_what_is_left_and_what_is_stopping() -> None:
    batch = _batch(10, status="cancelled", succeeded=2, cancelled=7, running=1)
    assert batch_cancelled(batch) == (
        f"batch {BATCH_ID}: cancelled; 2 succeeded, 7 cancelled, 1 running "
        "(the 1 running one is stopping)"
    )


def test_details_show_progress_timings_and_the_eta_while_running() -> None:
    lines = batch_details({**UNDER_WAY, "max_concurrency": 8, "metadata": {"k": 1}}).splitlines()
    assert lines[0] == f"batch {BATCH_ID}"
    assert "  progress     120/200 done (60%)" in lines
    assert "  items        118 succeeded, 2 failed, 8 running, 72 queued" in lines
    assert "  concurrency  at most 8 at a time" in lines
    assert "  started      2026-01-31 11:58:01 UTC" in lines
    assert "  eta          1m20s" in lines
    assert '  metadata     {"k": 1}' in lines
    finished = batch_details(_batch(3, status="succeeded", succeeded=3))
    assert "eta" not in finished
    assert "  finished     2026-01-31 12:00:00 UTC" in finished.splitlines()


def test_the_batches_table_lines_up() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 31, 12, 0, 0, tzinfo=UTC)
    table = batches_table([UNDER_WAY, _batch(3, status="succeeded", succeeded=3)], now)
    assert table.splitlines() == [
        "ID                                    STATUS     DONE     COST     CREATED",
        f"{BATCH_ID}  running    120/200  $0.0240  2m ago",
        f"{BATCH_ID}  succeeded  3/3      $0.0240  2m ago",
    ]
    assert batches_table([], now) == "no batches"


# --- the client's requests ------------------------------------------------------------


class RecordingHttp(requests.Session):
    """Records each request and answers with the next of ``answers`` (no network)."""

    def __init__(self, *answers: tuple[int, bytes | io.RawIOBase]) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []
        self.answers = list(answers)

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        status, body = self.answers.pop(0)
        response = requests.Response()
        response.status_code = status
        if isinstance(body, bytes):
            response._content = body
        else:
            response.raw = body
        return response


def _answer(status: int, body: JsonObject) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()


def test_an_ndjson_upload_sends_the_file_as_it_is_with_options_in_the_query() -> None:
    http = RecordingHttp(_answer(201, {"batch": _batch(2)}), _answer(200, {"batch": _batch(2)}))
    client = ApiClient("http://api/", "t", http)
    body = io.BytesIO(b'{"prompt": "a"}\n{"prompt": "b"}\n')

    assert client.create_batch_ndjson(body, max_concurrency=2) == (_batch(2), True)
    replayed = client.create_batch_ndjson(b"{}", idempotency_key="k", notify_url="https://h/x")
    assert replayed == (_batch(2), False)  # 200: the key matched an earlier batch

    first, second = http.calls
    assert (first["method"], first["url"]) == ("POST", "http://api/api/v1/batches")
    assert first["data"] is body  # streamed by requests, not read here
    assert first["headers"] == {"Content-Type": "application/x-ndjson"}
    assert first["params"] == {"max_concurrency": 2}
    assert first["json"] is None
    assert first["timeout"][1] >= 300  # a 10,000-item batch takes a while to accept
    assert second["params"] == {"idempotency_key": "k", "notify_url": "https://h/x"}


def test_the_batch_endpoints() -> None:
    http = RecordingHttp(
        _answer(200, {"batch": UNDER_WAY}),
        _answer(200, {"batches": [], "next_cursor": None}),
        _answer(202, {"batch": UNDER_WAY}),
    )
    client = ApiClient("http://api", "t", http)
    assert client.get_batch(BATCH_ID) == UNDER_WAY
    assert client.list_batches(limit=5, cursor="c") == {"batches": [], "next_cursor": None}
    assert client.cancel_batch(BATCH_ID) == UNDER_WAY
    assert [(c["method"], c["url"], c["params"]) for c in http.calls] == [
        ("GET", f"http://api/api/v1/batches/{BATCH_ID}", {}),
        ("GET", "http://api/api/v1/batches", {"limit": 5, "cursor": "c"}),
        ("POST", f"http://api/api/v1/batches/{BATCH_ID}/cancel", {}),
    ]


class Chunks(io.RawIOBase):
    """A streamed body arriving in pieces, breaking off with ``fail`` if given."""

    def __init__(self, *chunks: bytes, fail: Exception | None = None) -> None:
        self.chunks, self.fail = list(chunks), fail

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield from self.chunks
        if self.fail is not None:
            raise self.fail


def test_results_stream_line_by_line_across_chunks() -> None:
    http = RecordingHttp(
        (200, Chunks(b'{"index": 0}\n{"ind', b'ex": 1}\n', b"\n", b'{"index": 2}\n'))
    )
    client = ApiClient("http://api", "t", http)
    lines = client.batch_results(BATCH_ID)
    assert http.calls == []  # nothing is asked before the lines are
    assert list(lines) == [b'{"index": 0}', b'{"index": 1}', b'{"index": 2}']
    [call] = http.calls
    assert call["url"] == f"http://api/api/v1/batches/{BATCH_ID}/results"
    assert call["stream"] is True


def test_results_that_break_off_or_are_refused_raise_the_clients_errors() -> None:
    broken = Chunks(b'{"index": 0}\n', fail=ProtocolError("connection reset"))
    client = ApiClient("http://api", "t", RecordingHttp((200, broken)))
    lines = client.batch_results(BATCH_ID)
    assert next(lines) == b'{"index": 0}'
    with pytest.raises(ApiUnreachable, match="the connection broke mid-answer"):
        next(lines)

    missing = _answer(404, {"error": {"code": "not_found", "message": "batch x not found"}})
    client = ApiClient("http://api", "t", RecordingHttp(missing))
    with pytest.raises(ApiError) as raised:
        list(client.batch_results(BATCH_ID))
    assert (raised.value.status, raised.value.message) == (404, "batch x not found")


# --- following a batch stream ---------------------------------------------------------


def _event(event_id: str | None, batch: JsonObject, kind: str = "ccq.batch.progress") -> str:
    return json.dumps(
        {"id": event_id, "batch_id": BATCH_ID, "type": kind, "data": {"batch": batch, "item": None}}
    )


def _opening(after: str) -> str:
    return json.dumps({"tail": {"batch_id": BATCH_ID, "after": after}})


class BatchStream:
    """A WebSocket server playing one script per connection, recording the paths asked."""

    def __init__(self) -> None:
        self.scripts: list[Callable[[ServerConnection], None]] = []
        self.paths: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def handle(self, ws: ServerConnection) -> None:
        self.paths.append(ws.request.path if ws.request else "")
        self.scripts.pop(0)(ws)

    def afters(self) -> list[str | None]:
        return [parse_qs(urlsplit(p).query).get("after", [None])[0] for p in self.paths]


@pytest.fixture
def stream() -> Iterator[BatchStream]:
    scripted = BatchStream()
    server: Server = serve(scripted.handle, "127.0.0.1", scripted.port, compression=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield scripted
    server.shutdown()
    thread.join(timeout=5)


def test_a_batch_stream_delivers_snapshots_without_moving_the_cursor(stream: BatchStream) -> None:
    def first(ws: ServerConnection) -> None:
        ws.send(_opening("10-0"))
        ws.send(_event(None, _batch(3)))  # the snapshot
        ws.send(_event("11-0", _batch(3, running=1)))
        ws.send(_event(None, _batch(3, running=1)))  # one more, for the cursor's sake
        ws.close_socket()  # gone without a close frame

    def second(ws: ServerConnection) -> None:
        ws.send(_opening("11-0"))
        ws.send(_event("12-0", _batch(3, "succeeded", succeeded=3), "ccq.batch.finished"))
        ws.close(1000, "batch succeeded")

    stream.scripts = [first, second]
    got: list[JsonObject] = []
    follower = Follower(
        stream.url, "t", Kind.BATCH, BATCH_ID, backoff=Backoff(), sleep=lambda _: None
    )

    assert follower.follow(lambda event, _raw: got.append(event)) == "batch succeeded"

    assert [e["id"] for e in got] == [None, "11-0", None, "12-0"]
    assert stream.paths[0] == f"/api/v1/batches/{BATCH_ID}/stream"
    assert stream.afters() == [None, "11-0"]  # the snapshot after 11-0 did not move it
    assert follower.after == "12-0"


def test_the_batch_stream_url() -> None:
    assert stream_url("https://h", Kind.BATCH, BATCH_ID, "5-1") == (
        f"wss://h/api/v1/batches/{BATCH_ID}/stream?after=5-1"
    )


def test_a_forbidden_stream_ends_with_the_servers_reason() -> None:
    reason = "a session token cannot follow batches"
    assert on_close(4403, reason) == Decision(Action.FAIL, reason)
    assert on_close(4403).why == "forbidden"


def test_follow_batch_stops_at_the_finished_event(
    stream: BatchStream, capsys: pytest.CaptureFixture[str]
) -> None:
    final = _batch(3, "failed", succeeded=2, failed=1)

    def script(ws: ServerConnection) -> None:
        ws.send(_opening("1-0"))
        ws.send(_event(None, _batch(3, running=2)))
        ws.send(_event("2-0", _batch(3, succeeded=1, running=2)))
        ws.send(_event("3-0", final, "ccq.batch.finished"))
        with contextlib.suppress(ConnectionClosed):
            ws.recv()  # the server does not close: the client must stop by itself

    stream.scripts = [script]
    with ApiClient(stream.url, "t") as client:
        assert batch_cli.follow_batch(client, _batch(3)) == final

    err = capsys.readouterr().err.splitlines()
    assert [line.split("]")[1].split("%")[0].strip() for line in err] == [
        "0/3   0",
        "1/3  33",
        "3/3 100",
    ]  # not a terminal: a line per third here, none for the unchanged snapshot
    assert err[-1].endswith("✓2 ✗1  $0.0240")


def test_a_stream_that_ends_early_is_finished_by_reading_the_batch(
    stream: BatchStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    def script(ws: ServerConnection) -> None:
        ws.send(_opening("1-0"))
        ws.close(1000, "closed")

    stream.scripts = [script]
    answers = [_batch(3, running=3), _batch(3, "succeeded", succeeded=3)]
    monkeypatch.setattr(ApiClient, "get_batch", lambda self, batch_id: answers.pop(0))
    monkeypatch.setattr(batch_cli, "POLL_FIRST", 0.01)
    with ApiClient(stream.url, "t") as client:
        assert batch_cli.follow_batch(client, _batch(3))["status"] == "succeeded"
    assert answers == []


# --- the commands, with the API stubbed -----------------------------------------------

API = ["--api-url", "http://127.0.0.1:9", "--token", "t"]


def _invoke(*args: str, input: str | bytes | None = None) -> Any:
    return CliRunner().invoke(cli, [*args, *API], input=input)


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[JsonObject]:
    """``ApiClient.create_batch_ndjson`` records what it was sent and creates a batch."""
    calls: list[JsonObject] = []

    def create(self: ApiClient, body: bytes | io.BufferedIOBase, **options: Any) -> Any:
        data = body if isinstance(body, bytes) else body.read()
        calls.append({"body": data, "streamed": not isinstance(body, bytes), **options})
        return {**_batch(2), "max_concurrency": options["max_concurrency"]}, True

    monkeypatch.setattr(ApiClient, "create_batch_ndjson", create)
    return calls


def test_submit_prints_the_id_and_a_summary(submitted: list[JsonObject], tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_bytes(b'{"prompt": "a"}\n{"prompt": "b"}\n')

    result = _invoke("batch", "submit", str(items), "--max-concurrency", "2")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{BATCH_ID}\n"
    assert result.stderr == (
        f"batch {BATCH_ID}: 2 items queued, at most 2 at a time "
        f"(`ccq batch status {BATCH_ID} --wait` follows it)\n"
    )
    assert submitted == [
        {
            "body": items.read_bytes(),
            "streamed": True,  # the file itself, not its bytes read first
            "max_concurrency": 2,
            "notify_url": None,
            "idempotency_key": None,
        }
    ]


def test_submit_reads_stdin_and_json_prints_the_apis_answer(
    submitted: list[JsonObject],
) -> None:
    result = _invoke("batch", "submit", "-", "--json", input=b'{"prompt": "a"}\n')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batch"]["id"] == BATCH_ID
    assert submitted[0]["body"] == b'{"prompt": "a"}\n'


def test_a_pipe_is_read_before_it_is_sent_a_file_is_not(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as writer:
        writer.write(b'{"prompt": "a"}\n')
    with os.fdopen(read_end, "rb") as pipe:
        assert batch_cli._upload_body(pipe) == b'{"prompt": "a"}\n'  # no length to send
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"{}\n")
    with items.open("rb") as file:
        assert batch_cli._upload_body(file) is file


def test_submit_refuses_a_missing_file_and_a_zero_concurrency(
    submitted: list[JsonObject],
) -> None:
    assert _invoke("batch", "submit", "/no/such.jsonl").exit_code == 2
    assert _invoke("batch", "submit", "-", "--max-concurrency", "0", input=b"").exit_code == 2
    assert submitted == []


def test_submit_lists_each_invalid_item_and_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def invalid(self: ApiClient, body: Any, **options: Any) -> NoReturn:
        raise ApiError(
            400,
            "invalid_input",
            "2 invalid item(s), nothing was created; first: item 0: prompt: Field required",
            [
                {"index": 0, "field": "items.0.prompt", "reason": "Field required"},
                {"index": 2, "field": "items.2.(line)", "reason": "line 3 is not valid JSON"},
            ],
        )

    monkeypatch.setattr(ApiClient, "create_batch_ndjson", invalid)
    result = _invoke("batch", "submit", "-", input=b"{}\n")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[1:] == [
        "  item 0: prompt: Field required",
        "  item 2: (line): line 3 is not valid JSON",
    ]


@pytest.mark.parametrize(
    ("status", "code", "as_json"),
    [("succeeded", 0, False), ("failed", 1, False), ("cancelled", 1, True)],
)
def test_submit_wait_exits_with_the_batchs_outcome(
    submitted: list[JsonObject],
    monkeypatch: pytest.MonkeyPatch,
    status: str,
    code: int,
    as_json: bool,
) -> None:
    final = _batch(
        2, status, **({status: 2} if status == "succeeded" else {"succeeded": 1, status: 1})
    )
    monkeypatch.setattr(batch_cli, "follow_batch", lambda client, batch: final)
    args = ["--json"] if as_json else []

    result = _invoke("batch", "submit", "-", "--wait", *args, input=b"{}\n{}\n")

    assert result.exit_code == code, result.output
    if as_json:
        assert json.loads(result.stdout) == {"batch": final}  # only the finished batch
    else:
        assert result.stdout == f"{BATCH_ID}\n"
    assert result.stderr.splitlines()[-1] == batch_summary(final)


def test_ctrl_c_while_waiting_says_the_batch_goes_on(
    submitted: list[JsonObject], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(client: ApiClient, batch: JsonObject) -> NoReturn:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_cli, "follow_batch", interrupted)
    result = _invoke("batch", "submit", "-", "--wait", input=b"{}\n")
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1] == (
        f"ccq: stopped waiting; batch {BATCH_ID} goes on (`ccq batch cancel {BATCH_ID}` cancels it)"
    )


def test_status_shows_details_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ApiClient, "get_batch", lambda self, batch_id: UNDER_WAY)
    result = _invoke("batch", "status", BATCH_ID)
    assert result.exit_code == 0
    assert result.stdout == batch_details(UNDER_WAY) + "\n"
    as_json = _invoke("batch", "status", BATCH_ID, "--json")
    assert json.loads(as_json.stdout) == {"batch": UNDER_WAY}
    assert _invoke("batch", "status", "nope").exit_code == 2


def test_status_wait_prints_the_finished_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    final = _batch(2, "succeeded", succeeded=2)
    monkeypatch.setattr(ApiClient, "get_batch", lambda self, batch_id: UNDER_WAY)
    monkeypatch.setattr(batch_cli, "follow_batch", lambda client, batch: final)
    result = _invoke("batch", "status", BATCH_ID, "--wait")
    assert result.exit_code == 0
    assert result.stdout == batch_details(final) + "\n"


LINES = [
    json.dumps({"index": i, "status": s}).encode() for i, s in enumerate(["succeeded", "running"])
]


def test_results_are_written_to_stdout_line_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ApiClient, "batch_results", lambda self, batch_id: iter(LINES))
    result = _invoke("batch", "results", BATCH_ID)
    assert result.exit_code == 0
    assert result.stdout_bytes == b"".join(line + b"\n" for line in LINES)
    assert (
        result.stderr
        == "ccq: 1 of 2 items have not finished yet (their lines say queued or running)\n"
    )


def test_results_to_a_file_replace_it_only_once_complete(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text("older results\n")

    def broken(self: ApiClient, batch_id: str) -> Iterator[bytes]:
        yield LINES[0]
        raise ApiUnreachable("http://api", "the connection broke mid-answer")

    monkeypatch.setattr(ApiClient, "batch_results", broken)
    failed = _invoke("batch", "results", BATCH_ID, "-o", str(out))
    assert failed.exit_code == 1
    assert "the connection broke mid-answer" in failed.stderr
    assert out.read_text() == "older results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # no leftovers

    monkeypatch.setattr(ApiClient, "batch_results", lambda self, batch_id: iter(LINES[:1]))
    done = _invoke("batch", "results", BATCH_ID, "--output", str(out))
    assert done.exit_code == 0
    assert done.stdout == ""
    assert out.read_bytes() == LINES[0] + b"\n"
    assert done.stderr == f"batch {BATCH_ID}: 1 results written to {out}\n"


def test_cancel_prints_the_counts_and_a_finished_batch_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    after = _batch(10, "cancelled", succeeded=2, cancelled=8)
    monkeypatch.setattr(ApiClient, "cancel_batch", lambda self, batch_id: after)
    result = _invoke("batch", "cancel", BATCH_ID)
    assert result.exit_code == 0
    assert result.stdout == batch_cancelled(after) + "\n"

    def finished(self: ApiClient, batch_id: str) -> NoReturn:
        raise ApiError(409, "conflict", f"batch {batch_id} has already finished (succeeded)")

    monkeypatch.setattr(ApiClient, "cancel_batch", finished)
    result = _invoke("batch", "cancel", BATCH_ID)
    assert result.exit_code == 1
    assert result.stderr == (
        f"ccq: batch {BATCH_ID} has already finished (succeeded); nothing to cancel\n"
    )


def test_list_follows_the_pages_with_all(monkeypatch: pytest.MonkeyPatch) -> None:
    pages: dict[str | None, JsonObject] = {
        None: {"batches": [UNDER_WAY], "next_cursor": "c1"},
        "c1": {"batches": [UNDER_WAY], "next_cursor": None},
    }
    asked: list[tuple[int | None, str | None]] = []

    def list_batches(
        self: ApiClient, *, limit: int | None = None, cursor: str | None = None
    ) -> JsonObject:
        asked.append((limit, cursor))
        return pages[cursor]

    monkeypatch.setattr(ApiClient, "list_batches", list_batches)
    one = _invoke("batch", "list", "--limit", "1")
    assert one.exit_code == 0
    assert one.stdout.splitlines()[0].split() == ["ID", "STATUS", "DONE", "COST", "CREATED"]
    assert len(one.stdout.splitlines()) == 2
    assert one.stderr == "(more: --all, or --limit above 1)\n"
    every = _invoke("batch", "list", "--limit", "1", "--all", "--json")
    assert json.loads(every.stdout) == {"batches": [UNDER_WAY, UNDER_WAY], "next_cursor": None}
    assert asked == [(1, None), (1, None), (1, "c1")]
