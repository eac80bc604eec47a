"""How `ccq flower` decides Flower's address and login (ops.flower.plan): loopback by
default, and no other address without a login, however the address is given."""

from __future__ import annotations

import pytest

from ops.flower import is_loopback, plan
from orchestrator.settings import ConfigError, Settings, load_settings

PASSWORD = "s3cret-flower-pw"
ANY = "0.0.0.0"  # noqa: S104 - a value to check, not bound


def _settings(**overrides: object) -> Settings:
    return load_settings(env_file=None, **overrides)


def test_by_default_flower_listens_on_loopback_without_a_login() -> None:
    launch = plan(_settings(flower_port=5600), [], {})
    assert launch.argv == ["--port=5600", "--address=127.0.0.1"]
    assert launch.env == {}


@pytest.mark.parametrize(
    ("overrides", "args", "environ"),
    [
        ({"flower_address": "0.0.0.0"}, [], {}),  # noqa: S104
        ({}, [], {"FLOWER_ADDRESS": "0.0.0.0"}),  # noqa: S104 - compose used to set it
        ({}, [], {"FLOWER_ADDRESS": ""}),  # Flower's "every interface"
        ({}, ["--address=0.0.0.0"], {}),
        ({}, ["-address=::"], {}),
        ({}, ["--address=127.0.0.1", "--address="], {}),  # the last one counts
        ({}, ["--auth_provider=flower.views.auth.GithubLoginHandler", "--address=::"], {}),
        ({}, ["--basic_auth=", "--address=0.0.0.0"], {}),  # no user:password in it
    ],
)
def test_another_address_without_a_login_is_refused_naming_the_settings(
    overrides: dict[str, object], args: list[str], environ: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        plan(_settings(**overrides), args, environ)
    message = str(caught.value)
    assert "CCQ_FLOWER_BASIC_AUTH" in message
    assert "CCQ_FLOWER_ADDRESS" in message


@pytest.mark.parametrize(
    ("overrides", "args", "environ"),
    [
        ({"flower_basic_auth": f"ops:{PASSWORD}"}, [], {}),
        ({}, [], {"FLOWER_BASIC_AUTH": f"ops:{PASSWORD}"}),
        ({}, [f"--basic-auth=ops:{PASSWORD}"], {}),
        ({}, [], {"FLOWER_AUTH": ".*@example.com"}),
        ({}, ["--auth=ops@example.com"], {}),
    ],
)
def test_another_address_with_a_login_is_passed_last(
    overrides: dict[str, object], args: list[str], environ: dict[str, str]
) -> None:
    settings = _settings(flower_address="0.0.0.0", **overrides)  # noqa: S104
    launch = plan(settings, args, environ)
    assert launch.argv[-1] == "--address=0.0.0.0"
    assert launch.address == "0.0.0.0"  # noqa: S104


def test_the_ccq_password_goes_to_flower_s_environment_not_its_command_line() -> None:
    settings = _settings(flower_address=ANY, flower_basic_auth=f"ops:{PASSWORD}")
    launch = plan(settings, [], {"FLOWER_BASIC_AUTH": "old:value"})
    assert launch.env == {"FLOWER_BASIC_AUTH": f"ops:{PASSWORD}"}
    assert not any(PASSWORD in arg for arg in launch.argv)


def test_the_command_line_address_wins_over_the_environment_and_the_setting() -> None:
    launch = plan(
        _settings(flower_address="0.0.0.0"),  # noqa: S104
        ["--address=127.0.0.1"],
        {"FLOWER_ADDRESS": "0.0.0.0"},  # noqa: S104
    )
    # Passed last: FLOWER_ADDRESS and a flowerconfig.py cannot move it.
    assert launch.argv[-1] == "--address=127.0.0.1"


def test_flower_address_in_the_environment_wins_over_the_setting() -> None:
    launch = plan(_settings(flower_address=ANY), [], {"FLOWER_ADDRESS": "localhost"})
    assert launch.argv[-1] == "--address=localhost"


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("no-such-host.invalid", False),
    ],
)
def test_which_addresses_are_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.mark.parametrize("value", ["nopassword", "ops:", ":pw", f"ops:{PASSWORD},second"])
def test_a_malformed_basic_auth_is_refused_without_showing_it(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(flower_basic_auth=value)
    assert "CCQ_FLOWER_BASIC_AUTH" in str(caught.value)
    assert value not in str(caught.value)


def test_the_basic_auth_setting_is_never_shown() -> None:
    settings = _settings(flower_basic_auth=f"ops:{PASSWORD}")
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())
