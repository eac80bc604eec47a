"""Finding the host's address on a session network from what `network inspect` gives."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.runtime.containers import NetworkError
from orchestrator.runtime.containers.network import (
    BRIDGE_NAME_OPTION,
    bridge_interface_name,
    gateway_address,
    interface_ipv4,
)


def _inspected(
    *, interface: str | None = None, gateway: str | None = None, subnet: str | None = None
) -> dict[str, Any]:
    config = {k: v for k, v in (("Subnet", subnet), ("Gateway", gateway)) if v}
    return {
        "Name": "sessions",
        "Id": "f" * 64,  # no interface br-ffffffffffff exists here
        "Options": {BRIDGE_NAME_OPTION: interface} if interface else {},
        "IPAM": {"Config": [config] if config else []},
    }


def test_the_interface_address_wins_even_without_a_gateway_in_the_inspect() -> None:
    # As Docker 20.10 inspects its default bridge: a subnet, no gateway. The loopback
    # interface stands in for the bridge: a real interface with a known address.
    assert gateway_address(_inspected(interface="lo", subnet="172.17.0.0/16")) == "127.0.0.1"


def test_the_inspected_gateway_when_the_interface_is_not_on_this_host() -> None:
    inspected = _inspected(interface="ccq-nothere0", gateway="10.9.8.1", subnet="10.9.8.0/24")
    assert gateway_address(inspected) == "10.9.8.1"


def test_the_subnets_first_host_when_nothing_else_is_known() -> None:
    assert gateway_address(_inspected(subnet="172.31.4.0/24")) == "172.31.4.1"


def test_an_ipv6_only_network_without_an_interface_is_an_error_naming_it() -> None:
    with pytest.raises(NetworkError, match="network 'sessions'"):
        gateway_address(_inspected(subnet="fd00::/64", gateway="fd00::1"))


def test_interface_lookup_of_missing_or_overlong_names_is_none() -> None:
    assert interface_ipv4("ccq-nothere0") is None
    assert interface_ipv4("x" * 16) is None
    assert interface_ipv4("") is None


def test_bridge_interface_names_fit_linux_and_differ_by_network() -> None:
    names = {bridge_interface_name(f"test-{i:04d}-sessions") for i in range(1000)}
    assert len(names) == 1000
    assert all(len(name) <= 15 and name.startswith("ccq-") for name in names)
