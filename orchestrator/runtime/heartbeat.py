"""Worker heartbeats: how the API learns, without touching Docker, that runs can execute.

Each worker host probes its Docker engine and the worker image every few seconds, and the
path from a session container to the gateway (a throw-away container on the session
network calls it, as a session's model calls and tools do) at least every minute; it
writes the outcome to a Redis key that expires (``orchestrator.readiness``), and
``/readyz`` reads those keys.
"""

from __future__ import annotations

import time

from orchestrator.readiness import HostStatus
from orchestrator.runtime.containers import (
    ContainerError,
    ContainerRuntime,
    ImageMissing,
    NetworkError,
    NetworkPolicy,
)

INTERVAL_SECONDS = 5.0
# A passing container probe is repeated this often; a failing one at every heartbeat.
REACH_RECHECK_SECONDS = 60.0


class ReachCheck:
    """Whether a session container on this host reaches the gateway, remembered for a while.

    Owned by the heartbeat thread alone.
    """

    def __init__(
        self,
        *,
        image: str,
        network: str,
        instance: str,
        url: str,
        recheck: float,
        policy: NetworkPolicy | None = None,
    ) -> None:
        self.image, self.network, self.instance, self.url = image, network, instance, url
        self.recheck = recheck
        self.policy = policy or NetworkPolicy()
        self._passed_at: float | None = None

    def __call__(self, runtime: ContainerRuntime) -> str | None:
        """None if a container reaches the gateway, else why not.

        Raises:
            ContainerError: the engine itself failed (the caller reports it as such).
        """
        now = time.monotonic()
        if self._passed_at is not None and now - self._passed_at < self.recheck:
            return None
        try:
            network = runtime.ensure_network(self.network, self.instance, self.policy)
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
    ``reach``, that session containers reach the gateway.

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
