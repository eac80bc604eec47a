"""The gateway's egress proxy: the only way out of an isolated session container.

A plain HTTP/1.1 forward proxy on its own port (``CCQ_GATEWAY_PROXY_PORT``), beside the
ASGI app, because ASGI has no way to hand over a raw connection for ``CONNECT``. Session
containers get ``HTTP(S)_PROXY=http://ccq:<session token>@host.docker.internal:<port>``.

For each connection it reads one request head, then:

1. authenticates the run by its session token (``Proxy-Authorization: Basic``), as the
   model proxy does: a missing or dead token is a 407;
2. checks the target host against the session's ``network.allow`` (and the operator's
   ``CCQ_EGRESS_ALLOW`` again, in case it narrowed since) and the port against
   ``CCQ_EGRESS_PORTS``;
3. resolves the name (or takes ``CCQ_EGRESS_HOSTS``' address for it) and refuses any
   address that is not globally routable (loopback, private, link-local, metadata;
   the judgement is orchestrator.outbound's, shared with webhooks),
   unless the operator pinned the name there; then connects to that checked address, so
   a name that resolves differently a second later changes nothing;
4. ``CONNECT``: answers 200 and relays bytes both ways (TLS stays end to end); a plain
   ``http://`` request: forwards it in origin form with ``Connection: close`` and
   relays the answer.

Every decision becomes a notice for the run (``ccq.gateway.egress_allowed`` /
``ccq.gateway.egress_refused`` events) and a counter in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from gateway.auth import TokenVerifier
from gateway.credentials import RunCredential
from gateway.metrics import Metrics
from gateway.notices import Notices
from orchestrator.db.engine import session_scope
from orchestrator.db.models import Session
from orchestrator.domain.isolation import SessionIsolation, allows_host
from orchestrator.outbound import is_public
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
# A relayed connection with no bytes either way for this long is closed.
IDLE_TIMEOUT = 300.0
CHUNK = 64 * 1024
# Tunnels one run may hold open at once.
MAX_TUNNELS_PER_RUN = 64
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)


class Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's side of egress."""

    ceiling: tuple[str, ...]
    ports: frozenset[int]
    pinned: dict[str, str]

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        return cls(
            ceiling=tuple(settings.egress_allow),
            ports=frozenset(settings.egress_ports),
            pinned=dict(settings.egress_hosts),
        )


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    # For a plain HTTP request: the head to send upstream; None for CONNECT.
    forward_head: bytes | None


class EgressProxy:
    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        session_factory: sessionmaker[DbSession],
        policy: EgressPolicy,
        notices: Notices,
        metrics: Metrics,
    ) -> None:
        """Shares the app's token verifier, database pool, notices and metrics."""
        self.verifier = verifier
        self.session_factory = session_factory
        self.policy = policy
        self.notices = notices
        self.metrics = metrics
        self._tunnels: dict[uuid.UUID, int] = {}

    async def serve(self, sockets: Sequence[socket.socket]) -> list[asyncio.Server]:
        """Start accepting on ``sockets`` (bound by the caller); the servers, to close."""
        return [
            await asyncio.start_server(self.handle, sock=sock, limit=MAX_HEAD_BYTES)
            for sock in sockets
        ]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: one request, then a relay (or a refusal)."""
        try:
            await self._handle(reader, writer)
        except Exception:
            log.exception("egress proxy: unexpected error")
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            await _answer(writer, 400, "a proxy request head of at most 16 KiB")
            return
        try:
            method, target_text, headers = _parse_head(head)
        except ValueError as exc:
            await _answer(writer, 400, str(exc))
            return
        credential = await self._authenticate(headers.get("proxy-authorization"))
        if credential is None:
            self.metrics.count("egress_unauthenticated_total")
            await _answer(
                writer,
                407,
                "a live ccq session token is the proxy password",
                extra=b'Proxy-Authenticate: Basic realm="ccq"\r\n',
            )
            return
        try:
            target = _target(method, target_text, headers)
        except Refusal as exc:
            # Not the text itself: it may hold anything, cut where redaction misses it.
            await self._refuse(writer, credential, method, "(unreadable target)", None, exc)
            return
        try:
            address = await self._check(credential, target)
        except Refusal as exc:
            await self._refuse(writer, credential, method, target.host, target.port, exc)
            return
        await self._relay(credential, method, target, address, reader, writer)

    async def _refuse(
        self,
        writer: asyncio.StreamWriter,
        credential: RunCredential,
        method: str,
        host: str,
        port: int | None,
        refusal: Refusal,
    ) -> None:
        await self._record(credential, method, host, port, refusal.reason)
        await _answer(writer, refusal.status, f"ccq egress policy: {refusal.reason}")

    async def _authenticate(self, header: str | None) -> RunCredential | None:
        token = _basic_password(header)
        if token is None:
            return None
        try:
            return await self.verifier.verify(token)
        except SQLAlchemyError:
            log.exception("egress proxy: cannot check a session token")
            return None

    async def _check(self, credential: RunCredential, target: Target) -> str:
        """The address to connect to, after every check; else a :class:`Refusal`."""
        host = target.host
        try:
            allow = await asyncio.to_thread(self._allow_of, credential.session_id)
        except SQLAlchemyError:
            raise Refusal(503, "the gateway cannot read the session's policy now") from None
        if not allows_host(allow, host):
            raise Refusal(403, f"{host} is not on this session's network.allow list")
        if not allows_host(self.policy.ceiling, host):
            raise Refusal(403, f"{host} is outside CCQ_EGRESS_ALLOW")
        if target.port not in self.policy.ports:
            raise Refusal(403, f"port {target.port} is not in CCQ_EGRESS_PORTS")
        pinned = self.policy.pinned.get(host)
        if pinned is not None:
            return pinned
        try:
            addresses = await _resolve(host, target.port)
        except OSError as exc:
            raise Refusal(502, f"{host} does not resolve: {exc}") from None
        if not addresses:
            raise Refusal(502, f"{host} does not resolve")
        for text in addresses:
            if not is_public(text):
                raise Refusal(403, f"{host} resolves to {text}, which is not a public address")
        return addresses[0]

    def _allow_of(self, session_id: uuid.UUID) -> tuple[str, ...]:
        """The names the session may reach (blocking: called in a thread)."""
        with session_scope(self.session_factory) as db:
            options = db.scalar(select(Session.options).where(Session.id == session_id))
        return SessionIsolation.of(options or {}).egress_allow

    async def _relay(
        self,
        credential: RunCredential,
        method: str,
        target: Target,
        address: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        run_id = credential.run_id
        if self._tunnels.get(run_id, 0) >= MAX_TUNNELS_PER_RUN:
            reason = f"more than {MAX_TUNNELS_PER_RUN} connections open at once"
            await self._record(credential, method, target.host, target.port, reason)
            await _answer(writer, 429, f"ccq egress policy: {reason}")
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(address, target.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            reason = f"cannot connect to {target.host}:{target.port}: {exc or 'timed out'}"
            await self._record(credential, method, target.host, target.port, reason)
            await _answer(writer, 502, reason)
            return
        await self._record(credential, method, target.host, target.port, None)
        self._tunnels[run_id] = self._tunnels.get(run_id, 0) + 1
        try:
            if target.forward_head is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
            else:
                upstream_writer.write(target.forward_head)
            await _pipe_both(reader, writer, upstream_reader, upstream_writer)
        finally:
            self._tunnels[run_id] -= 1
            if not self._tunnels[run_id]:
                del self._tunnels[run_id]
            upstream_writer.close()

    async def _record(
        self,
        credential: RunCredential,
        method: str,
        host: str,
        port: int | None,
        refusal: str | None,
    ) -> None:
        data: dict[str, object] = {"method": method[:20], "host": host[:300], "port": port}
        if refusal is None:
            self.metrics.count("egress_allowed_total")
            await self.notices.push(credential.run_id, "egress_allowed", data)
        else:
            self.metrics.count("egress_refused_total")
            await self.notices.push(
                credential.run_id, "egress_refused", {**data, "reason": refusal[:500]}
            )


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise ValueError("undecodable request head") from None
    request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x request line")
    headers: dict[str, str] = {}
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("malformed header line")
        headers[name.lower()] = value.strip()
    return parts[0].upper(), parts[1], headers


def _target(method: str, text: str, headers: dict[str, str]) -> Target:
    if method == "CONNECT":
        host, port = _host_port(text, default=None)
        return Target(host, port, None)
    url = urlsplit(text)
    if url.scheme != "http" or not url.hostname:
        raise Refusal(400, "a plain request must name an absolute http:// URL")
    host, port = _host_port(url.netloc.rpartition("@")[2], default=80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    kept = [
        f"{name}: {value}"
        for name, value in headers.items()
        if name not in _HOP_BY_HOP and name != "host"
    ]
    head = "\r\n".join(
        [f"{method} {path} HTTP/1.1", f"Host: {url.netloc.rpartition('@')[2]}", *kept]
    )
    return Target(host, port, (head + "\r\nConnection: close\r\n\r\n").encode("latin-1"))


def _host_port(text: str, default: int | None) -> tuple[str, int]:
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise Refusal(400, "no host")
    if not port_text:
        if default is None:
            raise Refusal(400, "CONNECT needs host:port")
        return host.lower().rstrip("."), default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise Refusal(400, f"bad port {port_text[:20]!r}")
    return host.lower().rstrip("."), int(port_text)


def _basic_password(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return password or user or None


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, family=socket.AF_UNSPEC
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _answer(
    writer: asyncio.StreamWriter, status: int, message: str, *, extra: bytes = b""
) -> None:
    reasons = {400: "Bad Request", 403: "Forbidden", 407: "Proxy Authentication Required"}
    reasons |= {429: "Too Many Requests", 502: "Bad Gateway", 503: "Service Unavailable"}
    body = (message + "\n").encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Ccq-Egress: refused\r\n"
    ).encode()
    with contextlib.suppress(OSError):
        writer.write(head + extra + b"\r\n" + body)
        await writer.drain()


async def _pipe_both(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    """Relay until either side closes or both are idle for IDLE_TIMEOUT."""
    activity = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                activity.set()
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()

    tasks = [
        asyncio.create_task(pipe(client_reader, upstream_writer)),
        asyncio.create_task(pipe(upstream_reader, client_writer)),
    ]
    try:
        pending: Iterable[asyncio.Task[None]] = tasks
        while pending:
            activity.clear()
            done, pending = await asyncio.wait(pending, timeout=IDLE_TIMEOUT)
            if not done and not activity.is_set():
                break  # idle both ways
            if done and len(done) == len(tasks):
                break
            if done:
                # One side closed: give the other a moment to finish its answer.
                _, pending = await asyncio.wait(pending, timeout=IDLE_TIMEOUT)
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
