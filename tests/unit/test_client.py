"""The client package's pure logic: Retry-After, the retry policy, pagination, where
the API and token come from, and one formatting of money and time (no server)."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from client import ApiClient, ApiError, RetryPolicy, parse_retry_after
from client.config import ConfigError, default_api_url, find_env_file, resolve
from client.formatting import format_cost, format_duration
from client.pagination import collect, iter_items

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


# --- Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        (format_datetime(NOW + timedelta(seconds=30)), 30.0),
        (format_datetime(NOW - timedelta(seconds=30)), 0.0),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_is_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_the_policy_waits_what_the_api_asks_and_gives_up_past_its_limits() -> None:
    policy = RetryPolicy(attempts=3, first_delay=1.0, max_delay=30.0)
    assert policy.delay(0, 429, 5.0) == 5.0
    assert policy.delay(0, 429, None) == 1.0  # no Retry-After: backoff
    assert policy.delay(1, 429, None) == 2.0
    assert policy.delay(2, 429, 1.0) is None  # the third attempt was the last
    assert policy.delay(0, 429, 31.0) is None  # too long to wait unasked
    assert policy.delay(0, 503, 2.0) == 2.0
    assert policy.delay(0, 503, None) is None  # down for who knows how long: say so now
    assert policy.delay(0, 500, 1.0) is None
    assert policy.delay(0, 404, None) is None


class Answers(requests.Session):
    """Answers each request with the next (status, headers, body); records them."""

    def __init__(self, *answers: tuple[int, dict[str, str], bytes]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str | bytes, url: str | bytes, *a: Any, **kw: Any) -> Any:
        self.calls.append({"method": method, "url": url, **kw})
        status, headers, body = self.answers.pop(0)
        response = requests.Response()
        response.status_code = status
        response.headers.update(headers)
        response._content = body
        return response


BUSY = b'{"error": {"code": "too_many_runs", "message": "too many pending runs"}}'


def test_the_client_waits_out_a_429_and_sends_the_request_again() -> None:
    http = Answers((429, {"Retry-After": "3"}, BUSY), (201, {}, b'{"session": {"id": "s"}}'))
    slept: list[float] = []
    client = ApiClient("http://api", "t", http, sleep=slept.append)
    assert client.create_session({"prompt": "p"}) == {"session": {"id": "s"}}
    assert slept == [3.0]
    assert [c["json"] for c in http.calls] == [{"prompt": "p"}, {"prompt": "p"}]


def test_the_client_gives_up_with_the_apis_error_and_its_retry_after() -> None:
    http = Answers(*[(429, {"Retry-After": "1"}, BUSY)] * 2)
    slept: list[float] = []
    client = ApiClient("http://api", "t", http, retry=RetryPolicy(attempts=2), sleep=slept.append)
    with pytest.raises(ApiError) as raised:
        client.get_session("s")
    assert (raised.value.status, raised.value.code) == (429, "too_many_runs")
    assert raised.value.message == "too many pending runs"
    assert raised.value.retry_after == 1.0
    assert slept == [1.0]


def test_a_body_that_cannot_be_read_again_is_not_retried() -> None:
    class Pipe:
        def seekable(self) -> bool:
            return False

    http = Answers((429, {"Retry-After": "1"}, BUSY))
    client = ApiClient("http://api", "t", http, sleep=lambda _: None)
    with pytest.raises(ApiError):
        client.create_batch_ndjson(Pipe())  # type: ignore[arg-type]
    assert len(http.calls) == 1


def test_an_error_without_the_apis_shape_is_the_bare_status() -> None:
    http = Answers((502, {}, b"<html>bad gateway</html>"))
    with pytest.raises(ApiError) as raised:
        ApiClient("http://api", "t", http).get_run("r")
    assert (raised.value.status, raised.value.code) == (502, "http_error")
    assert raised.value.message.startswith("HTTP 502")


# --- pagination ----------------------------------------------------------------------


PAGES: dict[str | None, dict[str, Any]] = {
    None: {"sessions": [{"id": 1}, {"id": 2}], "next_cursor": "a"},
    "a": {"sessions": [{"id": 3}], "next_cursor": "b"},
    "b": {"sessions": [], "next_cursor": None},
}


def test_items_are_read_a_page_at_a_time_to_the_end() -> None:
    read: list[str | None] = []

    def page(cursor: str | None) -> dict[str, Any]:
        read.append(cursor)
        return PAGES[cursor]

    items = iter_items(page, "sessions")
    assert next(items) == {"id": 1}
    assert read == [None]  # the next page only once this one is used up
    assert [i["id"] for i in items] == [2, 3]
    assert read == [None, "a", "b"]


def test_collect_reads_one_page_or_all_and_says_where_the_next_starts() -> None:
    first = collect(PAGES.__getitem__, "sessions", all_pages=False)
    assert ([i["id"] for i in first.items], first.next_cursor) == ([1, 2], "a")
    every = collect(PAGES.__getitem__, "sessions", all_pages=True)
    assert ([i["id"] for i in every.items], every.next_cursor) == ([1, 2, 3], None)


# --- where the API and the token come from --------------------------------------------


def test_the_env_file_is_the_named_one_then_the_nearest_checkouts_then_the_users(
    tmp_path: Path,
) -> None:
    checkout, user = tmp_path / "checkout", tmp_path / "config"
    (checkout / ".ccq").mkdir(parents=True)
    (checkout / ".ccq/ccq.env").write_text("CCQ_TOKEN=a\n")
    (user / "ccq").mkdir(parents=True)
    (user / "ccq/ccq.env").write_text("CCQ_TOKEN=b\n")
    deep = checkout / "x/y"
    deep.mkdir(parents=True)
    home = {"XDG_CONFIG_HOME": str(user)}
    assert find_env_file(home, deep) == checkout / ".ccq/ccq.env"
    assert find_env_file(home, tmp_path) == user / "ccq/ccq.env"
    named = {**home, "CCQ_ENV_FILE": str(user / "ccq/ccq.env")}
    assert find_env_file(named, deep) == user / "ccq/ccq.env"
    with pytest.raises(ConfigError, match="CCQ_ENV_FILE"):
        find_env_file({"CCQ_ENV_FILE": str(tmp_path / "missing")}, deep)


def test_the_default_url_is_where_the_api_listens() -> None:
    assert default_api_url({}) == "http://127.0.0.1:8080"
    everywhere = {"CCQ_API_HOST": "0.0.0.0", "CCQ_API_PORT": "9"}  # noqa: S104
    assert default_api_url(everywhere) == ("http://127.0.0.1:9")
    assert default_api_url({"CCQ_API_HOST": "10.0.0.1,127.0.0.1"}) == "http://10.0.0.1:8080"


def test_explicit_values_win_then_the_environments() -> None:
    values = {"CCQ_API_URL": "http://env/", "CCQ_TOKEN": "env-token"}
    assert resolve("http://flag", "flag-token", values).api_url == "http://flag"
    assert resolve(None, None, values).api_url == "http://env"
    assert resolve(None, None, values).token == "env-token"


def test_without_a_token_a_dev_token_is_minted_from_the_secret() -> None:
    values = {"CCQ_JWT_SECRET": "s" * 32, "CCQ_JWT_AUDIENCE": "aud", "CCQ_JWT_ISSUER": "iss"}
    token = resolve(None, None, values).token
    claims = jwt.decode(token, "s" * 32, algorithms=["HS256"], audience="aud", issuer="iss")
    assert claims["sub"] == "dev"
    assert set(claims) == {"sub", "aud", "iss", "iat", "exp"}
    assert claims["exp"] - claims["iat"] == 24 * 3600
    with pytest.raises(ConfigError, match="no API token"):
        resolve(None, None, {})


# --- one formatting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "cents", "text"),
    [
        (None, False, "-"),
        (0, False, "$0"),
        (0.011148, False, "$0.0111"),
        (Decimal("0"), True, "$0.00"),
        (Decimal("0.004"), True, "$0.0040"),
        (Decimal("12.5"), True, "$12.50"),
    ],
)
def test_costs(usd: float | Decimal | None, cents: bool, text: str) -> None:
    assert format_cost(usd, cents=cents) == text


@pytest.mark.parametrize(
    ("seconds", "tenths", "text"),
    [
        (None, False, "-"),
        (59.9, False, "59s"),
        (0.157, True, "0.2s"),
        (125, True, "2m05s"),
        (7500, False, "2h05m"),
    ],
)
def test_durations(seconds: float | None, tenths: bool, text: str) -> None:
    assert format_duration(seconds, tenths=tenths) == text


# --- the boundary ---------------------------------------------------------------------

SERVER = ("orchestrator", "api", "tasks", "model_server", "worker_image", "ops")


@pytest.mark.parametrize("package", ["client", "cli"])
def test_the_client_and_the_cli_import_nothing_of_the_server(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in SERVER, f"{path}: imports {name}"
