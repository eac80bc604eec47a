"""The gateway stack benchmark's pure parts: forwarded headers, chunked decoding as bytes
arrive, and when a paced stream's chunks arrived (bursts included)."""

from __future__ import annotations

import pytest

from bench.gateway_wire import (
    ChunkedDecoder,
    ChunkedError,
    Fidelity,
    arrival_time,
    bursted,
    chunk_arrivals,
    downstream_headers,
    gaps,
    upstream_headers,
)


def test_upstream_gets_the_operators_key_and_no_hop_by_hop_headers() -> None:
    sent = upstream_headers(
        [
            ("Host", "gateway:8100"),
            ("X-Api-Key", "ccqs_session-token"),
            ("Authorization", "Bearer ccqs_session-token"),
            ("Connection", "keep-alive"),
            ("Content-Length", "12"),
            ("anthropic-version", "2023-06-01"),
            ("x-claude-code-session-id", "abc"),
        ],
        "operator-key",
    )
    assert sent == {
        "anthropic-version": "2023-06-01",
        "x-claude-code-session-id": "abc",
        "accept-encoding": "identity",  # the real gateway's rule: bytes relayed = metered
        "x-api-key": "operator-key",
    }


def test_the_client_gets_the_upstreams_headers_without_its_framing() -> None:
    kept = downstream_headers(
        [
            ("content-type", "text/event-stream"),
            ("Transfer-Encoding", "chunked"),
            ("content-length", "10"),
            ("request-id", "req_1"),
        ]
    )
    assert kept == [("content-type", "text/event-stream"), ("request-id", "req_1")]


def test_chunked_bodies_decode_whatever_the_pieces() -> None:
    wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    for size in (1, 2, 3, 7, len(wire)):
        decoder = ChunkedDecoder()
        for start in range(0, len(wire), size):
            assert not decoder.done
            decoder.feed(wire[start : start + size])
        assert decoder.done
        assert bytes(decoder.body) == b"hello, world"


def test_chunk_data_counts_as_soon_as_it_arrives() -> None:
    decoder = ChunkedDecoder()
    decoder.feed(b"9\r\nchunk")
    assert bytes(decoder.body) == b"chunk"  # half a chunk is already there to time
    decoder.feed(b" 1/2\r\n")
    assert bytes(decoder.body) == b"chunk 1/2"


@pytest.mark.parametrize(
    "wire",
    [b"zz\r\nhello\r\n", b"5\r\nhelloXX", b"0\r\nTrailer: x\r\n\r\n"],
)
def test_malformed_chunking_is_refused(wire: bytes) -> None:
    with pytest.raises(ChunkedError):
        ChunkedDecoder().feed(wire)


def test_data_after_the_last_chunk_is_refused() -> None:
    decoder = ChunkedDecoder()
    decoder.feed(b"0\r\n\r\n")
    with pytest.raises(ChunkedError, match="after the last chunk"):
        decoder.feed(b"x")


def test_each_chunk_is_timed_by_the_read_that_completed_it() -> None:
    body = b"".join(b'data: {"text":"chunk %d/3 "}\n\n' % k for k in (1, 2, 3))
    first_end = body.index(b"chunk 1/3 ") + len(b"chunk 1/3 ")
    # Read 1 ends mid-way through chunk 1; read 2 brings the rest of 1 and all of 2.
    arrivals = [(0.010, first_end - 3), (0.060, body.index(b"chunk 3/3")), (0.110, len(body))]
    assert chunk_arrivals(body, arrivals, 3) == [0.060, 0.060, 0.110]
    assert arrival_time(arrivals, 1) == 0.010
    with pytest.raises(ValueError, match="never reached"):
        arrival_time(arrivals, len(body) + 1)
    with pytest.raises(ValueError, match="not in the body"):
        chunk_arrivals(body, arrivals, 4)


def test_paced_chunks_are_not_bursts_and_held_back_ones_are() -> None:
    paced = [0.0, 0.05, 0.101, 0.149, 0.2]
    assert gaps(paced) == pytest.approx([0.05, 0.051, 0.048, 0.051])
    assert bursted(gaps(paced), 0.05) == 0
    # A buffering proxy: everything held until the end, then released together.
    held = [0.2, 0.2001, 0.2002, 0.2003, 0.2004]
    assert bursted(gaps(held), 0.05) == 4
    fidelity = Fidelity.of(gaps(paced), 0.05)
    assert (fidelity.gaps, fidelity.bursted) == (4, 0)
    assert fidelity.max_deviation == pytest.approx(0.002)
    assert Fidelity.of([], 0.05) == Fidelity(gaps=0, bursted=0, max_deviation=0.0)
