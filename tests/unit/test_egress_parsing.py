"""The egress proxy's reading of requests: heads, targets, credentials, addresses."""

from __future__ import annotations

import base64

import pytest

from gateway.egress import Refusal, _basic_password, _parse_head, _target
from orchestrator.outbound import is_public


def test_a_connect_head() -> None:
    method, target, headers = _parse_head(
        b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\nProxy-Authorization: x\r\n\r\n"
    )
    assert (method, target) == ("CONNECT", "pypi.org:443")
    assert headers["proxy-authorization"] == "x"
    parsed = _target(method, target, headers)
    assert (parsed.host, parsed.port, parsed.forward_head) == ("pypi.org", 443, None)


def test_a_plain_request_is_forwarded_in_origin_form_without_proxy_headers() -> None:
    method, target, headers = _parse_head(
        b"GET http://Pkgs.Example:8080/a/b?c=d HTTP/1.1\r\nHost: pkgs.example:8080\r\n"
        b"Proxy-Authorization: Basic abc\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n"
    )
    parsed = _target(method, target, headers)
    assert (parsed.host, parsed.port) == ("pkgs.example", 8080)
    assert parsed.forward_head == (
        b"GET /a/b?c=d HTTP/1.1\r\nHost: Pkgs.Example:8080\r\naccept: */*\r\n"
        b"Connection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    "head", [b"GET / HTTP/1.1\r\n\r\n", b"nonsense\r\n\r\n", b"GET http://a/ HTTP/2\r\n\r\n"]
)
def test_what_is_not_a_proxy_request(head: bytes) -> None:
    try:
        method, target, headers = _parse_head(head)
    except ValueError:
        return
    with pytest.raises(Refusal):
        _target(method, target, headers)


@pytest.mark.parametrize("target", ["pypi.org", "pypi.org:0", "pypi.org:99999", ":443", "a:b"])
def test_bad_connect_targets(target: str) -> None:
    with pytest.raises(Refusal):
        _target("CONNECT", target, {})


def test_the_password_is_the_token() -> None:
    encoded = base64.b64encode(b"ccq:ccqs_abc").decode()
    assert _basic_password(f"Basic {encoded}") == "ccqs_abc"
    assert _basic_password("Bearer ccqs_abc") is None
    assert _basic_password("Basic !!!") is None
    assert _basic_password(None) is None


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.17.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("0.0.0.0", False),  # noqa: S104 - an address to judge, not a bind
        ("224.0.0.1", False),
        ("not an address", False),
    ],
)
def test_only_public_addresses_are_dialled(address: str, public: bool) -> None:
    # The shared judgement (orchestrator.outbound); literals only, never connected to.
    assert is_public(address) is public
