"""The Docker network session containers join, and how they reach ccq from it.

Sessions live on a bridge network of ccq's own (``<instance>-sessions`` unless
``CCQ_SESSION_NETWORK`` names another). Inside a session, ``host.docker.internal``
resolves to that network's gateway: the host's address on the bridge, where ccq's
gateway listens for containers.

Isolated (the default, :class:`NetworkPolicy`): the bridge is *internal* (no route
beyond it) with inter-container traffic off, and a host firewall chain
(:mod:`~orchestrator.runtime.containers.firewall`) leaves containers only the gateway's
ports on the host. Open (``CCQ_NETWORK_MODE=open``): a plain bridge, as a trusted
single-user install may want.

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
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests

from orchestrator.runtime.containers.client import engine_errors
from orchestrator.runtime.containers.errors import EngineUnavailable, NetworkError
from orchestrator.runtime.containers.firewall import (
    GatewayRule,
    ensure_firewall,
    remove_firewall,
    remove_stale_firewalls,
)
from orchestrator.runtime.labels import LABEL_INSTANCE, LABEL_MANAGED, LABEL_PROBE

log = logging.getLogger(__name__)

HOST_ALIAS = "host.docker.internal"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
# ioctl(2) request for an interface's IPv4 address (linux/sockios.h).
_SIOCGIFADDR = 0x8915
# Linux interface names are at most 15 bytes.
_IFNAMSIZ = 15


ICC_OPTION = "com.docker.network.bridge.enable_icc"


@dataclass(frozen=True)
class NetworkPolicy:
    """How a session network is made: ``gateway_ports`` are what its containers may reach
    on the host; None is the open network."""

    gateway_ports: tuple[int, ...] | None = None

    @property
    def isolated(self) -> bool:
        return self.gateway_ports is not None


OPEN = NetworkPolicy()


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
    interface = bridge_interface(attrs)
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


def ensure_network(
    client: docker.DockerClient, name: str, instance: str, policy: NetworkPolicy = OPEN
) -> SessionNetwork:
    """The network ``name``, created as a labelled bridge if it does not exist yet, and
    under an isolated ``policy`` its firewall chain.

    A network that exists already is used as it is when it fits the policy. Under an
    isolated policy one that does not (not internal, or with inter-container traffic on:
    one an older ccq made, ``bridge``) is replaced if ccq made it and no container uses
    it; otherwise it is an error: ccq never runs sessions on a network that leaks.

    Raises:
        NetworkError: the engine refused to create it, its gateway cannot be found, it
            cannot be isolated, or the firewall cannot be installed.
        EngineUnavailable: the engine did not answer.
    """
    try:
        network = _get_or_create(client, name, instance, policy)
        if _is_isolated(network.attrs) != policy.isolated:
            network = _replace(client, network, instance, policy)
    except docker.errors.APIError as exc:
        raise NetworkError(f"cannot create network {name}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise EngineUnavailable(f"cannot create network {name}: {exc}") from exc
    session_network = SessionNetwork(name=name, gateway=gateway_address(network.attrs))
    if policy.gateway_ports is not None:
        ensure_firewall(
            GatewayRule(
                interface=bridge_interface(network.attrs),
                address=session_network.gateway,
                ports=policy.gateway_ports,
            )
        )
    return session_network


def bridge_interface(attrs: dict[str, Any]) -> str:
    """The host interface of a bridge network, from ``docker network inspect`` output."""
    options = attrs.get("Options") or {}
    network_id = str(attrs.get("Id") or "")
    return str(options.get(BRIDGE_NAME_OPTION) or ("br-" + network_id[:12]))


def _is_isolated(attrs: dict[str, Any]) -> bool:
    options = attrs.get("Options") or {}
    return bool(attrs.get("Internal")) and options.get(ICC_OPTION) == "false"


def _replace(
    client: docker.DockerClient, network: Any, instance: str, policy: NetworkPolicy
) -> Any:
    """The network made anew for ``policy`` (the mode changed since ccq made it).

    Under an isolated policy anything but a fresh isolated network is an error; under an
    open one, a network that cannot be replaced (not ccq's, or in use) serves as it is.
    """
    name = network.name
    labels = network.attrs.get("Labels") or {}
    if labels.get(LABEL_MANAGED) != "1" or labels.get(LABEL_INSTANCE) != instance:
        if not policy.isolated:
            return network
        raise NetworkError(
            f"network {name} is not isolated (it must be internal, with "
            f"{ICC_OPTION}=false) and ccq did not make it: remove it, name another with "
            "CCQ_SESSION_NETWORK, or set CCQ_NETWORK_MODE=open on a trusted host"
        )
    try:
        network.remove()
    except docker.errors.APIError as exc:
        if not policy.isolated:
            log.warning("network %s stays isolated while containers use it", name)
            return network
        raise NetworkError(
            f"network {name} was made open by an earlier ccq and is still in use; "
            f"stop its session containers (make down) and start again: {exc.explanation}"
        ) from exc
    remove_firewall(bridge_interface(network.attrs))
    return _get_or_create(client, name, instance, policy)


def _get_or_create(
    client: docker.DockerClient, name: str, instance: str, policy: NetworkPolicy
) -> Any:
    try:
        return client.networks.get(name)
    except docker.errors.NotFound:
        pass
    options = {BRIDGE_NAME_OPTION: bridge_interface_name(name)}
    if policy.isolated:
        options[ICC_OPTION] = "false"
    try:
        return client.networks.create(
            name,
            driver="bridge",
            # No route beyond the bridge: the gateway, on the host, is all there is.
            internal=policy.isolated,
            # Refused when the name exists: two workers starting at once make one network.
            check_duplicate=True,
            labels={LABEL_MANAGED: "1", LABEL_INSTANCE: instance},
            options=options,
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
        interface = bridge_interface(network.attrs)
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
            removed += 1
            remove_firewall(interface)
    # Chains of bridges removed some other way (`docker network rm`) go too.
    with contextlib.suppress(NetworkError):
        remove_stale_firewalls()
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
