"""The request log: what clients sent, kept so tests and benchmarks can assert on it.

Every request is kept in memory (the most recent ``max_records``, so a long benchmark
cannot exhaust memory) and, given a path, appended as one JSON line to a file that outlives
the process. Credentials never reach either: ``x-api-key``, ``authorization``,
``proxy-authorization`` and ``cookie`` values are replaced by their :func:`fingerprint`
before the entry is built, so a test can tell which credential a request carried (compare
with ``fingerprint(known_key)``) without the secret being written anywhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie"})
FINGERPRINT_PREFIX = "sha256:"


def fingerprint(value: str) -> str:
    """A non-reversible tag of a credential: ``sha256:`` and the first 16 hex digits of the
    SHA-256 of its UTF-8 bytes.

    The whole header value is hashed as sent, so ``authorization: Bearer X`` is recorded as
    ``fingerprint("Bearer X")``, not ``fingerprint("X")``. 64 bits tell keys apart and cannot
    be turned back into a random API key; a guessable secret (a dictionary word) could be
    confirmed by hashing guesses, so tests should use random-looking keys anyway.
    """
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return FINGERPRINT_PREFIX + digest[:16]


def redact_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict with lower-cased names and credential values replaced by their
    :func:`fingerprint` (the value itself is never kept)."""
    return {
        name.lower(): fingerprint(value) if name.lower() in SECRET_HEADERS else value
        for name, value in headers
    }


def describe_body(body: Any, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields that tell the CLI's calls apart, for tests that filter the log.

    Seen from Claude Code 2.1.329 in ``-p`` mode: every ``/v1/messages`` call offers tools
    (main turns, sub-agents and ``/compact`` alike), a sub-agent's system prompt starts with
    a billing line containing ``cc_is_subagent=true``, and every call names its session in
    the ``x-claude-code-session-id`` header (and in ``metadata.user_id``).
    """
    headers = headers or {}
    if not isinstance(body, dict):
        body = {}
    messages = body.get("messages")
    model = body.get("model")
    return {
        "model": model if isinstance(model, str) else None,
        "n_messages": len(messages) if isinstance(messages, list) else 0,
        "has_tools": bool(body.get("tools")),
        "stream": body.get("stream") is True,
        "subagent": "cc_is_subagent=true" in _system_text(body.get("system")),
        "session_id": headers.get("x-claude-code-session-id") or _metadata_session(body),
    }


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    return ""


def _metadata_session(body: dict[str, Any]) -> str | None:
    """``metadata.user_id`` is itself JSON text holding ``session_id`` in the CLI's calls."""
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    try:
        session = json.loads(user_id).get("session_id") if isinstance(user_id, str) else None
    except (ValueError, AttributeError):
        return None
    return session if isinstance(session, str) else None


def is_main_call(entry: dict[str, Any]) -> bool:
    """Whether a recorded entry is a main-conversation turn: a Messages call with tools that
    is not a sub-agent's (count_tokens calls, sub-agents and tool-less side calls are not)."""
    return (
        entry.get("path") == "/v1/messages"
        and bool(entry.get("has_tools"))
        and not entry.get("subagent")
    )


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
