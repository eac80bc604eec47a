"""The secret store: names and values from ``CCQ_SECRET_*`` and ``CCQ_SECRETS_FILE``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from orchestrator.secrets import SecretMissing, SecretsConfigError, SecretStore
from orchestrator.settings import ConfigError, Settings, load_settings

VALUE = "ghp_value-that-must-never-show-9c1e"


def _settings(secrets_file: Path | None = None) -> Settings:
    return load_settings(env_file=None, secrets_file=secrets_file)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secrets.env"
    path.write_text(text)
    return path


def test_names_and_values_come_from_the_environment() -> None:
    store = SecretStore.load(
        _settings(),
        {"CCQ_SECRET_GITHUB_TOKEN": VALUE, "CCQ_SECRET_NPM_TOKEN": "npm-12345678", "PATH": "/x"},
    )
    assert store.names() == {"GITHUB_TOKEN", "NPM_TOKEN"}
    assert store.values_for(["GITHUB_TOKEN"]) == {"GITHUB_TOKEN": VALUE}
    assert store.values_for([]) == {}


def test_the_file_gives_names_and_the_environment_wins(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "# the operator's secrets\n"
        "\n"
        "GITHUB_TOKEN=from-the-file-1234\n"
        "  PYPI_TOKEN = 'pypi-quoted value'  \n"
        'DSN="postgres://u:p@h/db?x=1"\n'
        "EQUALS=a=b=c==\n",
    )
    store = SecretStore.load(_settings(path), {"CCQ_SECRET_GITHUB_TOKEN": VALUE})
    assert store.names() == {"GITHUB_TOKEN", "PYPI_TOKEN", "DSN", "EQUALS"}
    assert store.values_for(["GITHUB_TOKEN", "PYPI_TOKEN", "DSN", "EQUALS"]) == {
        "GITHUB_TOKEN": VALUE,
        "PYPI_TOKEN": "pypi-quoted value",
        "DSN": "postgres://u:p@h/db?x=1",
        "EQUALS": "a=b=c==",
    }


def test_an_empty_variable_is_unset_even_over_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, "GITHUB_TOKEN=from-the-file-1234\n")
    store = SecretStore.load(_settings(path), {"CCQ_SECRET_GITHUB_TOKEN": ""})
    assert store.names() == frozenset()


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("OK_NAME=value-123\njust-a-pasted-value\n", 2, "not NAME=value"),
        ("lower=value-123\n", 1, "the name before '=' must match"),
        ("1ABC=value-123\n", 1, "the name before '=' must match"),
        ("=value-123\n", 1, "the name before '=' must match"),
        ("A=value-1\n# c\nA=value-2\n", 3, "A is set twice (also on line 1)"),
        ("EMPTY=\n", 1, "EMPTY has no value"),
        ("CCQ_SESSION_TOKEN=value-123\n", 1, "ccq sets in a run's environment"),
        ("HTTPS_PROXY=value-123\n", 1, "ccq sets in a run's environment"),
    ],
)
def test_a_bad_line_is_refused_by_number_without_its_content(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(SecretsConfigError) as caught:
        SecretStore.load(_settings(path), {})
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)
    assert f"CCQ_SECRETS_FILE ({path}), line {line}: " in message
    assert problem in message
    assert "value-1" not in message
    assert "pasted" not in message


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretsConfigError, match=r"CCQ_SECRETS_FILE .*cannot read it"):
        SecretStore.load(_settings(tmp_path / "nowhere"), {})


@pytest.mark.parametrize("variable", ["CCQ_SECRET_lower", "CCQ_SECRET_", "CCQ_SECRET_CCQ_X"])
def test_a_bad_variable_name_is_refused_naming_it(variable: str) -> None:
    with pytest.raises(SecretsConfigError) as caught:
        SecretStore.load(_settings(), {variable: VALUE})
    assert str(caught.value).startswith(f"{variable}: ")
    assert VALUE not in str(caught.value)


def test_a_name_no_longer_configured_is_a_clear_error() -> None:
    store = SecretStore.load(_settings(), {"CCQ_SECRET_GITHUB_TOKEN": VALUE})
    with pytest.raises(SecretMissing) as caught:
        store.values_for(["GITHUB_TOKEN", "GONE"])
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == (
        "the secret GONE this session holds is not configured on this worker "
        "(CCQ_SECRET_GONE or CCQ_SECRETS_FILE)"
    )
    assert store.present(["GITHUB_TOKEN", "GONE"]) == {"GITHUB_TOKEN": VALUE}


def test_values_never_show_in_repr_or_str() -> None:
    store = SecretStore.load(_settings(), {"CCQ_SECRET_GITHUB_TOKEN": VALUE})
    for text in (repr(store), str(store), f"{store}", f"{store!r}"):
        assert VALUE not in text
        assert "GITHUB_TOKEN" in text


def test_values_too_short_to_redact_are_warned_about_by_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.secrets"):
        SecretStore.load(_settings(), {"CCQ_SECRET_PIN": "1234", "CCQ_SECRET_LONG": VALUE})
    assert "not redacted" in caplog.text
    assert "PIN" in caplog.text
    assert "LONG" not in caplog.text
    assert "1234" not in caplog.text


def test_settings_do_not_hold_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a worker reports of its configuration (Celery's conf, Flower) is the settings.
    monkeypatch.setenv("CCQ_SECRET_GITHUB_TOKEN", VALUE)
    settings = load_settings(env_file=None)
    assert VALUE not in repr(settings)
    assert VALUE not in settings.model_dump_json()


def test_the_settings_dotenv_file_gives_secrets_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "ccq.env"
    env_file.write_text(
        f"CCQ_JWT_SECRET=not-a-secret-by-name\nCCQ_SECRET_GITHUB_TOKEN={VALUE}\n"
        "CCQ_SECRET_NPM_TOKEN=from-the-file-0001\n"
    )
    monkeypatch.setenv("CCQ_ENV_FILE", str(env_file))
    monkeypatch.setenv("CCQ_SECRET_NPM_TOKEN", "from-the-environment-0002")
    store = SecretStore.load(_settings())
    assert store.names() >= {"GITHUB_TOKEN", "NPM_TOKEN"}
    assert store.values_for(["GITHUB_TOKEN", "NPM_TOKEN"]) == {
        "GITHUB_TOKEN": VALUE,
        "NPM_TOKEN": "from-the-environment-0002",
    }
