"""Webhook notifications: URL rules, payload shapes, clipping, backoff, and one delivery
attempt against a real local HTTP server (real sockets, nothing mocked)."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from client.retry import parse_retry_after
from orchestrator.notify.delivery import (
    BACKOFF_CAP_SECONDS,
    USER_AGENT,
    backoff_seconds,
    deliver,
    retry_delay,
)
from orchestrator.notify.payloads import (
    DISCORD_CONTENT_MAX,
    RESULT_MAX,
    SLACK_TEXT_MAX,
    BatchSummary,
    RunSummary,
    batch_headline,
    batch_payload,
    clip,
    format_duration,
    run_payload,
)
from orchestrator.notify.urls import redact_url, validate_notify_url
from orchestrator.outbound import OutboundPolicy
from tests.waiting import free_port

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
BATCH_ID = uuid.UUID("12345678-1234-4234-8234-123456789abc")


# --- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
        "https://discord.com/api/webhooks/123/abc-DEF_ghi",
        "http://127.0.0.1:8080/hook?token=abc",
        "http://[::1]:9000/hook",
        "HTTPS://Example.COM",
    ],
)
def test_webhook_urls_that_are_accepted(url: str) -> None:
    assert validate_notify_url(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("", "http:// or https://"),
        ("https:///hook", "host"),
        ("https://user:secret@example.com/hook", "credentials"),
        ("https://token@example.com/hook", "credentials"),
        ("https://example.com/hook#frag", "fragment"),
        ("https://example.com/hook#", "fragment"),
        ("https://example.com:99999/hook", "not a valid URL"),
        ("https://example.com:0/hook", "port 0"),
        ("https://example.com/a b", "whitespace"),
        ("https://example.com/\nX-Injected: 1", "whitespace"),
        ("https://example.com/" + "a" * 2000, "2000"),
    ],
)
def test_webhook_urls_that_are_refused_say_why(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_notify_url(url)


def test_the_longest_url_allowed_is_2000_characters() -> None:
    url = "https://example.com/"
    url += "a" * (2000 - len(url))
    assert validate_notify_url(url) == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/SECRET", "https://hooks.slack.com/…"),
        ("http://127.0.0.1:8080/hook?token=SECRET", "http://127.0.0.1:8080/…"),
        ("https://example.com/?token=SECRET", "https://example.com/…"),
        ("http://[::1]:9000/SECRET", "http://[::1]:9000/…"),
        ("https://user:SECRET@example.com/", "https://example.com/"),
        ("https://example.com", "https://example.com/"),
        ("HTTPS://Example.COM/SECRET", "https://example.com/…"),
        ("not a url SECRET", "<invalid url>"),
        ("https://example.com:bad/SECRET", "<invalid url>"),
    ],
)
def test_a_redacted_url_shows_only_where_it_points(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "SECRET" not in redact_url(url)


# --- clipping and formats -----------------------------------------------------------------


def test_clip_keeps_short_text_and_marks_a_cut() -> None:
    assert clip("hello", 5) == "hello"
    assert clip("hello world", 6) == "hello…"
    assert len(clip("x" * 5000, 2000)) == 2000
    assert clip("abc", 0) == ""


def test_clip_counts_emoji_as_two_and_never_splits_one() -> None:
    text = "😀" * 10  # each is 2 UTF-16 units
    clipped = clip(text, 7)
    assert clipped == "😀😀😀…"
    assert len(clipped.encode("utf-16-le")) // 2 <= 7
    clipped.encode("utf-8")  # no lone surrogate


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (192, "3m12s"), (3600, "1h00m"), (7500, "2h05m")],
)
def test_durations_read_like_a_person_would_write_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- payloads ------------------------------------------------------------------------------


def _batch(**changes: Any) -> BatchSummary:
    fields: dict[str, Any] = {
        "id": BATCH_ID,
        "status": "failed",
        "total_items": 200,
        "counts": {"succeeded": 198, "failed": 2, "queued": 0, "running": 0},
        "total_cost_usd": Decimal("0.431234"),
        "created_at": NOW - timedelta(minutes=3, seconds=12),
        "finished_at": NOW,
        "metadata": {"project": "evals"},
    }
    return BatchSummary(**{**fields, **changes})


def _run(**changes: Any) -> RunSummary:
    fields: dict[str, Any] = {
        "session_id": uuid.UUID("aaaaaaaa-1111-4111-8111-111111111111"),
        "run_id": uuid.UUID("bbbbbbbb-2222-4222-8222-222222222222"),
        "status": "succeeded",
        "result": "All tests pass.",
        "error": None,
        "total_cost_usd": Decimal("0.0123"),
        "finished_at": NOW,
        "started_at": NOW - timedelta(seconds=12),
    }
    return RunSummary(**{**fields, **changes})


def test_the_batch_headline_says_how_it_went() -> None:
    assert batch_headline(_batch()) == (
        "ccq batch 12345678… failed: 198/200 succeeded, 2 failed, $0.43 in 3m12s"
    )
    done = _batch(status="succeeded", counts={"succeeded": 3}, total_items=3)
    assert batch_headline(done).startswith("ccq batch 12345678… succeeded: 3/3 succeeded, $0.43")
    mixed = _batch(counts={"succeeded": 1, "timed_out": 2, "cancelled": 3, "weird": 4})
    assert "1/200 succeeded, 2 timed out, 3 cancelled, 4 weird," in batch_headline(mixed)
    named = _batch(metadata={"name": "nightly\nevals"})
    assert batch_headline(named).startswith("ccq batch 12345678… (nightly evals) failed:")


def test_a_batch_payload_suits_slack_discord_and_generic_receivers() -> None:
    payload = batch_payload(_batch())
    headline = "ccq batch 12345678… failed: 198/200 succeeded, 2 failed, $0.43 in 3m12s"
    assert payload["text"] == headline  # Slack
    assert payload["content"] == headline  # Discord
    assert payload["allowed_mentions"] == {"parse": []}
    (embed,) = payload["embeds"]
    assert embed["title"] == "ccq batch 12345678… failed"
    assert embed["timestamp"] == NOW.isoformat()
    assert {f["name"]: f["value"] for f in embed["fields"]}["Cost"] == "$0.43"
    assert payload["ccq"] == {
        "version": 1,
        "event": "batch.finished",
        "batch": {
            "id": str(BATCH_ID),
            "status": "failed",
            "total_items": 200,
            "counts": {"succeeded": 198, "failed": 2, "queued": 0, "running": 0},
            "total_cost_usd": 0.431234,
            "created_at": (NOW - timedelta(minutes=3, seconds=12)).isoformat(),
            "finished_at": NOW.isoformat(),
            "duration_seconds": 192.0,
            "metadata": {"project": "evals"},
        },
    }
    json.dumps(payload)  # plain JSON all the way down


def test_a_run_payload_carries_its_result_and_the_structured_outcome() -> None:
    payload = run_payload(_run())
    assert payload["content"] == (
        "ccq run bbbbbbbb… (session aaaaaaaa…) succeeded, $0.01 in 12s\nAll tests pass."
    )
    assert payload["text"] == payload["content"]
    assert payload["embeds"][0]["description"] == "All tests pass."
    assert payload["ccq"]["event"] == "run.finished"
    assert payload["ccq"]["run"] == {
        "id": "bbbbbbbb-2222-4222-8222-222222222222",
        "session_id": "aaaaaaaa-1111-4111-8111-111111111111",
        "status": "succeeded",
        "result": "All tests pass.",
        "result_truncated": False,
        "error": None,
        "error_code": None,
        "total_cost_usd": 0.0123,
        "metered_cost_usd": None,
        "started_at": (NOW - timedelta(seconds=12)).isoformat(),
        "finished_at": NOW.isoformat(),
        "duration_seconds": 12.0,
    }
    json.dumps(payload)


def test_a_run_stopped_by_a_budget_says_so_in_words_and_as_a_code() -> None:
    refusal = "ccq budget exceeded: the session tree under x has spent $1.00 of its $1.00"
    payload = run_payload(
        _run(
            status="failed",
            result=None,
            error=refusal,
            error_code="budget_exceeded",
            metered_cost_usd=Decimal("1.02"),
        )
    )
    assert payload["ccq"]["run"]["error_code"] == "budget_exceeded"
    assert payload["ccq"]["run"]["metered_cost_usd"] == 1.02
    assert payload["content"].endswith(refusal)


def test_a_failed_run_shows_its_error() -> None:
    payload = run_payload(_run(status="failed", result=None, error="CLI exited 1"))
    assert payload["content"].endswith("failed, $0.01 in 12s\nCLI exited 1")
    assert payload["ccq"]["run"]["error"] == "CLI exited 1"


def test_markup_in_a_result_cannot_ping_or_link() -> None:
    payload = run_payload(_run(result="<!channel> @everyone <https://evil|click> & more"))
    # Slack: escaped, so no <!channel> broadcast and no disguised link.
    assert "&lt;!channel&gt; @everyone &lt;https://evil|click&gt; &amp; more" in payload["text"]
    assert "<" not in payload["text"]
    # Discord: shown as written, with every mention disabled.
    assert "<!channel> @everyone" in payload["content"]
    assert payload["allowed_mentions"] == {"parse": []}


def test_huge_results_are_clipped_to_each_receivers_limit() -> None:
    huge = ("&<> 😀 word " * 20_000).strip()
    payload = run_payload(_run(result=huge, error="e" * 50_000))
    assert len(payload["content"]) <= DISCORD_CONTENT_MAX
    assert len(payload["content"].encode("utf-16-le")) // 2 <= DISCORD_CONTENT_MAX
    assert payload["content"].endswith("…")
    assert len(payload["text"]) <= SLACK_TEXT_MAX
    assert payload["text"].endswith("…")
    # Escaping happened before the cut, and the cut left no half entity behind.
    body = payload["text"].removesuffix("…")
    assert "<" not in body
    for piece in body.split("&")[1:]:
        assert piece.startswith(("amp;", "lt;", "gt;")), piece[:6]
    embed = payload["embeds"][0]
    assert len(embed["description"]) <= 4096
    assert len(embed["title"]) <= 256
    run = payload["ccq"]["run"]
    assert len(run["result"]) <= RESULT_MAX
    assert run["result_truncated"] is True
    json.dumps(payload)


def test_a_huge_batch_name_is_clipped_too() -> None:
    payload = batch_payload(_batch(metadata={"name": "<&>" * 5000}))
    assert len(payload["content"]) <= DISCORD_CONTENT_MAX
    assert len(payload["text"]) <= SLACK_TEXT_MAX
    for piece in payload["text"].split("&")[1:]:
        assert piece.startswith(("amp;", "lt;", "gt;")), piece[:6]


# --- backoff -----------------------------------------------------------------------------


def test_backoff_doubles_with_a_little_jitter_and_is_capped() -> None:
    for attempt, nominal in [(0, 2.0), (1, 4.0), (2, 8.0), (5, 64.0), (7, 256.0)]:
        assert backoff_seconds(attempt, rand=lambda: 0.0) == nominal
        assert backoff_seconds(attempt, rand=lambda: 0.999) >= nominal * 0.9
        assert nominal * 0.9 <= backoff_seconds(attempt) <= nominal
    for attempt in (8, 9, 20, 1000):
        assert 0.9 * BACKOFF_CAP_SECONDS <= backoff_seconds(attempt) <= BACKOFF_CAP_SECONDS
    assert backoff_seconds(-3, rand=lambda: 0.0) == 2.0


def test_a_retry_after_hint_wins_within_bounds() -> None:
    assert retry_delay(0, 30.0) == 30.0
    assert retry_delay(5, 0.0) == 1.0
    assert retry_delay(0, 10_000.0) == 900.0
    assert retry_delay(3, None, rand=lambda: 0.0) == 16.0


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(
        format_datetime(NOW + timedelta(seconds=42), usegmt=True), now=NOW
    ) == (42.0)
    assert parse_retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), now=NOW) == 0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


# --- delivery against a real local server -------------------------------------------------


class Receiver:
    """A tiny webhook receiver on 127.0.0.1; its path picks the answer."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(self.rfile.read(length) or b"null"),
                    }
                )
                if self.path.startswith("/hang"):
                    receiver.release.wait(10)
                    return
                status, headers = receiver.answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # The operator's policy that lets this receiver in (and nothing else on loopback).
        self.policy = _open_to(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @staticmethod
    def answer(path: str) -> tuple[int, dict[str, str]]:
        if path.startswith("/ok"):
            return 200, {}
        if path.startswith("/accepted"):
            return 204, {}
        if path.startswith("/broken"):
            return 500, {}
        if path.startswith("/unavailable"):
            return 503, {"Retry-After": "12"}
        if path.startswith("/missing"):
            return 404, {}
        if path.startswith("/limited-date"):
            when = datetime.now(UTC) + timedelta(seconds=60)
            return 429, {"Retry-After": format_datetime(when, usegmt=True)}
        if path.startswith("/limited-blind"):
            return 429, {}
        if path.startswith("/limited"):
            return 429, {"Retry-After": "7"}
        if path.startswith("/moved"):
            return 302, {"Location": "/ok"}
        return 400, {}

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _open_to(port: int) -> OutboundPolicy:
    return OutboundPolicy(ports=frozenset({port}), allow_private=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def test_a_2xx_is_delivered_with_json_and_our_user_agent(receiver: Receiver) -> None:
    payload = {"text": "hi", "content": "hi", "ccq": {"n": 1}}
    result = deliver(f"{receiver.url}/ok/SECRET", payload, timeout=2, policy=receiver.policy)
    assert (result.ok, result.retry, result.status) == (True, False, 200)
    (seen,) = receiver.requests
    assert seen["body"] == payload
    assert seen["headers"]["User-Agent"] == USER_AGENT
    assert seen["headers"]["Content-Type"] == "application/json"
    assert deliver(f"{receiver.url}/accepted", payload, timeout=2, policy=receiver.policy).ok


@pytest.mark.parametrize(
    ("path", "retry", "status", "retry_after"),
    [
        ("/broken", True, 500, None),
        ("/unavailable", True, 503, 12.0),
        ("/limited", True, 429, 7.0),
        ("/limited-blind", True, 429, None),
        ("/missing", False, 404, None),
        ("/other", False, 400, None),
        ("/moved", False, 302, None),
    ],
)
def test_failures_are_classified_for_retry(
    receiver: Receiver, path: str, retry: bool, status: int, retry_after: float | None
) -> None:
    result = deliver(
        f"{receiver.url}{path}/SECRET", {"text": "x"}, timeout=2, policy=receiver.policy
    )
    assert (result.ok, result.retry, result.status, result.retry_after) == (
        False,
        retry,
        status,
        retry_after,
    )
    assert str(status) in result.reason
    # A redirect is not followed: the receiver saw exactly one request.
    assert len(receiver.requests) == 1


def test_a_retry_after_date_becomes_seconds(receiver: Receiver) -> None:
    result = deliver(
        f"{receiver.url}/limited-date", {"text": "x"}, timeout=2, policy=receiver.policy
    )
    assert result.retry
    assert result.retry_after is not None
    assert 50 <= result.retry_after <= 61


def test_a_receiver_that_hangs_times_out_and_is_retried(receiver: Receiver) -> None:
    result = deliver(
        f"{receiver.url}/hang/SECRET", {"text": "x"}, timeout=0.3, policy=receiver.policy
    )
    assert (result.ok, result.retry, result.status) == (False, True, None)
    assert result.reason == "timeout"


def test_nobody_listening_is_retried_and_the_url_stays_out_of_the_result() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/SECRET-TOKEN"
    result = deliver(url, {"text": "x"}, timeout=1, policy=_open_to(port))
    assert (result.ok, result.retry, result.status) == (False, True, None)
    assert "SECRET" not in repr(result)


def test_an_unusable_url_is_not_retried() -> None:
    url = "http://exa mple.com:notaport/SECRET"
    result = deliver(url, {"text": "x"}, timeout=1, policy=_open_to(80))
    assert (result.ok, result.retry) == (False, False)
    assert "SECRET" not in repr(result)


# --- the outbound policy at delivery ---------------------------------------------------------


def _resolving(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> list[str]:
    """Make ``names`` resolve as given (other hosts as usual); returns every lookup."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_a_name_is_posted_to_the_address_it_was_checked_at(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = receiver.server.server_address[1]
    lookups = _resolving(monkeypatch, {"hooks.test": "127.0.0.1"})
    url = f"http://hooks.test:{port}/ok/SECRET"
    assert deliver(url, {"text": "x"}, timeout=2, policy=receiver.policy).ok
    # One lookup of the name; the connection went to the checked literal address.
    assert lookups == ["hooks.test", "127.0.0.1"]
    (seen,) = receiver.requests
    assert seen["headers"]["Host"] == f"hooks.test:{port}"


def test_a_name_that_resolves_to_a_refused_address_is_never_connected_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        _resolving(monkeypatch, {"rebound.test": "127.0.0.1"})
        policy = OutboundPolicy(ports=frozenset({port}))  # private targets not allowed
        url = f"http://rebound.test:{port}/hooks/SECRET"
        result = deliver(url, {"text": "x"}, timeout=2, policy=policy)
        assert (result.ok, result.retry, result.status) == (False, False, None)
        assert result.reason.startswith("ccq outbound policy: rebound.test resolves to 127.0.0.1")
        assert "SECRET" not in repr(result)
        with pytest.raises(BlockingIOError):  # nobody knocked
            listener.accept()


def test_a_port_off_the_list_is_refused_before_any_connection(receiver: Receiver) -> None:
    policy = OutboundPolicy(ports=frozenset({443}), allow_private=True)
    result = deliver(f"{receiver.url}/ok/SECRET", {"text": "x"}, timeout=2, policy=policy)
    assert (result.ok, result.retry) == (False, False)
    assert "is not in CCQ_OUTBOUND_PORTS" in result.reason
    assert receiver.requests == []
