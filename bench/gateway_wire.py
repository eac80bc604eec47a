"""The pure parts of the gateway stack benchmark: which headers a proxy forwards, HTTP/1.1
chunked decoding as bytes arrive, and when each streamed text chunk arrived.

Kept free of sockets and servers so the unit tests can check them (and so both proxies,
one of them gevent-patched, share the header rules without importing each other). The
header rules are the real gateway's (``gateway.wire``), so the proxies forward as it does."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway import wire


def upstream_headers(headers: Iterable[tuple[str, str]], api_key: str) -> dict[str, str]:
    """The client's headers as the upstream gets them, by the real gateway's rules
    (``gateway.wire``): its credential replaced by the operator's key, hop-by-hop
    headers dropped, identity encoding asked for."""
    return wire.upstream_headers(headers, wire.UpstreamCredential(api_key=api_key))


# The upstream's response headers as the client gets them, as the real gateway relays them.
downstream_headers = wire.downstream_headers


class ChunkedError(ValueError):
    """The body is not valid HTTP/1.1 chunked encoding."""


class ChunkedDecoder:
    """Decodes a chunked body fed in arbitrary pieces, as they come off the socket.

    ``body`` grows as soon as a chunk's data arrives, even before its chunk is complete,
    so arrival times are those of the bytes, not of the framing around them."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False
        self._buffer = bytearray()
        self._remaining = 0  # data bytes still due in the current chunk
        self._need_crlf = False  # the CRLF after a chunk's data is due

    def feed(self, data: bytes) -> None:
        if self.done:
            if data:
                raise ChunkedError("data after the last chunk")
            return
        self._buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        """Consume what can be consumed; False when more input is needed (or done)."""
        buffer = self._buffer
        if self._remaining:
            take = min(self._remaining, len(buffer))
            if not take:
                return False
            self.body += buffer[:take]
            del buffer[:take]
            self._remaining -= take
            self._need_crlf = self._remaining == 0
            return True
        if self._need_crlf:
            if len(buffer) < 2:
                return False
            if buffer[:2] != b"\r\n":
                raise ChunkedError("chunk data not followed by CRLF")
            del buffer[:2]
            self._need_crlf = False
            return True
        end = buffer.find(b"\r\n")
        if end < 0:
            return False
        size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()  # extensions ignored
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ChunkedError(f"bad chunk size {size_text!r}") from None
        if size == 0:
            # The last chunk; no trailers are sent by either server, so a CRLF ends it.
            if len(buffer) < end + 4:
                return False
            if buffer[end + 2 : end + 4] != b"\r\n":
                raise ChunkedError("trailers are not expected")
            del buffer[: end + 4]
            self.done = True
            return False
        del buffer[: end + 2]
        self._remaining = size
        return True


def arrival_time(arrivals: Sequence[tuple[float, int]], offset: int) -> float:
    """When the body had ``offset`` bytes: ``arrivals`` are (seconds, body length so far)
    after each read, in order."""
    for seconds, length in arrivals:
        if length >= offset:
            return seconds
    raise ValueError(f"the body never reached {offset} bytes")


def chunk_arrivals(body: bytes, arrivals: Sequence[tuple[float, int]], count: int) -> list[float]:
    """When each of the ``[[stream N]]`` text chunks (``chunk k/N ``) was fully received."""
    times = []
    start = 0
    for k in range(1, count + 1):
        marker = f"chunk {k}/{count} ".encode()
        found = body.find(marker, start)
        if found < 0:
            raise ValueError(f"{marker!r} is not in the body")
        start = found + len(marker)
        times.append(arrival_time(arrivals, start))
    return times


def gaps(times: Sequence[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


# A chunk produced `delay` after the previous one that arrives within a quarter of it
# came in the same burst: a buffering proxy holds chunks back and releases them together.
BURST_FRACTION = 0.25


def bursted(chunk_gaps: Sequence[float], delay: float) -> int:
    """How many chunks arrived bunched with the one before, though produced ``delay``
    apart."""
    return sum(1 for gap in chunk_gaps if gap < delay * BURST_FRACTION)


@dataclass(frozen=True)
class Fidelity:
    """How a paced stream's chunk spacing survived the trip, over all of its gaps."""

    gaps: int
    bursted: int
    # Worst distance of a gap from the producer's delay, seconds.
    max_deviation: float

    @classmethod
    def of(cls, chunk_gaps: Sequence[float], delay: float) -> Fidelity:
        return cls(
            gaps=len(chunk_gaps),
            bursted=bursted(chunk_gaps, delay),
            max_deviation=max((abs(gap - delay) for gap in chunk_gaps), default=0.0),
        )
