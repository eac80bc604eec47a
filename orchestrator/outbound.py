"""Where ccq may connect on a user's behalf: one policy for every outgoing request.

A user names the target (a webhook's ``notify_url``, a host a session reaches through
the gateway's egress proxy), and ccq connects from inside the operator's network. Left
unchecked that reaches the cloud metadata service, Flower, Redis or the Docker socket
(SSRF). So every such target is judged here:

- an address is refused unless it is globally routable: loopback, private, link-local,
  multicast, reserved, unspecified and shared (CGNAT) addresses are refused, and so are
  IPv4 addresses wrapped in IPv6 (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``; the
  deprecated IPv4-compatible ``::/96`` and 6to4 ``2002::/16`` forms are refused whole);
- a name is resolved and refused if ANY of its addresses is refused (a name with one
  public and one private address is how rebinding hides), and the caller connects to
  the address that was checked (pinned), never to the name again;
- the port must be on the operator's list (``CCQ_OUTBOUND_PORTS``).

``CCQ_OUTBOUND_ALLOW_PRIVATE`` (local development, tests) lets loopback and private
addresses through; link-local (the metadata service), multicast, unspecified and
reserved addresses stay refused even then.

The judgement uses explicit tables, not only :mod:`ipaddress`'s ``is_global``, whose
answers changed between Python releases.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# How long a name may take to resolve while a request waits for the answer.
RESOLVE_TIMEOUT_SECONDS = 2.0

_v4 = ipaddress.IPv4Network
_v6 = ipaddress.IPv6Network

# Loopback and private ranges: refused unless the operator allows private targets.
_PRIVATE = (
    _v4("10.0.0.0/8"),
    _v4("127.0.0.0/8"),
    _v4("172.16.0.0/12"),
    _v4("192.168.0.0/16"),
    _v4("100.64.0.0/10"),  # shared address space (CGNAT)
    _v6("::1/128"),
    _v6("fc00::/7"),  # unique local
)
# Never a target, whatever the operator allows (IANA special-purpose registries).
_NEVER = (
    _v4("0.0.0.0/8"),  # "this network", 0.0.0.0 included
    _v4("169.254.0.0/16"),  # link-local: the cloud metadata service
    _v4("192.0.0.0/24"),  # IETF protocol assignments
    _v4("192.0.2.0/24"),  # documentation
    _v4("192.88.99.0/24"),  # 6to4 relay anycast
    _v4("198.18.0.0/15"),  # benchmarking
    _v4("198.51.100.0/24"),
    _v4("203.0.113.0/24"),
    _v4("224.0.0.0/4"),  # multicast
    _v4("240.0.0.0/4"),  # reserved, 255.255.255.255 included
    _v6("::/96"),  # unspecified, and IPv4-compatible (deprecated) addresses
    _v6("64:ff9b:1::/48"),  # local-use NAT64
    _v6("100::/64"),  # discard-only
    _v6("2001::/23"),  # IETF protocol assignments (Teredo included)
    _v6("2001:db8::/32"),  # documentation
    _v6("2002::/16"),  # 6to4: an IPv4 address in disguise
    _v6("fe80::/10"),  # link-local
    _v6("fec0::/10"),  # site-local (deprecated)
    _v6("ff00::/8"),  # multicast
)
_NAT64 = _v6("64:ff9b::/96")


class OutboundRefused(ValueError):
    """The policy refuses this target; the message says why, without the URL's path."""


class Unresolved(OutboundRefused):
    """The name did not resolve (now): refused, but another try may do better."""


@dataclass(frozen=True)
class OutboundPolicy:
    """The operator's side: which ports, and whether private addresses are fair game."""

    ports: frozenset[int]
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        return cls(
            ports=frozenset(settings.outbound_ports),
            allow_private=settings.outbound_allow_private,
        )


@dataclass(frozen=True)
class Pinned:
    """A checked target: connect to ``address`` (never re-resolve ``host``)."""

    host: str
    port: int
    address: str


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped or NAT64), else ``address``."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal(address: IPAddress | str, *, allow_private: bool = False) -> str | None:
    """Why ``address`` may not be a target, or None if it may."""
    try:
        ip = unwrap(ipaddress.ip_address(address))
    except ValueError:
        return "is not an IP address"
    # Private first: ::1 is also inside _NEVER's ::/96.
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return None if allow_private else "is a loopback or private address"
    if any(ip in net for net in _NEVER if net.version == ip.version):
        return "is a link-local, multicast, reserved or unspecified address"
    if not ip.is_global:  # anything Python knows is special and the tables missed
        return "is not a globally routable address"
    return None


def is_public(address: IPAddress | str) -> bool:
    """True for a globally routable unicast address (the gateway's egress judgement)."""
    return refusal(address) is None


def check_port(port: int, policy: OutboundPolicy) -> None:
    """Raises OutboundRefused unless ``port`` is on the operator's list."""
    if port not in policy.ports:
        raise OutboundRefused(f"port {port} is not in CCQ_OUTBOUND_PORTS")


def pin(
    host: str,
    port: int,
    policy: OutboundPolicy,
    *,
    timeout: float = RESOLVE_TIMEOUT_SECONDS,
    resolve: Callable[[str, int], Iterable[str]] | None = None,
) -> Pinned:
    """Check ``host:port`` and return the one address to connect to.

    A literal address is judged as is; a name is resolved (within ``timeout``) and
    refused if any of its addresses is. Nothing is connected to.

    Raises:
        OutboundRefused: the port, an address, or a name that does not resolve.
    """
    check_port(port, policy)
    host = host.lower().rstrip(".")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list(dict.fromkeys((resolve or _lookup(timeout))(host, port)))
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise Unresolved(f"{host} does not resolve ({type(exc).__name__})") from None
        if not addresses:
            raise Unresolved(f"{host} does not resolve")
    for address in addresses:
        why = refusal(address, allow_private=policy.allow_private)
        if why is not None:
            shown = address if literal is not None else f"{host} resolves to {address}, which"
            raise OutboundRefused(f"{shown} {why}")
    return Pinned(host=host, port=port, address=addresses[0])


def _lookup(timeout: float) -> Callable[[str, int], list[str]]:
    """``getaddrinfo`` with a timeout (the C resolver has none of its own to pass)."""

    def lookup(host: str, port: int) -> list[str]:
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                box["addresses"] = [str(info[4][0]).partition("%")[0] for info in infos]
            except (OSError, UnicodeError) as exc:
                box["error"] = exc

        # A daemon thread: a resolver stuck past the timeout ends on its own, unwaited.
        thread = threading.Thread(target=run, name="ccq-resolve", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"no answer within {timeout:g}s")
        if "error" in box:
            raise box["error"]
        addresses: list[str] = box["addresses"]
        return addresses

    return lookup
