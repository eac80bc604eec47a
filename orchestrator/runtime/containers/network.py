"""The Docker network session containers join, and how they reach ccq from it.

Sessions live on a bridge network of ccq's own (``<instance>-sessions`` unless
``CCQ_SESSION_NETWORK`` names another). Inside a session, ``host.docker.internal``
resolves to that network's gateway: the host's address on the bridge, where the API
(and the scripted model server) listen for containers.

The gateway is found from what every engine has, never from optional fields alone:
``docker network inspect`` leaves ``IPAM.Config[].Gateway`` empty on some engines (the
default bridge of Docker 20.10 reports only its subnet), so the host's own address on the
bridge interface comes first, then the inspected gateway, then the subnet's first host
(where Docker puts the gateway when it picks one itself).

The functions taking a Docker client are the package's own: others call them through
:class:`~orchestrator.runtime.containers.ContainerRuntime`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests

from orchestrator.runtime.containers.client import engine_errors
from orchestrator.runtime.containers.errors import EngineUnavailable, NetworkError
from orchestrator.runtime.labels import LABEL_INSTANCE, LABEL_MANAGED, LABEL_PROBE

HOST_ALIAS = "host.docker.internal"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
# ioctl(2) request for an interface's IPv4 address (linux/sockios.h).
_SIOCGIFADDR = 0x8915
# Linux interface names are at most 15 bytes.
_IFNAMSIZ = 15


@dataclass(frozen=True)
class SessionNetwork:
    """A network session containers join, and the host's address on it."""

    name: str
    gateway: str

    def extra_hosts(self) -> dict[str, str]:
        return {HOST_ALIAS: self.gateway}


def bridge_interface_name(network_name: str) -> str:
    """The host interface ccq gives the bridge of a network it creates (fits in 15 bytes)."""
    return "ccq-" + hashlib.sha256(network_name.encode()).hexdigest()[:10]


def interface_ipv4(name: str) -> str | None:
    """The IPv4 address of the host interface ``name``; None if it has none or is absent."""
    if not name or len(name.encode()) > _IFNAMSIZ:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def gateway_address(attrs: dict[str, Any]) -> str:
    """The host's address on a bridge network, from ``docker network inspect`` output.

    Raises:
        NetworkError: the network has no bridge interface here, no gateway and no
            IPv4 subnet to derive one from.
    """
    options = attrs.get("Options") or {}
    network_id = str(attrs.get("Id") or "")
    interface = options.get(BRIDGE_NAME_OPTION) or ("br-" + network_id[:12] if network_id else "")
    address = interface_ipv4(interface)
    if address:
        return address
    configs = (attrs.get("IPAM") or {}).get("Config") or []
    for config in configs:
        gateway = str(config.get("Gateway") or "").split("/")[0]
        if gateway and ipaddress.ip_address(gateway).version == 4:
            return gateway
    for config in configs:
        with contextlib.suppress(ValueError):
            subnet = ipaddress.ip_network(str(config.get("Subnet") or ""))
            if subnet.version == 4 and subnet.num_addresses > 2:
                return str(subnet.network_address + 1)
    raise NetworkError(
        f"network {attrs.get('Name')!r}: no address of the host on it "
        f"(interface {interface or '?'} not found here, no IPv4 gateway or subnet inspected)"
    )


def ensure_network(client: docker.DockerClient, name: str, instance: str) -> SessionNetwork:
    """The network ``name``, created as a labelled bridge if it does not exist yet.

    A network that exists already (``bridge``, one a compose file made) is used as it is.

    Raises:
        NetworkError: the engine refused to create it, or its gateway cannot be found.
        EngineUnavailable: the engine did not answer.
    """
    try:
        network = _get_or_create(client, name, instance)
    except docker.errors.APIError as exc:
        raise NetworkError(f"cannot create network {name}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise EngineUnavailable(f"cannot create network {name}: {exc}") from exc
    return SessionNetwork(name=name, gateway=gateway_address(network.attrs))


def _get_or_create(client: docker.DockerClient, name: str, instance: str) -> Any:
    try:
        return client.networks.get(name)
    except docker.errors.NotFound:
        pass
    try:
        return client.networks.create(
            name,
            driver="bridge",
            # Refused when the name exists: two workers starting at once make one network.
            check_duplicate=True,
            labels={LABEL_MANAGED: "1", LABEL_INSTANCE: instance},
            options={BRIDGE_NAME_OPTION: bridge_interface_name(name)},
        )
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise
        return client.networks.get(name)


def remove_networks(client: docker.DockerClient, instance: str) -> int:
    """Remove the session networks ccq made for ``instance`` (those still in use stay)."""
    removed = 0
    with engine_errors("cannot list networks"):
        networks = client.networks.list(
            filters={"label": [f"{LABEL_MANAGED}=1", f"{LABEL_INSTANCE}={instance}"]}
        )
    for network in networks:
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
            removed += 1
    return removed


# Runs inside the probe container with the image's Python: GET the URL, expect a 200.
_PROBE_SCRIPT = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as response:
        status = response.status
except Exception as exc:
    sys.exit(f"{type(exc).__name__}: {exc}")
if status != 200:
    sys.exit(f"HTTP {status}")
"""


def probe_from_container(
    client: docker.DockerClient,
    image: str,
    network: SessionNetwork,
    url: str,
    instance: str,
    timeout: float = 5.0,
) -> str | None:
    """Whether a container on ``network`` gets a 200 from ``url`` (a health endpoint).

    The probe runs as a session does (same image, network, host alias, user, no
    capabilities) in a throw-away container, removed afterwards whatever happens.

    Returns:
        None when it answered; otherwise a sentence naming the address and the cause.
    """
    container = None
    try:
        container = client.containers.run(
            image,
            ["python3", "-c", _PROBE_SCRIPT, url, str(timeout)],
            detach=True,
            network=network.name,
            extra_hosts=network.extra_hosts(),
            user="1000:1000",
            labels={LABEL_PROBE: "1", LABEL_INSTANCE: instance},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            mem_limit=128 * 1024**2,
        )
        outcome = container.wait(timeout=timeout + 20)
        if outcome.get("StatusCode") == 0:
            return None
        cause = container.logs(stdout=False, stderr=True).decode("utf-8", "replace").strip()
        cause = cause.splitlines()[-1] if cause else f"exit {outcome.get('StatusCode')}"
    except requests.exceptions.RequestException:
        cause = f"no answer within {timeout + 20:.0f} s"
    except docker.errors.DockerException as exc:
        return f"cannot run a probe container on network {network.name}: {exc}"
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
    return (
        f"session containers on network {network.name} cannot reach {url} "
        f"({HOST_ALIAS} is {network.gateway}): {cause}"
    )
