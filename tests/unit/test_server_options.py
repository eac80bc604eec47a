from __future__ import annotations

import pytest

from api.server_options import gunicorn_options
from orchestrator.settings import ConfigError, load_settings


def test_the_keepalive_setting_reaches_gunicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CCQ_API_KEEPALIVE", raising=False)
    default = gunicorn_options(load_settings(env_file=None), workers=1, connections=10)
    monkeypatch.setenv("CCQ_API_KEEPALIVE", "30")
    configured = gunicorn_options(load_settings(env_file=None), workers=1, connections=10)

    assert default["keepalive"] == 75  # far past the 2 s a polling client waits
    assert configured["keepalive"] == 30


@pytest.mark.parametrize("value", ["-1", "soon", "1.5"])
def test_a_bad_keepalive_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CCQ_API_KEEPALIVE", value)
    with pytest.raises(ConfigError, match="CCQ_API_KEEPALIVE"):
        load_settings(env_file=None)
