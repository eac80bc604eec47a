"""A process started in a container by ``docker exec``, read in short polls.

The prompt goes to stdin; output comes back on the hijacked exec socket in Docker's
multiplexed framing, read in slices so that callers can enforce silence and time limits
between reads.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Any

import docker

from orchestrator.runtime.containers.client import engine_errors
from orchestrator.runtime.containers.errors import EngineUnavailable


class FrameDecoder:
    """Decodes Docker's multiplexed stream (8-byte header: stream, 0, 0, 0, size u32 BE)."""

    STDOUT, STDERR = 1, 2

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= 8:
            stream, size = struct.unpack(">BxxxL", self._buffer[:8])
            if len(self._buffer) < 8 + size:
                break
            frames.append((stream, bytes(self._buffer[8 : 8 + size])))
            del self._buffer[: 8 + size]
        return frames


@dataclass(frozen=True)
class Output:
    stream: int  # FrameDecoder.STDOUT or STDERR
    data: bytes


class ExecProcess:
    """A running ``docker exec``: write stdin once, then poll its output.

    Made by :meth:`ContainerRuntime.exec`; its errors are the runtime's.
    """

    def __init__(self, api: docker.APIClient, exec_id: str, sock: Any) -> None:
        self._api = api
        self.exec_id = exec_id
        # exec_start hands back a SocketIO wrapper holding an io reference on the socket:
        # both must be closed for the file descriptor to be released.
        self._wrapper = sock
        self._sock: socket.socket = getattr(sock, "_sock", sock)
        self._decoder = FrameDecoder()
        self.eof = False

    def write_stdin_and_close(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
            # Half-close: the engine closes the process's stdin, and output keeps flowing.
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise EngineUnavailable(f"exec {self.exec_id[:12]}: stdin broke: {exc}") from exc

    def poll(self, timeout: float) -> list[Output]:
        """Output that arrived within ``timeout`` seconds ([] on silence); sets ``eof``."""
        if self.eof:
            return []
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return []
        except OSError as exc:
            raise EngineUnavailable(f"exec {self.exec_id[:12]}: output broke: {exc}") from exc
        if not data:
            self.eof = True
            return []
        return [Output(s, d) for s, d in self._decoder.feed(data)]

    def exit_code(self) -> int | None:
        """The exit code; None while it runs. ``ContainerMissing`` once its container is
        gone (the engine forgets its exec instances with it)."""
        with engine_errors(f"cannot inspect exec {self.exec_id[:12]}"):
            info = self._api.exec_inspect(self.exec_id)
        code = info.get("ExitCode")
        return None if info.get("Running") else code

    def close(self) -> None:
        for closable in (self._wrapper, self._sock):
            with contextlib.suppress(OSError):
                closable.close()
