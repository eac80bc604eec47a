"""The request log: what clients sent, kept so tests and benchmarks can assert on it.

Every request is kept in memory (the most recent ``max_records``, so a long benchmark
cannot exhaust memory) and, given a path, appended as one JSON line to a file that outlives
the process. Credentials never reach either: ``x-api-key`` and ``authorization`` values are
replaced by ``[redacted]`` before the entry is built.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict with lower-cased names and credential values replaced."""
    return {
        name.lower(): REDACTED if name.lower() in SECRET_HEADERS else value
        for name, value in headers
    }


def describe_body(body: Any) -> dict[str, Any]:
    """The fields that tell a main-conversation call from the CLI's side calls.

    The CLI's main conversation always offers tools (Bash, Read, …); its side calls (for
    example the quota probe with ``max_tokens: 1``, or a title generator) do not.
    """
    if not isinstance(body, dict):
        return {"model": None, "n_messages": 0, "has_tools": False, "stream": False}
    messages = body.get("messages")
    return {
        "model": body.get("model") if isinstance(body.get("model"), str) else None,
        "n_messages": len(messages) if isinstance(messages, list) else 0,
        "has_tools": bool(body.get("tools")),
        "stream": body.get("stream") is True,
    }


def is_main_call(entry: dict[str, Any]) -> bool:
    """Whether a recorded entry is a main-conversation ``POST /v1/messages`` call."""
    return entry.get("path") == "/v1/messages" and bool(entry.get("has_tools"))


class RequestLog:
    """Thread-safe store of recorded requests; handler threads add, test threads read."""

    def __init__(self, record_path: Path | None = None, max_records: int = 1000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=max_records)
        self._path = record_path
        self._seq = 0
        if record_path is not None:
            record_path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Store ``entry`` (given a ``seq`` number) and append it to the record file."""
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, **entry}
            self._entries.append(entry)
            if self._path is not None:
                with self._path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Deep copies, so callers cannot change what is recorded."""
        with self._lock:
            return copy.deepcopy(list(self._entries))

    def clear(self) -> None:
        """Forget the in-memory entries (the record file is an append-only history)."""
        with self._lock:
            self._entries.clear()
