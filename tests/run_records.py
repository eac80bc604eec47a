"""What a run left behind, read where it lies: the model server's log, the session's
Redis stream."""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from model_server.recording import is_main_call
from model_server.server import ModelServer
from orchestrator.streams.events import stream_key


def prompt_calls(model: ModelServer, nonce: str) -> int:
    """Main-conversation model calls whose newest user message carries ``nonce``: how
    often a CLI was started on that prompt (a turn's later calls end with tool results)."""
    return sum(1 for r in model.requests() if is_main_call(r) and nonce in _last_user(r))


def _last_user(entry: dict[str, Any]) -> str:
    messages = (entry.get("body") or {}).get("messages") or []
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return json.dumps(users[-1]) if users else ""


def streamed(client: redis.Redis, session_id: str, run_id: str) -> list[dict[str, Any]]:
    """The run's events as its session's Redis stream holds them (what tails saw)."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream_key(session_id)))
    payloads = [json.loads(fields[b"e"]) for _, fields in entries]
    return [p for p in payloads if p["run_id"] == run_id]
