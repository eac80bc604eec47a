from __future__ import annotations

import struct

from orchestrator.runtime.containers import FrameDecoder


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_frames_are_decoded_whatever_the_chunking() -> None:
    data = frame(1, b"out line\n") + frame(2, b"err") + frame(1, b"")
    decoder = FrameDecoder()
    frames: list[tuple[int, bytes]] = []
    for i in range(len(data)):
        frames += decoder.feed(data[i : i + 1])
    assert frames == [(1, b"out line\n"), (2, b"err"), (1, b"")]


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    decoder = FrameDecoder()
    whole = frame(1, b"abcdef")
    assert decoder.feed(whole[:10]) == []
    assert decoder.feed(whole[10:]) == [(1, b"abcdef")]
