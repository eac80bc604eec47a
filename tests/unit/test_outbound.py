"""The outbound policy's judgement: addresses, names, ports (inputs only, never dialled)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from orchestrator.outbound import OutboundPolicy, OutboundRefused, Unresolved, pin, refusal

WEB = OutboundPolicy(ports=frozenset({80, 443}))
DEV = OutboundPolicy(ports=frozenset({80, 443}), allow_private=True)

# Inputs to the judgement only: pin() of a literal address resolves nothing and nothing
# here connects; no traffic leaves this machine.
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
PRIVATE = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # shared (CGNAT)
    "::1",
    "fd00::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
]
NEVER = [
    "169.254.169.254",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "0.0.0.0",  # noqa: S104 - an address to judge, not a bind
    "::",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "fe80::1",
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:808:808::1",  # 6to4 of a public address: refused whole
    "2001:db8::1",
    "2001::1",  # Teredo
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None
    assert ip_address(pin(address, 443, WEB).address) == ip_address(address)


@pytest.mark.parametrize("address", PRIVATE)
def test_loopback_and_private_pass_only_when_the_operator_allows(address: str) -> None:
    assert refusal(address) == "is a loopback or private address"
    with pytest.raises(OutboundRefused, match="loopback or private"):
        pin(address, 80, WEB)
    assert ip_address(pin(address, 80, DEV).address) == ip_address(address)


@pytest.mark.parametrize("address", NEVER)
def test_link_local_multicast_reserved_and_unspecified_never_pass(address: str) -> None:
    assert refusal(address) is not None
    assert refusal(address, allow_private=True) is not None
    with pytest.raises(OutboundRefused):
        pin(address, 80, DEV)


def test_a_port_off_the_list_is_refused_before_anything_is_resolved() -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise AssertionError("resolved")

    for port in (5555, 6379, 2375, 22):
        with pytest.raises(OutboundRefused, match=f"port {port} is not in CCQ_OUTBOUND_PORTS"):
            pin("hooks.example.org", port, DEV, resolve=resolve)


def test_a_name_is_refused_if_any_of_its_addresses_is() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return {"ok.test": ["8.8.8.8"], "mixed.test": ["8.8.8.8", "127.0.0.1"]}[host]

    assert pin("OK.test.", 443, WEB, resolve=resolve).address == "8.8.8.8"
    with pytest.raises(OutboundRefused, match=r"mixed\.test resolves to 127\.0\.0\.1"):
        pin("mixed.test", 443, WEB, resolve=resolve)


def test_a_name_that_does_not_resolve_is_refused_as_unresolved() -> None:
    def resolve(host: str, port: int) -> list[str]:
        raise OSError("no such name")

    with pytest.raises(Unresolved, match=r"nowhere\.test does not resolve"):
        pin("nowhere.test", 443, WEB, resolve=resolve)
    with pytest.raises(Unresolved):
        pin("empty.test", 443, WEB, resolve=lambda host, port: [])


def test_the_system_resolver_is_used_with_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"rebound.test": "127.0.0.1", "public.test": "8.8.4.4"}

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        return [(2, 1, 6, "", (answers[host], port))]

    monkeypatch.setattr("socket.getaddrinfo", getaddrinfo)
    assert pin("public.test", 80, WEB).address == "8.8.4.4"
    with pytest.raises(OutboundRefused, match=r"rebound\.test resolves to 127\.0\.0\.1"):
        pin("rebound.test", 80, WEB)
