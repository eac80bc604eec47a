"""The `ccq` group: the server's commands found by entry point, and the client built
once from the group's options or a command's own."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import ENTRY_POINT_GROUP, cli
from client import ApiClient

SERVER_COMMANDS = {"token", "model-server", "image", "network", "db", "api", "worker", "beat"}


def test_the_servers_commands_join_the_group_by_entry_point() -> None:
    from importlib.metadata import entry_points

    offered = {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}
    assert {*SERVER_COMMANDS, "flower"} <= offered
    assert {*SERVER_COMMANDS, "flower"} <= set(cli.commands)
    assert cli.commands["network"].name == "network"
    help_text = CliRunner().invoke(cli, ["--help"]).stdout
    for name in ("run", "batch", "worker", "token", "network"):
        assert f"  {name} " in help_text


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Each client made: (API URL, token); every session list answers empty."""
    clients: list[tuple[str, str]] = []
    original = ApiClient.__init__

    def init(self: ApiClient, base_url: str, token: str, *args: Any, **kwargs: Any) -> None:
        clients.append((base_url, token))
        original(self, base_url, token, *args, **kwargs)

    monkeypatch.setattr(ApiClient, "__init__", init)
    monkeypatch.setattr(
        ApiClient, "list_sessions", lambda self, **kw: {"sessions": [], "next_cursor": None}
    )
    for name in ("CCQ_API_URL", "CCQ_TOKEN", "CCQ_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return clients


@pytest.mark.parametrize(
    "argv",
    [
        ["--api-url", "http://a:1", "--token", "t", "sessions"],
        ["sessions", "--api-url", "http://a:1", "--token", "t"],
        ["--api-url", "http://other:2", "sessions", "--api-url", "http://a:1", "--token", "t"],
    ],
)
def test_the_options_go_before_or_after_the_command_and_the_client_is_made_once(
    made: list[tuple[str, str]], argv: list[str]
) -> None:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert result.stdout == "no sessions\n"
    assert made == [("http://a:1", "t")]  # the command's own options win


def test_the_environment_fills_what_the_options_leave_open(
    made: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CCQ_API_URL", "http://env:3/")
    monkeypatch.setenv("CCQ_TOKEN", "env-token")
    assert CliRunner().invoke(cli, ["sessions"]).exit_code == 0
    assert CliRunner().invoke(cli, ["sessions", "--token", "flag"]).exit_code == 0
    assert made == [("http://env:3", "env-token"), ("http://env:3", "flag")]
