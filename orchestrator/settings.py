"""ccq's configuration: environment variables with the prefix ``CCQ_``, read once.

Every process (API, worker, beat, CLI) calls :func:`load_settings` at start-up and passes
the result down; nothing below reads ``os.environ`` itself. A bad value stops start-up
with a :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from client import config as client_config
from orchestrator.domain.pricing import DEFAULT_PRICES, ModelPrice

ENV_PREFIX = "CCQ_"
# A local `make up` writes its generated dev secret here (in the checkout); real
# deployments use the environment. See :func:`find_env_file` for where it is looked for.

PositiveSeconds = Annotated[float, Field(gt=0)]


MIN_JWT_SECRET_BYTES = 32


class ConfigError(Exception):
    """A ``CCQ_*`` variable is missing or malformed; the message names it."""


class Settings(BaseSettings):
    """Typed settings for every ccq process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,  # chosen per call by load_settings
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- infrastructure ---------------------------------------------------------------
    # Names this deployment on a shared Docker engine: containers carry it as a label and
    # the reaper touches only its own.
    instance: str = Field(default="ccq", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    database_url: str = "postgresql+psycopg://ccq:ccq@127.0.0.1:5432/ccq"
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path.home() / ".local/share/ccq"

    # --- the worker image and the CLI inside it ---------------------------------------
    worker_image: str = "ccq-worker:latest"
    base_image: str = "debian:bookworm-slim"
    claude_code_version: str = Field(default="2.1.329", pattern=r"^\d+\.\d+\.\d+$")
    # Extra CA certificates handed to the image build (TLS-inspecting proxies).
    extra_ca_file: Path | None = None

    # --- Claude credentials and endpoint (credentials come without the prefix) --------
    anthropic_base_url: str | None = None
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "CCQ_ANTHROPIC_API_KEY")
    )
    claude_code_oauth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("CLAUDE_CODE_OAUTH_TOKEN", "CCQ_CLAUDE_CODE_OAUTH_TOKEN"),
    )
    default_model: str | None = None

    # --- JWT (validated, never issued except by the dev helper) ------------------------
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    jwt_audience: str = "ccq"
    jwt_issuer: str = "ccq"
    # Clock skew forgiven on iat/nbf/exp: a token minted on a slightly fast clock still works.
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=300)
    # The longest lifetime a token ccq mints may have (`ccq token --ttl`): a leaked one ends.
    max_token_lifetime: int = Field(default=30 * 86400, ge=60)

    # --- processes ----------------------------------------------------------------------
    # One address, or several separated by commas (e.g. loopback and the Docker bridge's
    # gateway, so session containers reach the API without exposing it elsewhere).
    api_host: str = Field(
        default="127.0.0.1", pattern=r"^[0-9A-Za-z.:\[\]-]+(,[0-9A-Za-z.:\[\]-]+)*$"
    )
    api_port: int = Field(default=8080, ge=1, le=65535)
    flower_port: int = Field(default=5555, ge=1, le=65535)
    # Where `ccq flower` listens. Flower shows every worker and task (and can revoke
    # them), so it stays on loopback; any other address needs CCQ_FLOWER_BASIC_AUTH (or
    # Flower's own OAuth, `--auth`), or `ccq flower` refuses to start.
    flower_address: str = Field(default="127.0.0.1", pattern=r"^[0-9A-Za-z.:-]+$")
    # Flower's HTTP basic auth, `user:password[,user2:password2]`. Handed to Flower in its
    # environment (FLOWER_BASIC_AUTH), never on its command line, which `ps` shows.
    flower_basic_auth: SecretStr | None = None
    # Seconds the API keeps an idle keep-alive connection open (gunicorn's `keepalive`;
    # its default of 2 s reset clients polling every few seconds). 0: one request each.
    api_keepalive: int = Field(default=75, ge=0, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- the scripted model server (tests, demo, benchmarks) ---------------------------
    model_server_host: str = "0.0.0.0"  # noqa: S104 - session containers must reach it
    model_server_port: int = Field(default=8099, ge=1, le=65535)

    # --- run limits -----------------------------------------------------------------------
    idle_timeout: PositiveSeconds = 600.0
    run_silence_timeout: PositiveSeconds = 300.0
    run_time_limit: PositiveSeconds = 3600.0

    # --- faults: run leases and the reconciler ----------------------------------------------
    # A running run's lease in PostgreSQL, renewed by its worker every third of this; a
    # run whose lease ran out and whose session lock is free was lost with its worker.
    run_lease_seconds: float = Field(default=30.0, ge=3.0, le=3600.0)
    # How often beat's reconciler looks for lost runs and queued runs nothing dispatches.
    reconcile_interval: float = Field(default=5.0, ge=1.0, le=3600.0)
    # A session's next queued run untouched this long is dispatched again (its task may
    # have been lost with Redis); a duplicate delivery is harmless.
    redispatch_after: float = Field(default=60.0, ge=5.0, le=86400.0)

    # --- retention (beat's ``ccq.enforce_retention``; a number of days of 0 keeps forever) --
    # Events of runs that ended this many days ago are deleted (the runs' rows stay).
    event_retention_days: int = Field(default=30, ge=0, le=36_500)
    # A session tree inactive this long loses its files (workspaces, Claude homes); its
    # rows stay, marked, and take no more prompts.
    workspace_retention_days: int = Field(default=14, ge=0, le=36_500)
    # A stopped session tree inactive this long is deleted as DELETE /sessions/<id> does.
    stopped_session_retention_days: int = Field(default=90, ge=0, le=36_500)
    # The most rows (events, sessions) of each kind one batch deletes; a batch commits
    # on its own, so a backlog never holds a long transaction.
    retention_batch_size: int = Field(default=1000, ge=1, le=100_000)
    # How often beat enforces retention: at most a batch of each kind per pass.
    retention_interval: float = Field(default=60.0, ge=5.0, le=86_400.0)
    # The most of a session's workspace ccq itself reads (the files API); sizes past it
    # are flagged by the retention pass, which measures workspaces.
    workspace_max_mb: int = Field(default=1024, ge=1, le=10_000_000)

    # --- event streams and live tails ------------------------------------------------------
    # An idle session's Redis stream expires after this; its history stays in PostgreSQL.
    event_stream_ttl: PositiveSeconds = 86400.0
    # A tail whose client has not taken a message for this long is disconnected.
    tail_send_timeout: PositiveSeconds = 30.0
    # WebSocket pings keep idle tails alive through proxies and find dead clients.
    tail_ping_interval: PositiveSeconds = 20.0
    # A live tail this far behind the newest event is told so and disconnected.
    tail_max_lag: PositiveSeconds = 120.0
    # Client frames on a tail are read and discarded; one longer than this closes it 1009.
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=125)
    # Open tails and concurrent `?wait` requests per owner, across API processes (429).
    max_tails_per_owner: int = Field(default=50, ge=1)
    max_waits_per_owner: int = Field(default=20, ge=1)
    # The longest `?wait=` a prompt may ask for (a request held that long).
    max_wait_seconds: float = Field(default=300.0, ge=0, le=3600)

    # --- children and fan-out ----------------------------------------------------------
    # A root session has depth 0; a child deeper than this is refused.
    max_depth: int = Field(default=3, ge=0, le=20)
    # Direct children of one session, and sessions in one tree (the root included).
    max_children: int = Field(default=16, ge=1, le=1000)
    max_tree_sessions: int = Field(default=64, ge=1, le=10_000)
    # --- fairness --------------------------------------------------------------------------
    # Runs of one owner executing at once; more wait in the queue without a worker slot.
    max_runs_per_owner: int = Field(default=8, ge=1, le=10_000)
    # Queued or running runs one owner may have outside batches; past it, 429.
    max_pending_runs_per_owner: int = Field(default=200, ge=1, le=1_000_000)
    # Unfinished (queued or running) batch items of one owner, all batches together; a
    # batch that would pass it is refused with 429. Batch items do not count toward the
    # cap above: batches are for large numbers and have windows of their own.
    max_pending_batch_items_per_owner: int = Field(default=50_000, ge=1, le=10_000_000)
    # Batch items of one owner released to the workers at once, across all the owner's
    # batches (each batch's own max_concurrency still applies within it).
    batch_window_per_owner: int = Field(default=8, ge=1, le=10_000)
    # Sessions one owner may create per minute (roots, children, fan-out children; not
    # batch items), counted in Redis across API processes; past it, 429 with Retry-After.
    sessions_per_minute_per_owner: int = Field(default=120, ge=1, le=1_000_000)

    # --- request bodies and the API's database pool (413s name these) ---------------------
    # Any request body but a batch's; larger ones are refused before they are read.
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    # A batch upload (JSON or NDJSON), read incrementally and refused once past this.
    batch_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    # Items of one batch; parsing stops at the first past it. Batch progress streams are
    # sized for at most 10,000 (orchestrator.domain.batches.MAX_ITEMS).
    batch_max_items: int = Field(default=10_000, ge=1, le=10_000)
    # One batch item as sent (an NDJSON line, a JSON array element): the largest prompt
    # (256 KiB of UTF-8) escaped as \uXXXX, with its options and metadata, fits.
    batch_max_item_bytes: int = Field(default=1024 * 1024, ge=1024)
    # `GET /batches/<id>/results` reads this many items per database round (a connection
    # is taken per page and returned before the page is written to a slow client).
    batch_results_page_items: int = Field(default=100, ge=1, le=10_000)
    # ... and about this many bytes of results and errors per page, at least one item.
    batch_results_page_bytes: int = Field(default=1024 * 1024, ge=1024)
    # How long an API request waits for a pooled database connection before it is
    # answered 503 with Retry-After (SQLAlchemy's default of 30 s held clients too long).
    api_db_pool_timeout: PositiveSeconds = 5.0

    # --- the session gateway (model proxy, ccq's MCP tools) ----------------------------
    # Like CCQ_API_HOST: loopback plus the session network's host address under `make up`.
    gateway_host: str = Field(
        default="127.0.0.1", pattern=r"^[0-9A-Za-z.:\[\]-]+(,[0-9A-Za-z.:\[\]-]+)*$"
    )
    gateway_port: int = Field(default=8090, ge=1, le=65535)
    # Where session containers reach the gateway (default: host.docker.internal on
    # CCQ_GATEWAY_PORT).
    container_gateway_url: str | None = None
    # Where the gateway's MCP tools call ccq's API (default: CCQ_API_PORT on loopback,
    # the API beside it).
    gateway_api_url: str | None = None
    # Upstream model streams open at once, fleet-wide; more wait in the gateway.
    gateway_max_upstream_streams: int = Field(default=64, ge=1, le=100_000)
    # Model calls that may wait in the gateway (for a stream slot or a rate-limit
    # pause); past it a call is answered 529 at once.
    gateway_max_waiting: int = Field(default=2000, ge=0, le=1_000_000)
    # How long one call waits in the gateway before it is answered 529.
    gateway_wait_timeout: PositiveSeconds = 600.0
    # The pause after an upstream 429/529 that names no retry-after.
    gateway_default_retry_after: PositiveSeconds = 5.0
    # The largest request body a session may send (the CLI's grow with the conversation).
    gateway_max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # USD per million tokens by model-name prefix (JSON); see orchestrator/domain/pricing.py.
    model_prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    # What one owner may spend on model calls per UTC day, all sessions together.
    owner_daily_budget_usd: float | None = Field(default=None, gt=0)

    # The Docker network session containers join (default: `<instance>-sessions`, a
    # bridge ccq creates); inside it `host.docker.internal` is the host's address on it.
    session_network: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

    # --- isolation: the session network, egress, secrets, container limits -------------
    # `isolated` (default): session containers reach only the gateway (and, through its
    # egress proxy, the names their session may use). `open`: the network of a trusted
    # single-user install, where containers reach the host and the internet freely.
    network_mode: Literal["isolated", "open"] = "isolated"
    # The gateway's HTTP(S) egress proxy, on every CCQ_GATEWAY_HOST address.
    gateway_proxy_port: int = Field(default=8091, ge=1, le=65535)
    # The ceiling on what sessions may ask to reach: host names, `*.example.org` for
    # any subdomain, `*` for any name. Empty: no egress at all.
    egress_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Ports the egress proxy connects to.
    egress_ports: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [80, 443])
    # Names the proxy resolves itself, to addresses it would otherwise refuse (private,
    # loopback): an internal package mirror, or a test's listener. `name=address,...`.
    egress_hosts: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Ports ccq's own outgoing requests for a user (webhooks) may go to; orchestrator/
    # outbound.py refuses every other port, so a notify_url cannot probe internal services.
    outbound_ports: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [80, 443])
    # Let those requests reach loopback and private addresses (local development, tests);
    # link-local (the metadata service), multicast and reserved addresses stay refused.
    outbound_allow_private: bool = False
    # Secrets by name: `CCQ_SECRET_<NAME>` variables and this file of NAME=value lines.
    secrets_file: Path | None = None
    # Each session container's limits, and the most a session may ask for.
    container_memory_mb: int = Field(default=2048, ge=64)
    container_cpus: float = Field(default=2.0, gt=0)
    container_pids: int = Field(default=512, ge=16)
    container_max_memory_mb: int = Field(default=8192, ge=64)
    container_max_cpus: float = Field(default=4.0, gt=0)
    container_max_pids: int = Field(default=4096, ge=16)
    # Size of the tmpfs at /tmp in a session container (its root filesystem is read-only).
    container_tmp_mb: int = Field(default=512, ge=16)

    @field_validator(
        "anthropic_api_key",
        "claude_code_oauth_token",
        "anthropic_base_url",
        "jwt_secret",
        "jwt_public_key",
        "extra_ca_file",
        "default_model",
        "container_gateway_url",
        "gateway_api_url",
        "owner_daily_budget_usd",
        "session_network",
        "secrets_file",
        "flower_basic_auth",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `VAR=` (as compose writes `${VAR:-}`) means "not set", not an empty credential.
        return None if value == "" else value

    @field_validator("jwt_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # HS256 with a short secret can be brute-forced offline from any one token.
        if value is not None and len(value.get_secret_value().encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_JWT_SECRET_BYTES} bytes long for HS256")
        return value

    @field_validator("egress_allow", "egress_ports", "outbound_ports", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("egress_allow")
    @classmethod
    def _host_patterns(cls, value: list[str]) -> list[str]:
        from orchestrator.domain.isolation import check_host_pattern

        return [check_host_pattern(item, allow_any=True) for item in value]

    @field_validator("egress_hosts", mode="before")
    @classmethod
    def _host_map(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, address = item.partition("=")
            if not sep or not name.strip() or not address.strip():
                raise ValueError(f"{item!r} is not name=address")
            pairs[name.strip().lower()] = address.strip()
        return pairs

    @field_validator("egress_hosts")
    @classmethod
    def _host_addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for name, address in value.items():
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{name}: {address!r} is not an IP address") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_with_psycopg(cls, value: str) -> str:
        if not value.startswith(("postgresql+psycopg://", "postgresql://")):
            raise ValueError("must be a postgresql+psycopg:// URL")
        # psycopg 3 is the only driver ccq ships; make the plain scheme use it.
        return value.replace("postgresql://", "postgresql+psycopg://", 1)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password_pairs(cls, value: SecretStr | None) -> SecretStr | None:
        # Flower splits the list on commas and compares each `user:password` whole; the
        # message never repeats the value (it is a password).
        if value is not None:
            for pair in value.get_secret_value().split(","):
                user, sep, password = pair.partition(":")
                if not (sep and user.strip() and password):
                    raise ValueError("must be user:password[,user2:password2]")
        return value

    @field_validator("anthropic_base_url", "container_gateway_url", "gateway_api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Container bind mounts need absolute host paths.
        return value.expanduser().resolve()

    @field_validator("extra_ca_file")
    @classmethod
    def _existing_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @cached_property
    def has_claude_credentials(self) -> bool:
        return self.anthropic_api_key is not None or self.claude_code_oauth_token is not None

    @property
    def api_hosts(self) -> list[str]:
        return self.api_host.split(",")

    @property
    def api_url(self) -> str:
        """The API on its first address (loopback when listening everywhere)."""
        return _local_url(self.api_hosts[0], self.api_port)

    @property
    def flower_url(self) -> str:
        """Flower as a process on this host reaches it (loopback when it listens everywhere)."""
        host = {"::": "::1"}.get(self.flower_address, self.flower_address)
        return _local_url(f"[{host}]" if ":" in host else host, self.flower_port)

    @property
    def gateway_hosts(self) -> list[str]:
        return self.gateway_host.split(",")

    @property
    def gateway_url(self) -> str:
        """The gateway on its first address (loopback when listening everywhere)."""
        return _local_url(self.gateway_hosts[0], self.gateway_port)

    @property
    def gateway_url_for_containers(self) -> str:
        """The gateway as a session container sees it: its model calls and tools go there."""
        url = self.container_gateway_url or f"http://host.docker.internal:{self.gateway_port}"
        return url.rstrip("/")

    @property
    def session_network_name(self) -> str:
        return self.session_network or f"{self.instance}-sessions"


def _local_url(host: str, port: int) -> str:
    """How a process on this host reaches a listener on ``host``."""
    return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"  # noqa: S104


def _variable_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    alias = Settings.model_fields.get(field)
    if alias is not None and isinstance(alias.validation_alias, AliasChoices):
        return str(alias.validation_alias.choices[0])
    return (field if field.isupper() else ENV_PREFIX + field).upper()


def find_env_file(environ: Mapping[str, str], cwd: Path) -> Path | None:
    """The dotenv file ccq reads under the environment, wherever it is run from: the
    same lookup as the client's (``client.config.find_env_file``), so ``ccq`` commands and
    the server agree on it.

    ``CCQ_ENV_FILE`` if set (it must exist); else the first ``.ccq/ccq.env`` in ``cwd``
    or a directory above it (a checkout's, as git finds ``.git``); else
    ``$XDG_CONFIG_HOME/ccq/ccq.env`` (``~/.config/ccq/ccq.env``) if it exists.

    Raises:
        ConfigError: ``CCQ_ENV_FILE`` names no file.
    """
    try:
        return client_config.find_env_file(environ, cwd)
    except client_config.ConfigError as exc:
        raise ConfigError(str(exc)) from None


def load_settings(env_file: Path | Literal["find"] | None = "find", **overrides: Any) -> Settings:
    """Read the settings once, turning validation errors into a :class:`ConfigError`.

    Args:
        env_file: a dotenv file read under the real environment (which wins); ``"find"``
            (the default) looks for one with :func:`find_env_file`, None reads none.
        overrides: explicit values, for tests and commands with flags.

    Raises:
        ConfigError: a value is malformed; the message names each bad variable.
    """
    if env_file == "find":
        env_file = find_env_file(os.environ, Path.cwd())
    try:
        # `_env_file` is pydantic-settings' per-instance override of the configured file.
        settings_class: Any = Settings
        settings: Settings = settings_class(_env_file=env_file, **overrides)
        return settings
    except ValidationError as exc:
        problems = [f"{_variable_name(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
