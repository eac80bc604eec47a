"""A minimal HTTP/1.1 client on asyncio streams that timestamps every read.

Not httpx nor requests: the client must be neither of the stacks being compared, and it
must see bytes when the socket has them (no client-side buffering to hide a proxy's).
One connection per request (`connection: close`), the same for every target."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from bench import BenchError
from bench.gateway_wire import ChunkedDecoder

READ_SIZE = 65536


def request_body(prompt: str, padding: int) -> bytes:
    """A streaming Messages request. ``padding`` bytes of system prompt stand in for what
    the CLI sends on every call (its system prompt and ~12 tool schemas), which a proxy
    must read and forward before upstream can answer."""
    body = {
        "model": "claude-opus-5-5",
        "max_tokens": 1024,
        "stream": True,
        "system": "x" * padding,
        "messages": [{"role": "user", "content": prompt}],
    }
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Timing:
    """One streamed response, seconds from just before connecting."""

    headers: float  # the response's header block was complete
    first_byte: float  # the first body byte (the `message_start` event) arrived
    done: float  # the last chunk arrived
    body: bytes
    arrivals: tuple[tuple[float, int], ...]  # (seconds, body length) after each read


async def stream_once(host: str, port: int, body: bytes, timeout: float = 60.0) -> Timing:
    return await asyncio.wait_for(_stream(host, port, body), timeout)


async def _stream(host: str, port: int, body: bytes) -> Timing:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\n"
            "content-type: application/json\r\nanthropic-version: 2023-06-01\r\n"
            f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        block = await reader.readuntil(b"\r\n\r\n")
        headers_at = time.perf_counter() - start
        status_line, *lines = block.decode("latin-1").split("\r\n")
        if " 200 " not in f"{status_line} ":
            raise BenchError(f"{host}:{port} answered {status_line!r}")
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        if fields.get("transfer-encoding", "").lower() != "chunked":
            raise BenchError(f"{host}:{port} did not stream (headers {fields})")
        decoder = ChunkedDecoder()
        arrivals: list[tuple[float, int]] = []
        while not decoder.done:
            data = await reader.read(READ_SIZE)
            if not data:
                raise BenchError(f"{host}:{port} closed the stream early")
            decoder.feed(data)
            if decoder.body and (not arrivals or arrivals[-1][1] != len(decoder.body)):
                arrivals.append((time.perf_counter() - start, len(decoder.body)))
        if not arrivals:
            raise BenchError(f"{host}:{port} sent an empty body")
        return Timing(
            headers=headers_at,
            first_byte=arrivals[0][0],
            done=arrivals[-1][0],
            body=bytes(decoder.body),
            arrivals=tuple(arrivals),
        )
    finally:
        writer.close()
