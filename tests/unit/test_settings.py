from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.settings import ConfigError, find_env_file, load_settings


def test_defaults_work_for_a_local_run(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CCQ_DATABASE_URL", "CCQ_REDIS_URL", "CCQ_DATA_DIR", "CCQ_API_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(env_file=None)
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.redis_url.startswith("redis://")
    assert settings.data_dir.is_absolute()
    assert settings.api_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CCQ_REDIS_URL", "http://localhost:6379"),
        ("CCQ_DATABASE_URL", "mysql://db"),
        ("CCQ_API_PORT", "eighty"),
        ("CCQ_API_PORT", "70000"),
        ("CCQ_IDLE_TIMEOUT", "-5"),
        ("CCQ_JWT_ALGORITHM", "none"),
        ("CCQ_ANTHROPIC_BASE_URL", "ftp://models"),
        ("CCQ_CLAUDE_CODE_VERSION", "latest; rm -rf /"),
        ("CCQ_API_HOST", "127.0.0.1, 10.0.0.1"),
        ("CCQ_API_HOST", "0.0.0.0;rm"),
        ("CCQ_CONTAINER_GATEWAY_URL", "host.docker.internal:8090"),
        ("CCQ_MAX_DEPTH", "-1"),
        ("CCQ_MAX_CHILDREN", "0"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings(env_file=None)


def test_the_plain_postgres_scheme_uses_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCQ_DATABASE_URL", "postgresql://u:p@db:5432/ccq")
    assert load_settings(env_file=None).database_url == "postgresql+psycopg://u:p@db:5432/ccq"


def test_claude_credentials_come_unprefixed_and_stay_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret")
    settings = load_settings(env_file=None)
    assert settings.has_claude_credentials
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-very-secret"
    assert "sk-ant-very-secret" not in repr(settings)
    assert "sk-ant-very-secret" not in str(settings.model_dump())


def test_the_env_file_is_read_under_the_real_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / "ccq.env"
    secret = "from-file-" + "f" * 32
    env_file.write_text(f"CCQ_JWT_SECRET={secret}\nCCQ_API_PORT=9000\n")
    monkeypatch.setenv("CCQ_API_PORT", "9001")
    settings = load_settings(env_file=env_file)
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == secret
    assert settings.api_port == 9001


def test_ccq_env_file_names_the_file_wherever_ccq_runs(tmp_path: Path) -> None:
    named = tmp_path / "elsewhere.env"
    named.write_text("CCQ_JWT_SECRET=x\n")
    (tmp_path / "cwd" / ".ccq").mkdir(parents=True)
    (tmp_path / "cwd" / ".ccq" / "ccq.env").write_text("")
    environ = {"CCQ_ENV_FILE": str(named)}
    assert find_env_file(environ, tmp_path / "cwd") == named


def test_a_missing_ccq_env_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CCQ_ENV_FILE: no such file"):
        find_env_file({"CCQ_ENV_FILE": str(tmp_path / "nope.env")}, tmp_path)


def test_a_checkouts_env_file_is_found_from_any_directory_below_it(tmp_path: Path) -> None:
    local = tmp_path / ".ccq" / "ccq.env"
    local.parent.mkdir()
    local.write_text("")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    assert find_env_file(environ, deep) == local
    assert find_env_file(environ, tmp_path) == local


def test_outside_a_checkout_the_users_config_file_is_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    assert find_env_file(environ, outside) is None
    user_file = tmp_path / "config" / "ccq" / "ccq.env"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("")
    assert find_env_file(environ, outside) == user_file


def test_load_settings_finds_the_file_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    named = tmp_path / "ccq.env"
    named.write_text("CCQ_API_PORT=9100\n")
    monkeypatch.setenv("CCQ_ENV_FILE", str(named))
    monkeypatch.delenv("CCQ_API_PORT", raising=False)
    assert load_settings().api_port == 9100
    assert load_settings(env_file=None).api_port == 8080


def test_an_empty_credential_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "")
    monkeypatch.setenv("CCQ_ANTHROPIC_BASE_URL", "")
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN", raising=False)
    settings = load_settings(env_file=None)
    assert not settings.has_claude_credentials
    assert settings.anthropic_base_url is None


def test_the_api_and_the_gateway_may_listen_on_several_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CCQ_API_HOST", "127.0.0.1,172.17.0.1")
    monkeypatch.setenv("CCQ_API_PORT", "9000")
    monkeypatch.setenv("CCQ_GATEWAY_HOST", "0.0.0.0,172.17.0.1")
    monkeypatch.setenv("CCQ_GATEWAY_PORT", "9001")
    monkeypatch.delenv("CCQ_CONTAINER_GATEWAY_URL", raising=False)
    settings = load_settings(env_file=None)
    assert settings.api_hosts == ["127.0.0.1", "172.17.0.1"]
    assert settings.api_url == "http://127.0.0.1:9000"
    assert settings.gateway_hosts == ["0.0.0.0", "172.17.0.1"]  # noqa: S104
    assert settings.gateway_url == "http://127.0.0.1:9001"
    assert settings.gateway_url_for_containers == "http://host.docker.internal:9001"


def test_containers_may_reach_the_gateway_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCQ_CONTAINER_GATEWAY_URL", "https://gateway.internal/")
    assert load_settings(env_file=None).gateway_url_for_containers == "https://gateway.internal"


def test_model_prices_are_read_as_json_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCQ_MODEL_PRICES", '{"claude-x": {"input": 1, "output": 2}}')
    prices = load_settings(env_file=None).model_prices
    assert set(prices) == {"claude-x"}
    assert prices["claude-x"].output == 2
    monkeypatch.setenv("CCQ_MODEL_PRICES", '{"claude-x": {"input": -1, "output": 2}}')
    with pytest.raises(ConfigError, match="CCQ_MODEL_PRICES"):
        load_settings(env_file=None)
