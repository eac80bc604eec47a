"""Credential fingerprints in the request record, and the rate-limit window's logic (a fake
clock, no HTTP)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

import model_server
from model_server.ratelimit import (
    MAX_WINDOW_SECONDS,
    RateLimitError,
    RateLimitWindow,
    from_json,
)
from model_server.recording import RequestLog, fingerprint, redact_headers
from model_server.server import ModelServer

# -- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_is_a_short_sha256_of_the_whole_value() -> None:
    key = "sk-ant-api03-0123456789abcdef"
    expected = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    assert fingerprint(key) == expected
    assert len(fingerprint(key)) == len("sha256:") + 16
    assert model_server.fingerprint is fingerprint


def test_fingerprint_tells_keys_apart_and_is_stable() -> None:
    assert fingerprint("key-a") == fingerprint("key-a")
    assert fingerprint("key-a") != fingerprint("key-b")
    # A bearer value is fingerprinted whole: the token alone gives a different tag.
    assert fingerprint("Bearer tok") != fingerprint("tok")


def test_fingerprint_handles_any_header_text() -> None:
    # http.server decodes header bytes as latin-1; nothing a client sends can make it fail.
    assert fingerprint("clé-ü\udcff").startswith("sha256:")
    assert fingerprint("").startswith("sha256:")


def test_header_names_are_matched_case_insensitively() -> None:
    redacted = redact_headers([("X-API-KEY", "sk-live-1"), ("x-request-id", "r1")])
    assert redacted == {"x-api-key": fingerprint("sk-live-1"), "x-request-id": "r1"}


def test_the_record_file_holds_fingerprints_not_secrets(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path)
    secret = "sk-ant-file-secret-42"
    log.add({"headers": redact_headers([("x-api-key", secret)])})
    text = path.read_text()
    assert secret not in text
    assert json.loads(text)["headers"]["x-api-key"] == fingerprint(secret)


# -- the rate-limit window --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_opens_and_closes_on_the_clock() -> None:
    clock = FakeClock()
    window = RateLimitWindow(clock)
    assert window.check() is None
    window.set(5, retry_after=2)
    limited = window.check()
    assert limited is not None
    assert (limited.status, limited.retry_after) == (429, 2)
    assert limited.headers() == {"retry-after": "2", "x-should-retry": "true"}
    clock.now += 4.999
    assert window.check() is not None
    clock.now += 0.001
    assert window.check() is None
    assert window.state()["active"] is False


def test_retry_after_defaults_to_the_seconds_left_rounded_up() -> None:
    clock = FakeClock()
    window = RateLimitWindow(clock)
    window.set(2.5)
    limited = window.check()
    assert limited is not None
    assert limited.retry_after == 3
    clock.now += 2.4
    limited = window.check()
    assert limited is not None
    assert limited.retry_after == 1  # never 0 while the window is open


def test_overloaded_variant_and_clearing() -> None:
    clock = FakeClock()
    window = RateLimitWindow(clock)
    window.set(10, retry_after=1, status=529)
    limited = window.check()
    assert limited is not None
    assert limited.status == 529
    assert "Overloaded" in limited.message
    assert window.state() == {"active": True, "seconds_left": 10.0, "retry_after": 1, "status": 529}
    window.set(0)
    assert window.check() is None


def test_a_new_window_replaces_the_open_one() -> None:
    clock = FakeClock()
    window = RateLimitWindow(clock)
    window.set(100, retry_after=5)
    window.set(1, retry_after=1)
    clock.now += 1
    assert window.check() is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seconds": -1}, "seconds"),
        ({"seconds": "5"}, "seconds"),
        ({"seconds": True}, "seconds"),
        ({"seconds": float("nan")}, "seconds"),
        ({"seconds": float("inf")}, "seconds"),
        ({"seconds": MAX_WINDOW_SECONDS + 1}, "seconds"),
        ({"seconds": 5, "retry_after": 1.5}, "retry_after"),
        ({"seconds": 5, "retry_after": -1}, "retry_after"),
        ({"seconds": 5, "retry_after": False}, "retry_after"),
        ({"seconds": 5, "status": 500}, "status"),
        ({"seconds": 5, "status": "429"}, "status"),
        ({"seconds": 5, "status": True}, "status"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    window = RateLimitWindow(FakeClock())
    with pytest.raises(RateLimitError) as caught:
        window.set(**kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert window.check() is None  # a refused setting changes nothing


def test_json_settings_need_seconds_and_no_unknown_fields() -> None:
    assert from_json({"seconds": 5}) == (5, None, 429)
    assert from_json({"seconds": 5, "retry_after": 2, "status": 529}) == (5, 2, 529)
    with pytest.raises(RateLimitError, match=r"^seconds: is required"):
        from_json({"retry_after": 2})
    with pytest.raises(RateLimitError, match=r"^retry_afer: unknown field"):
        from_json({"seconds": 5, "retry_afer": 2})


def test_window_is_consistent_across_threads() -> None:
    window = RateLimitWindow()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for i in range(2000):
                window.set(0 if i % 2 else 60, retry_after=1)
                limited = window.check()
                assert limited is None or limited.retry_after == 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


def test_model_server_rate_limit_before_start_and_validation() -> None:
    srv = ModelServer()
    srv.rate_limit(30, retry_after=3, status=529)
    assert srv.rate_limit_state()["active"] is True
    with pytest.raises(ValueError, match=r"^status: "):
        srv.rate_limit(5, status=503)
    srv.rate_limit(0)
    assert srv.rate_limit_state()["active"] is False
