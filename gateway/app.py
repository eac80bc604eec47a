"""The gateway's ASGI app: the model proxy, ccq's MCP tools, health and metrics.

| route | who | what |
|---|---|---|
| ``POST /v1/messages`` | session token | the model proxy (metered, budgeted, gated) |
| ``POST /v1/messages/count_tokens`` | session token | relayed, not metered |
| ``/mcp`` | session token | ccq's seven tools, MCP Streamable HTTP (stateless) |
| ``GET /healthz`` | anyone | liveness |
| ``GET /metrics`` | loopback only | counters and gauges, Prometheus text |

Anything else is a 404 in the Anthropic error shape: a session cannot reach other
upstream endpoints (batches, files) that would escape metering.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import httpx2
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, request_response

from gateway.auth import RequireSessionToken, TokenVerifier
from gateway.egress import EgressPolicy, EgressProxy
from gateway.ledger import Ledger
from gateway.metrics import Metrics
from gateway.notices import Notices
from gateway.proxy import ModelProxy
from gateway.tools.server import build_tools_server, tools_app
from gateway.upstream_gate import UpstreamGate
from gateway.wire import UpstreamCredential, anthropic_error
from orchestrator.db.engine import make_engine, make_session_factory
from orchestrator.domain.budgets import Budgets
from orchestrator.domain.pricing import PriceTable
from orchestrator.settings import Settings

ANTHROPIC_API_URL = "https://api.anthropic.com"


def create_app(settings: Settings, egress_sockets: Sequence[socket.socket] = ()) -> Starlette:
    """The app; the egress proxy, sharing its resources, accepts on ``egress_sockets``
    (bound by the caller) while the app runs."""
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    metrics = Metrics()
    gate = UpstreamGate(
        max_streams=settings.gateway_max_upstream_streams,
        max_waiting=settings.gateway_max_waiting,
        wait_timeout=settings.gateway_wait_timeout,
        default_retry_after=settings.gateway_default_retry_after,
    )
    metrics.add_gauges(gate.metrics)
    # Notices are best effort: one retry of a dropped connection (a restart), never of a
    # timed-out command, so a hung Redis costs a notice seconds, as a worker's client does
    # (orchestrator.runtime.redis_client), not redis-py's default of three retries.
    redis_client = redis.asyncio.Redis.from_url(
        settings.redis_url,
        socket_timeout=5,
        socket_connect_timeout=3,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5), 1, supported_errors=(redis.ConnectionError,)),
    )
    client = httpx2.AsyncClient(
        base_url=settings.anthropic_base_url or ANTHROPIC_API_URL,
        # One pooled connection per upstream stream the gate allows, and a few more.
        limits=httpx2.Limits(
            max_connections=settings.gateway_max_upstream_streams + 16,
            max_keepalive_connections=settings.gateway_max_upstream_streams + 16,
        ),
        # A model may think in silence for minutes; the worker's watchdog owns silence.
        timeout=httpx2.Timeout(settings.run_silence_timeout + 60, connect=10.0),
    )
    notices = Notices(redis_client)
    proxy = ModelProxy(
        client=client,
        credential=UpstreamCredential.from_settings(settings),
        gate=gate,
        ledger=Ledger(
            factory, Budgets(settings.owner_daily_budget_usd), PriceTable(settings.model_prices)
        ),
        notices=notices,
        metrics=metrics,
        max_body_bytes=settings.gateway_max_body_bytes,
        wait_timeout=settings.gateway_wait_timeout,
    )
    tools = tools_app(build_tools_server(settings.gateway_api_url or settings.api_url))
    verifier = TokenVerifier(factory)
    egress = EgressProxy(
        verifier=verifier,
        session_factory=factory,
        policy=EgressPolicy.from_settings(settings),
        notices=notices,
        metrics=metrics,
    )

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> RequireSessionToken:
        return RequireSessionToken(request_response(handler), verifier, metrics)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def metrics_text(request: Request) -> Response:
        if not _from_loopback(request):
            return anthropic_error(404, "not found")
        return PlainTextResponse(metrics.render())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with tools.session_manager.run():
            egress_servers = await egress.serve(egress_sockets)
            try:
                yield
            finally:
                for server in egress_servers:
                    server.close()
                await proxy.drain()
                await client.aclose()
                await redis_client.aclose()
                engine.dispose()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return anthropic_error(status, f"{request.method} {request.url.path}: not served here")

    return Starlette(
        routes=[
            Route("/v1/messages", guarded(proxy.messages), methods=["POST"]),
            Route("/v1/messages/count_tokens", guarded(proxy.count_tokens), methods=["POST"]),
            Route("/mcp", RequireSessionToken(tools.app, verifier, metrics)),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_text, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )


def _from_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
