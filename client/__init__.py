"""ccq's API client: typed HTTP calls, errors, retries, pagination and live tails.

Everything outside the server that talks to it goes through here: the ``ccq`` command,
``make demo`` and the tests. It imports nothing of the server (``orchestrator``, ``api``,
``tasks``), so it installs and runs on a machine that has only the API's address.
"""

from client.config import ClientConfig, ConfigError, resolve
from client.errors import ApiError, ApiUnreachable
from client.http import ApiClient, JsonObject
from client.retry import NO_RETRY, RetryPolicy, parse_retry_after
from client.tail import Follower, Kind, TailError, TailTimeout

__all__ = [
    "NO_RETRY",
    "ApiClient",
    "ApiError",
    "ApiUnreachable",
    "ClientConfig",
    "ConfigError",
    "Follower",
    "JsonObject",
    "Kind",
    "RetryPolicy",
    "TailError",
    "TailTimeout",
    "parse_retry_after",
    "resolve",
]
