"""Worker heartbeats: how the API learns, without touching Docker, that runs can execute.

Each worker host probes its Docker engine and the worker image every few seconds, and the
path from a session container to the API (a throw-away container on the session network
calls it, as a session's tools do) at least every minute; it writes the outcome to a
Redis key that expires, and ``/readyz`` reads those keys.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import redis

from orchestrator.runtime.containers import (
    ContainerError,
    ContainerRuntime,
    ImageMissing,
    NetworkError,
)

KEY_PREFIX = "ccq:heartbeat:"
INTERVAL_SECONDS = 5.0
TTL_SECONDS = 20
# A passing container probe is repeated this often; a failing one at every heartbeat.
REACH_RECHECK_SECONDS = 60.0


@dataclass(frozen=True)
class HostStatus:
    hostname: str
    docker_error: str | None
    image_error: str | None
    checked_at: float
    # Session containers cannot call the API (their tools would fail).
    network_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.docker_error is None and self.image_error is None and not self.network_error


class ReachCheck:
    """Whether a session container on this host reaches the API, remembered for a while.

    Owned by the heartbeat thread alone.
    """

    def __init__(
        self, *, image: str, network: str, instance: str, url: str, recheck: float
    ) -> None:
        self.image, self.network, self.instance, self.url = image, network, instance, url
        self.recheck = recheck
        self._passed_at: float | None = None

    def __call__(self, runtime: ContainerRuntime) -> str | None:
        """None if a container reaches the API, else why not.

        Raises:
            ContainerError: the engine itself failed (the caller reports it as such).
        """
        now = time.monotonic()
        if self._passed_at is not None and now - self._passed_at < self.recheck:
            return None
        try:
            network = runtime.ensure_network(self.network, self.instance)
        except NetworkError as exc:
            error: str | None = str(exc)
        else:
            error = runtime.probe_from_container(
                self.image, network, self.url + "/healthz", self.instance
            )
        self._passed_at = now if error is None else None
        return error


def probe_host(
    hostname: str,
    image: str,
    reach: ReachCheck | None = None,
    runtime: ContainerRuntime | None = None,
) -> HostStatus:
    """Check this host's Docker engine, that the worker image exists on it and, with
    ``reach``, that session containers reach the API.

    ``runtime``: by default one on the process's shared Docker client.
    """
    runtime = runtime or ContainerRuntime()
    docker_error = image_error = network_error = None
    try:
        try:
            runtime.check_engine(image)
        except ImageMissing:
            image_error = f"image {image} not found (run `make image`)"
        if reach is not None and image_error is None:
            network_error = reach(runtime)
    except ContainerError as exc:
        docker_error = f"engine unreachable: {exc}"
    return HostStatus(hostname, docker_error, image_error, time.time(), network_error)


def publish(client: redis.Redis, status: HostStatus) -> None:
    client.set(KEY_PREFIX + status.hostname, json.dumps(asdict(status)), ex=TTL_SECONDS)


def live_hosts(client: redis.Redis) -> list[HostStatus]:
    """Every worker host whose heartbeat has not expired."""
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=100))
    values = client.mget(keys) if keys else []
    return [HostStatus(**json.loads(v)) for v in values if v is not None]
