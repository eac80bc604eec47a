"""A pinned https webhook: the POST goes to the checked address, while TLS speaks and
verifies the URL's name (SNI and certificate), against a real local TLS server."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.notify.delivery import deliver
from orchestrator.outbound import OutboundPolicy

NAME = "hooks.tls.test"


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, signer: Any
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, Path, list[str | None], list[str]]]:
    """An https server on 127.0.0.1 with a certificate for NAME only; yields its port, its
    CA file, the SNI names it was asked for and the Host headers it got."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("ccq test CA", ca_key, None, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate(NAME, key, ca, ca_key)
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    names: list[str | None] = []
    hosts: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = record_sni

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            hosts.append(self.headers.get("Host", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], ca_file, names, hosts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def loopback_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """NAME and another name resolve to 127.0.0.1 (in this process only)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host in (NAME, "other.tls.test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _trusting(monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> None:
    # The CA bundle requests verifies against (certifi's) is the test CA for this test.
    monkeypatch.setattr("requests.adapters.DEFAULT_CA_BUNDLE_PATH", str(ca_file))


@pytest.mark.usefixtures("loopback_names")
def test_https_goes_to_the_pinned_address_and_verifies_the_urls_name(
    tls_receiver: tuple[int, Path, list[str | None], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, ca_file, names, hosts = tls_receiver
    _trusting(monkeypatch, ca_file)
    policy = OutboundPolicy(ports=frozenset({port}), allow_private=True)

    result = deliver(f"https://{NAME}:{port}/hook/SECRET", {"text": "x"}, timeout=5, policy=policy)

    assert (result.ok, result.status) == (True, 204), result
    assert names == [NAME]
    assert hosts == [f"{NAME}:{port}"]


@pytest.mark.usefixtures("loopback_names")
def test_a_certificate_for_another_name_is_refused(
    tls_receiver: tuple[int, Path, list[str | None], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, ca_file, _, hosts = tls_receiver
    _trusting(monkeypatch, ca_file)
    policy = OutboundPolicy(ports=frozenset({port}), allow_private=True)

    result = deliver(f"https://other.tls.test:{port}/hook", {"text": "x"}, timeout=5, policy=policy)

    assert (result.ok, result.status, result.reason) == (False, None, "connection failed")
    assert hosts == []
