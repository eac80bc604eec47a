"""Where the client finds the API and its token, without the server's settings.

The same places every ``ccq`` process reads, so ``ccq run "..."`` works with no flags
after ``make up``: explicit values first, then the environment, then one dotenv file
(``CCQ_ENV_FILE``; else the first ``.ccq/ccq.env`` in the working directory or above it;
else ``$XDG_CONFIG_HOME/ccq/ccq.env``). The lookup mirrors the server's
``find_env_file``; it is repeated here because this package must not import the server.

Without a token, a machine holding ``CCQ_JWT_SECRET`` (a dev stack's) gets a short-lived
token for owner ``dev``, signed with the claims the server checks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
from dotenv import dotenv_values

ENV_FILE_VARIABLE = "CCQ_ENV_FILE"
LOCAL_ENV_FILE = Path(".ccq/ccq.env")
USER_ENV_FILE = Path("ccq/ccq.env")  # under $XDG_CONFIG_HOME (~/.config)
DEV_OWNER = "dev"
DEV_TOKEN_TTL = 24 * 3600
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", "8080"


class ConfigError(Exception):
    """The client cannot be configured; the message says what to set."""


class MissingToken(ConfigError):
    """No token was given and there is no secret to mint one."""


def find_env_file(environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The dotenv file ccq reads under the environment (see the module's docstring).

    Raises:
        ConfigError: ``CCQ_ENV_FILE`` names no file.
    """
    named = environ.get(ENV_FILE_VARIABLE)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"invalid configuration: {ENV_FILE_VARIABLE}: no such file: {path}")
        return path
    for directory in (cwd, *cwd.parents):
        if (directory / LOCAL_ENV_FILE).is_file():
            return directory / LOCAL_ENV_FILE
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    user_file = Path(config_home).expanduser() / USER_ENV_FILE
    return user_file if user_file.is_file() else None


def read_environment(
    environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> dict[str, str]:
    """The ``CCQ_`` variables: the dotenv file's, under the real environment (which wins)."""
    environ = os.environ if environ is None else environ
    path = find_env_file(environ, Path.cwd() if cwd is None else cwd)
    values = {k: v for k, v in (dotenv_values(path) if path else {}).items() if v is not None}
    values.update(environ)
    return {k: v for k, v in values.items() if k.startswith("CCQ_")}


def default_api_url(values: Mapping[str, str]) -> str:
    """``http://CCQ_API_HOST:CCQ_API_PORT`` on its first address (loopback for 0.0.0.0),
    as the server computes where it listens."""
    host = (values.get("CCQ_API_HOST") or DEFAULT_HOST).split(",")[0]
    host = "127.0.0.1" if host == "0.0.0.0" else host  # noqa: S104 - where to connect
    return f"http://{host}:{values.get('CCQ_API_PORT') or DEFAULT_PORT}"


def mint_dev_token(
    secret: str,
    subject: str = DEV_OWNER,
    ttl_seconds: int = DEV_TOKEN_TTL,
    *,
    audience: str = "ccq",
    issuer: str = "ccq",
) -> str:
    """An HS256 token with the claims the server requires (``sub``, ``aud``, ``iss``,
    ``iat``, ``exp``), as the server's own dev helper signs it."""
    now = int(time.time())
    claims = {"sub": subject, "aud": audience, "iss": issuer, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True)
class ClientConfig:
    api_url: str
    token: str


def resolve(
    api_url: str | None = None,
    token: str | None = None,
    values: Mapping[str, str] | None = None,
    *,
    subject: str = DEV_OWNER,
) -> ClientConfig:
    """The API and token to use: explicit values, else ``CCQ_API_URL``/``CCQ_TOKEN``, else
    the defaults above (a dev token for ``subject`` where ``CCQ_JWT_SECRET`` is set).

    Raises:
        MissingToken: there is no token and no secret to mint one.
        ConfigError: ``CCQ_ENV_FILE`` names no file.
    """
    values = read_environment() if values is None else values
    url = api_url or values.get("CCQ_API_URL") or default_api_url(values)
    token = token or values.get("CCQ_TOKEN")
    if not token:
        secret = values.get("CCQ_JWT_SECRET")
        if not secret:
            raise MissingToken(
                "no API token: pass --token or set CCQ_TOKEN "
                "(`ccq token --sub NAME` mints one where CCQ_JWT_SECRET is set)"
            )
        token = mint_dev_token(
            secret,
            subject,
            audience=values.get("CCQ_JWT_AUDIENCE") or "ccq",
            issuer=values.get("CCQ_JWT_ISSUER") or "ccq",
        )
    return ClientConfig(url.rstrip("/"), token)
