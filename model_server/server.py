"""The HTTP server: Anthropic's Messages API, answered by the directives in each prompt.

Endpoints:

- ``POST /v1/messages`` — SSE when ``"stream": true``, else a JSON message (query ignored).
- ``POST /v1/messages/count_tokens`` — ``{"input_tokens": N}``.
- ``GET /_ccq/requests`` / ``DELETE /_ccq/requests`` — the request log, or clear it.
- ``GET /_ccq/healthz`` — ``{"ok": true}``.
- ``POST /_ccq/rate-limit`` — ``{"seconds": S, "retry_after": R, "status": 429|529}`` opens
  a window of S seconds (0 closes it) during which every ``POST /v1/messages`` is answered
  with that status, ``retry-after: R`` and ``x-should-retry: true`` (see
  :mod:`model_server.ratelimit`); ``GET /_ccq/rate-limit`` shows the window.

Anything else is a 404 in Anthropic's error shape. The server speaks HTTP/1.1 with
keep-alive (SSE bodies use chunked encoding, as the real API does), handles each
connection on a daemon thread, and on :meth:`ModelServer.stop` wakes every sleeping or
hanging handler and shuts every open connection, so stopping never waits on a client.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import select
import signal
import socket
import threading
import time
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from model_server.directives import DirectiveError, Plan, latest_turn, plan_reply
from model_server.ratelimit import Limited, RateLimitError, RateLimitWindow, from_json
from model_server.recording import RequestLog, describe_body, redact_headers
from model_server.sse import Event, Reply, error_body, estimate_tokens, new_id, sse_frame

logger = logging.getLogger("model_server")

DEFAULT_MODEL = "claude-scripted"
MAX_BODY_BYTES = 64 * 1024 * 1024
#: How often serve_forever checks for stop(): the longest stop() waits for the accept loop.
SHUTDOWN_POLL_SECONDS = 0.02
#: How often a hanging handler checks whether its client went away.
HANG_POLL_SECONDS = 0.2
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class _HTTPServer(ThreadingHTTPServer):
    """Holds the state handlers share: the request log, the rate-limit window, the stop
    flag, open connections."""

    daemon_threads = True
    block_on_close = False
    # Many CLIs (a batch, a benchmark) connect at once; socketserver's default backlog is 5.
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], log: RequestLog, rate_limit: RateLimitWindow
    ) -> None:
        self.request_log = log
        self.rate_limit = rate_limit
        self.stopping = threading.Event()
        self._attempts: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def count_attempt(self, key: str) -> int:
        """How many times this request was seen before (for ``[[error S times=K]]``)."""
        with self._lock:
            seen = self._attempts.get(key, 0)
            self._attempts[key] = seen + 1
            return seen

    def shutdown_connections(self) -> None:
        """Shut every client socket so handler threads blocked on reads return at once."""
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the client or handler
                conn.shutdown(socket.SHUT_RDWR)


class _HTTP6Server(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    # TCP_NODELAY: each SSE frame leaves when written, as a real API's do. With Nagle on, a
    # client (or proxy) that reuses the connection waits ~40 ms for the first frame.
    disable_nagle_algorithm = True

    # -- plumbing -------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        with contextlib.suppress(OSError):  # the client went away; nothing to flush to
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log; :meth:`_record` logs one line per request."""
        logger.debug("%s " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by http.server itself (bad request line, bad method) as JSON too."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._send_json(code, error_body(code, message or HTTPStatus(code).phrase))

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        """Route one request; no input, however bad, escapes as an exception."""
        self.request_id = new_id("req")
        path, _, self.query = self.path.partition("?")
        self.route = path.rstrip("/") or "/"
        try:
            raw = self._read_body()
            match (self.command, self.route):
                case ("POST", "/v1/messages"):
                    self._messages(raw)
                case ("POST", "/v1/messages/count_tokens"):
                    self._count_tokens(raw)
                case ("GET", "/_ccq/healthz"):
                    self._send_json(200, {"ok": True})
                case ("GET", "/_ccq/requests"):
                    self._send_json(200, {"requests": self.server.request_log.entries()})
                case ("DELETE", "/_ccq/requests"):
                    self.server.request_log.clear()
                    self._send_json(200, {"ok": True})
                case ("POST", "/_ccq/rate-limit"):
                    self._set_rate_limit(raw)
                case ("GET", "/_ccq/rate-limit"):
                    self._send_json(200, self.server.rate_limit.state())
                case _:
                    self._record(None, "not_found", 404)
                    self._send_error(404, f"{self.command} {self.route} is not served here")
        except _BadRequest as exc:
            self._record(None, "invalid_request", exc.status)
            self._send_error(exc.status, str(exc))
        except _DISCONNECTS:
            self.close_connection = True
        except Exception:
            logger.exception("%s %s failed", self.command, self.path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_error(500, "internal error in the scripted model server")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            raise _BadRequest("content-length is not an integer") from None
        if length < 0:
            raise _BadRequest("content-length is negative")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadRequest(f"body larger than {MAX_BODY_BYTES} bytes", status=413)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                self.close_connection = True
                raise _BadRequest("malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                self.close_connection = True
                raise _BadRequest(f"body larger than {MAX_BODY_BYTES} bytes", status=413)
            body += self.rfile.read(size)
            self.rfile.readline(1024)

    # -- the Messages API -----------------------------------------------------------------

    def _messages(self, raw: bytes) -> None:
        limited = self.server.rate_limit.check()
        if limited is not None:
            self._rate_limited(raw, limited)
            return
        body = _json_object(raw)
        try:
            plan = plan_reply(body.get("messages"))
        except DirectiveError as exc:
            self._record(body, "invalid_request", 400, error=str(exc))
            self._send_error(400, str(exc))
            return
        if plan.error_times:
            earlier = self.server.count_attempt(_attempt_key(self, body))
            if earlier >= plan.error_times:  # enough failures: answer as if no error
                plan = plan_reply(body["messages"], skip_errors=True)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            model = DEFAULT_MODEL
        reply = Reply(plan, model, estimate_tokens(body["messages"]))
        stream = body.get("stream") is True
        status = plan.error_status if plan.kind == "error" else 200
        self._record(body, plan.label, status)
        if plan.sleep and self.server.stopping.wait(plan.sleep):
            self.close_connection = True
            return
        if plan.kind == "error":
            self._send_error(plan.error_status, plan.error_message, retry=plan.error_times > 0)
        elif plan.kind == "hang":
            if stream:
                self._start_sse()
                self._send_event(reply.start_event())
            self._hang()
        elif stream:
            self._stream(reply)
        else:
            self._paced(plan)
            self._send_json(200, reply.message())

    def _rate_limited(self, raw: bytes, limited: Limited) -> None:
        """Answer inside a rate-limit window: before the body is looked at, as the real API
        does (it is recorded when it is JSON, ``null`` otherwise)."""
        try:
            body: dict[str, Any] | None = _json_object(raw)
        except _BadRequest:
            body = None
        self._record(body, "rate_limited", limited.status, error=limited.message)
        payload = error_body(limited.status, limited.message)
        self._send_json(limited.status, payload, limited.headers())

    def _set_rate_limit(self, raw: bytes) -> None:
        """``POST /_ccq/rate-limit``; a control call, so not recorded even when refused."""
        try:
            self.server.rate_limit.set(*from_json(_json_object(raw)))
        except (RateLimitError, _BadRequest) as exc:
            self._send_error(400, str(exc))
            return
        self._send_json(200, {"ok": True, **self.server.rate_limit.state()})

    def _count_tokens(self, raw: bytes) -> None:
        body = _json_object(raw)
        self._record(body, "count_tokens", 200)
        self._send_json(200, {"input_tokens": estimate_tokens(body.get("messages", []))})

    def _stream(self, reply: Reply) -> None:
        self._start_sse()
        for event in [reply.start_event(), *reply.events()]:
            if event.delay and self.server.stopping.wait(event.delay):
                self.close_connection = True
                return
            self._send_event(event)
        self._write_chunk(b"")  # the terminating zero-length chunk

    def _paced(self, plan: Plan) -> None:
        """Non-stream mode waits as long as the chunks would have taken to stream."""
        delay = plan.chunk_delay * max(0, len(plan.chunks) - 1)
        if delay and self.server.stopping.wait(delay):
            self.close_connection = True

    def _hang(self) -> None:
        """Block until the client disconnects or the server stops; answer nothing."""
        self.close_connection = True
        conn = self.connection
        while not self.server.stopping.is_set():
            try:
                readable, _, _ = select.select([conn], [], [], HANG_POLL_SECONDS)
                if readable and not conn.recv(1, socket.MSG_PEEK):
                    return  # orderly close by the client
            except (OSError, ValueError):
                return  # reset, or the socket was shut down by stop()
            if readable:
                self.server.stopping.wait(HANG_POLL_SECONDS)  # data we ignore; don't spin

    # -- responses ------------------------------------------------------------------------

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", self.request_id)
        self.end_headers()

    def _send_event(self, event: Event) -> None:
        self._write_chunk(sse_frame(event.name, event.data))

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", getattr(self, "request_id", "") or new_id("req"))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _send_error(self, status: int, message: str, *, retry: bool = False) -> None:
        """An Anthropic error; ``x-should-retry`` tells the client whether to try again.

        Without ``x-should-retry: false`` the Claude Code CLI retries 401, 429, 5xx and 529
        ten times with exponential backoff (minutes); scripted errors should fail fast
        unless the prompt asked for retries with ``times=K``.
        """
        headers = {"x-should-retry": "true" if retry else "false"}
        self._send_json(status, error_body(status, message), headers)

    def _record(self, body: Any, directive: str, status: int, *, error: str | None = None) -> None:
        headers = redact_headers(self.headers.items())
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(),
            "timestamp": time.time(),
            "request_id": self.request_id,
            "method": self.command,
            "path": self.route,
            "query": self.query,
            "headers": headers,
            "body": body,
            "directive": directive,
            "status": status,
            **describe_body(body, headers),
        }
        if error is not None:
            entry["error"] = error
        self.server.request_log.add(entry)
        logger.info(
            "%s %s -> %d %s model=%s messages=%d tools=%s session=%s",
            self.command,
            self.path,
            status,
            directive,
            entry["model"],
            entry["n_messages"],
            "yes" if entry["has_tools"] else "no",
            entry["session_id"],
        )


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _attempt_key(handler: _Handler, body: dict[str, Any]) -> str:
    """Identifies "the same request again": same session, conversation length and turn."""
    messages = body["messages"]
    turn = [
        handler.headers.get("x-claude-code-session-id", ""),
        len(messages),
        latest_turn(messages).get("content"),
    ]
    return hashlib.sha256(json.dumps(turn, sort_keys=True, default=str).encode()).hexdigest()


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    return body


class ModelServer:
    """A scripted model server on a background thread; a context manager for tests.

    Args:
        host: interface to bind; ``0.0.0.0`` listens everywhere (``url`` then names
            127.0.0.1), an address containing ``:`` binds IPv6.
        port: TCP port, 0 for any free one (read it back from :attr:`port`).
        record_path: if given, every request is also appended to this file as JSON lines.
        max_records: how many recent requests :meth:`requests` keeps in memory.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        record_path: Path | None = None,
        *,
        max_records: int = 1000,
    ) -> None:
        self._address = (host, port)
        self._log = RequestLog(record_path, max_records)
        self._rate_limit = RateLimitWindow()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind and serve on a daemon thread. Raises OSError if the port is taken."""
        if self._httpd is not None:
            raise RuntimeError("model server already started")
        cls = _HTTP6Server if ":" in self._address[0] else _HTTPServer
        self._httpd = cls(self._address, self._log, self._rate_limit)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name=f"model-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; sleeping, streaming and hanging handlers are cut off, not awaited."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.stopping.set()
        httpd.shutdown()
        httpd.shutdown_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("model server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for ``ANTHROPIC_BASE_URL``; a wildcard bind is reached via loopback."""
        host = self._address[0]
        if host in ("", "0.0.0.0"):  # noqa: S104 - comparing, not binding
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """Recorded requests, oldest first (see docs/model-server.md for the fields)."""
        return self._log.entries()

    def clear(self) -> None:
        self._log.clear()

    def rate_limit(self, seconds: float, retry_after: int | None = None, status: int = 429) -> None:
        """For ``seconds`` from now, answer every ``POST /v1/messages`` with ``status`` (429
        ``rate_limit_error`` or 529 ``overloaded_error``), ``retry-after: retry_after`` and
        ``x-should-retry: true``; ``seconds=0`` ends the window at once.

        ``retry_after`` (whole seconds) defaults to the seconds left in the window, rounded
        up. count_tokens and the ``/_ccq/`` endpoints are not limited. Such answers are
        recorded with directive ``rate_limited`` and their status. Works before
        :meth:`start` too; raises :class:`~model_server.ratelimit.RateLimitError` (a
        ValueError naming the field) for bad settings.
        """
        self._rate_limit.set(seconds, retry_after, status)

    def rate_limit_state(self) -> dict[str, Any]:
        """``{"active", "seconds_left", "retry_after", "status"}`` of the window."""
        return self._rate_limit.state()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(host: str, port: int, record_path: Path | None = None) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (the ``ccq model-server`` command)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ModelServer(host, port, record_path) as server:
            logger.info("scripted model server listening on %s", server.url)
            while not stop.wait(0.5):
                pass
            logger.info("stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
