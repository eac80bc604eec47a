"""Candidate A: a streaming reverse proxy on Starlette + uvicorn + httpx2, the stack the
`mcp` SDK's Streamable HTTP server runs on (mcp 2.3 depends on httpx2, httpx's successor).

``python -m bench.gateway_proxy_asgi PORT UPSTREAM_URL [--fast]``; the key it adds comes
from ``BENCH_UPSTREAM_KEY``. Serves ``POST /v1/messages`` and ``GET /healthz`` on 127.0.0.1.
uvicorn as the SDK installs it: asyncio's loop and h11. ``--fast``: uvloop and httptools
(``uvicorn[standard]``), which ccq does not install; the benchmark's ``--uvloop`` shows
what they would buy."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.gateway_wire import downstream_headers, upstream_headers


def create_app(upstream: str, api_key: str) -> Starlette:
    # Enough pooled connections for every concurrent stream: httpx's default cap (100)
    # would queue the rest inside the proxy, and the benchmark runs 200.
    client = httpx2.AsyncClient(
        base_url=upstream,
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000),
        timeout=httpx2.Timeout(600.0, connect=10.0),
    )

    async def messages(request: Request) -> Response:
        body = await request.body()
        outgoing = client.build_request(
            "POST",
            "/v1/messages",
            params=request.url.query or None,
            content=body,
            headers=upstream_headers(request.headers.items(), api_key),
        )
        upstream_response = await client.send(outgoing, stream=True)
        # aiter_raw: the bytes as read, undecoded and unbuffered; the connection goes
        # back to the pool once the body is sent (or the client left).
        return StreamingResponse(
            upstream_response.aiter_raw(),
            status_code=upstream_response.status_code,
            headers=dict(downstream_headers(upstream_response.headers.items())),
            background=BackgroundTask(upstream_response.aclose),
        )

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str]) -> None:
    port, upstream = int(argv[0]), argv[1]
    fast = "--fast" in argv[2:]
    app = create_app(upstream, os.environ["BENCH_UPSTREAM_KEY"])
    # No access log: neither candidate writes one, so neither pays for it.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop" if fast else "asyncio",
        http="httptools" if fast else "h11",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
