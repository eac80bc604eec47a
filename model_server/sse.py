"""The Messages API wire format: reply objects, streaming events, SSE frames, token counts.

The shapes follow Anthropic's documented streaming protocol closely, because the Claude
Code CLI parses them with the official SDK: ``message_start``, then per content block
``content_block_start`` / ``content_block_delta`` / ``content_block_stop``, then
``message_delta`` and ``message_stop``. Token counts are estimates (characters / 4) but
deterministic and never zero, so the CLI reports a nonzero cost.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from model_server.directives import Plan, error_type_for

#: Size of each ``input_json_delta`` piece; small so clients exercise partial-JSON assembly.
JSON_DELTA_SIZE = 32


@dataclass(frozen=True)
class Event:
    """One SSE event, sent after waiting ``delay`` seconds (the ``[[stream]]`` pacing)."""

    name: str
    data: dict[str, Any]
    delay: float = 0.0


def new_id(prefix: str) -> str:
    """An ID shaped like Anthropic's (``msg_…``, ``toolu_…``, ``req_…``)."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def estimate_tokens(value: Any) -> int:
    """Characters / 4 of ``value`` as JSON (strings as themselves), at least 1."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return max(1, len(text) // 4)


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def error_body(status: int, message: str) -> dict[str, Any]:
    """The Anthropic error object for an HTTP status."""
    return {"type": "error", "error": {"type": error_type_for(status), "message": message}}


class Reply:
    """One assistant message built from a :class:`Plan`, rendered either way."""

    def __init__(self, plan: Plan, model: str, input_tokens: int) -> None:
        self.plan = plan
        self.model = model
        self.id = new_id("msg")
        self.input_tokens = input_tokens
        self.content: list[dict[str, Any]] = []
        if plan.chunks:
            self.content.append({"type": "text", "text": plan.text})
        for tool in plan.tools:
            self.content.append(
                {"type": "tool_use", "id": new_id("toolu"), "name": tool.name, "input": tool.input}
            )
        self.output_tokens = estimate_tokens(self.content) if self.content else 1

    def usage(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    def message(self, *, final: bool = True) -> dict[str, Any]:
        """The message object: complete (plain JSON reply) or empty (``message_start``)."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content if final else [],
            "stop_reason": self.plan.stop_reason if final else None,
            "stop_sequence": None,
            "usage": self.usage(self.output_tokens if final else 1),
        }

    def start_event(self) -> Event:
        return Event(
            "message_start", {"type": "message_start", "message": self.message(final=False)}
        )

    def events(self) -> Iterator[Event]:
        """Everything after ``message_start``, with the plan's delays between text chunks."""
        yield Event("ping", {"type": "ping"})
        for index, block in enumerate(self.content):
            if block["type"] == "text":
                start: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [
                    Event(
                        "content_block_delta",
                        _delta(index, {"type": "text_delta", "text": chunk}),
                        self.plan.chunk_delay if n > 0 else 0.0,
                    )
                    for n, chunk in enumerate(self.plan.chunks)
                ]
            else:
                start = {**block, "input": {}}
                raw = json.dumps(block["input"])
                deltas = [
                    Event(
                        "content_block_delta",
                        _delta(index, {"type": "input_json_delta", "partial_json": piece}),
                    )
                    for piece in _pieces(raw, JSON_DELTA_SIZE)
                ]
            yield Event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            yield from deltas
            yield Event("content_block_stop", {"type": "content_block_stop", "index": index})
        yield Event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.plan.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": self.output_tokens},
            },
        )
        yield Event("message_stop", {"type": "message_stop"})


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
