"""Worker heartbeats: how the API learns, without touching Docker, that runs can execute.

Each worker host probes its Docker engine and the worker image every few seconds and
writes the outcome to a Redis key that expires; ``/readyz`` reads those keys.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import docker
import docker.errors
import redis

KEY_PREFIX = "ccq:heartbeat:"
INTERVAL_SECONDS = 5.0
TTL_SECONDS = 20


@dataclass(frozen=True)
class HostStatus:
    hostname: str
    docker_error: str | None
    image_error: str | None
    checked_at: float

    @property
    def healthy(self) -> bool:
        return self.docker_error is None and self.image_error is None


def probe_host(hostname: str, image: str) -> HostStatus:
    """Check this host's Docker engine and that the worker image exists on it."""
    docker_error = image_error = None
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                image_error = f"image {image} not found (run `make image`)"
        finally:
            client.close()
    except docker.errors.DockerException as exc:
        docker_error = f"engine unreachable: {exc}"
    return HostStatus(hostname, docker_error, image_error, time.time())


def publish(client: redis.Redis, status: HostStatus) -> None:
    client.set(KEY_PREFIX + status.hostname, json.dumps(asdict(status)), ex=TTL_SECONDS)


def live_hosts(client: redis.Redis) -> list[HostStatus]:
    """Every worker host whose heartbeat has not expired."""
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=100))
    values = client.mget(keys) if keys else []
    return [HostStatus(**json.loads(v)) for v in values if v is not None]
