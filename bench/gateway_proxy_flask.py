"""Candidate B: a streaming reverse proxy on Flask under gunicorn's gevent worker, as ccq's
API already runs (``api.serve``), forwarding with a streamed ``requests`` response.

``python -m bench.gateway_proxy_flask PORT UPSTREAM_URL``; the key it adds comes from
``BENCH_UPSTREAM_KEY``. Serves ``POST /v1/messages`` and ``GET /healthz`` on 127.0.0.1.
Like ``api.serve``, it patches the standard library before anything else imports it."""

from gevent import monkey

monkey.patch_all()

# ruff: noqa: E402 - everything below must come after the patching above.
import os
import sys
from collections.abc import Iterator

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

from api.gunicorn_app import GunicornApp
from bench.gateway_wire import downstream_headers, upstream_headers


def create_app(upstream: str, api_key: str) -> Flask:
    session = requests.Session()
    # One pooled connection per concurrent stream (urllib3 keeps 10 by default and
    # discards the rest after use, so 200 streams would reconnect every time).
    session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=1000))
    app = Flask(__name__)

    @app.post("/v1/messages")
    def messages() -> Response:
        query = request.query_string.decode()
        upstream_response = session.post(
            f"{upstream}/v1/messages" + (f"?{query}" if query else ""),
            data=request.get_data(),
            headers=upstream_headers(request.headers.items(), api_key),
            stream=True,
            timeout=(10, 600),
        )

        def relay() -> Iterator[bytes]:
            # read_chunked: one upstream HTTP chunk (one SSE frame here) at a time, as it
            # arrives; iter_content(None) would do the same through more layers.
            try:
                yield from upstream_response.raw.read_chunked(decode_content=False)
            finally:
                upstream_response.close()

        body = relay() if upstream_response.raw.chunked else upstream_response.iter_content(None)
        return Response(
            body,
            status=upstream_response.status_code,
            headers=downstream_headers(upstream_response.headers.items()),
        )

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app


def main(argv: list[str]) -> None:
    port, upstream = int(argv[0]), argv[1]
    app = create_app(upstream, os.environ["BENCH_UPSTREAM_KEY"])
    # The API's own settings (api.server_options) where they matter: one gevent worker,
    # 2000 connections; no access log, as candidate A writes none.
    options = {
        "bind": [f"127.0.0.1:{port}"],
        "workers": 1,
        "worker_class": "gevent",
        "worker_connections": 2000,
        "timeout": 60,
        "graceful_timeout": 5,
        "keepalive": 75,
        "loglevel": "warning",
        "control_socket_disable": True,
    }
    GunicornApp(lambda: app, options).run()


if __name__ == "__main__":
    main(sys.argv[1:])
