"""How ccq calls the Claude Code CLI and reads what it prints.

The command is an argv list (never a shell string) and the prompt goes in on stdin: one
argument may hold at most 128 KiB on Linux, and prompts may be larger. Output is NDJSON,
one object per line; a line that is not a JSON object becomes a ``ccq.raw`` event instead
of an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from orchestrator.settings import Settings
from orchestrator.storable import storable_json

# By absolute path, on the image's read-only root (npm's global prefix is /usr/local):
# nothing a session plants on its PATH is ever run instead.
CLAUDE_BINARY = "/usr/local/bin/claude"
WORKSPACE = "/workspace"


@dataclass(frozen=True)
class CliOptions:
    """The per-session (or per-run) knobs ccq passes to the CLI."""

    model: str | None = None
    append_system_prompt: str | None = None
    max_turns: int | None = None
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    mcp_config_path: str | None = None
    permission_mode: str = "bypassPermissions"


SESSION_TOKEN_VARIABLE = "CCQ_SESSION_TOKEN"  # noqa: S105 - a variable's name


def cli_environment(settings: Settings, session_token: str) -> dict[str, str]:
    """What a run's CLI process gets: the gateway as its model API, and the run's session
    token as its only credential, for model calls (``ANTHROPIC_API_KEY``) and ccq's MCP
    tools (``CCQ_SESSION_TOKEN``, which the MCP config's header names).

    The operator's Claude credential never enters a container: the gateway adds it
    upstream. The session token dies with the run.
    """
    return {
        "ANTHROPIC_BASE_URL": settings.gateway_url_for_containers,
        "ANTHROPIC_API_KEY": session_token,
        SESSION_TOKEN_VARIABLE: session_token,
    }


def build_command(session_id: str, *, resume: bool, options: CliOptions) -> list[str]:
    """The argv for one headless run; the prompt itself is written to stdin.

    Args:
        session_id: ccq's UUID for the conversation.
        resume: False on the session's first run (``--session-id``), True after
            (``--resume``), so the conversation continues in any new container.
        options: model, limits, tools and MCP config.
    """
    # --include-partial-messages: every text chunk is an event (live tails, and the
    # silence watchdog sees a long answer making progress).
    argv = [
        CLAUDE_BINARY,
        "-p",
        "--output-format=stream-json",
        "--verbose",
        "--include-partial-messages",
    ]
    argv.append(f"--resume={session_id}" if resume else f"--session-id={session_id}")
    argv.append(f"--permission-mode={options.permission_mode}")
    if options.model:
        argv.append(f"--model={options.model}")
    if options.append_system_prompt:
        argv.append(f"--append-system-prompt={options.append_system_prompt}")
    if options.max_turns is not None:
        argv.append(f"--max-turns={options.max_turns}")
    if options.allowed_tools:
        argv.append("--allowedTools=" + ",".join(options.allowed_tools))
    if options.disallowed_tools:
        argv.append("--disallowedTools=" + ",".join(options.disallowed_tools))
    if options.mcp_config_path:
        argv += [f"--mcp-config={options.mcp_config_path}", "--strict-mcp-config"]
    return argv


@dataclass(frozen=True)
class CliEvent:
    """One parsed line: ``type`` is the CLI's own (``system``, ``assistant``, ``result``…)
    or ``ccq.raw`` for a line that was not a JSON object."""

    type: str
    data: dict[str, Any]


def parse_line(line: str) -> CliEvent | None:
    """Parse one line of stream-json output; blank lines are skipped (None)."""
    text = line.strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return CliEvent("ccq.raw", {"line": text})
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return CliEvent("ccq.raw", {"line": text})
    return CliEvent(obj["type"], obj)


class LineSplitter:
    """Reassembles lines from arbitrary byte chunks (a line may span many reads)."""

    def __init__(self, max_line_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._max = max_line_bytes

    def feed(self, chunk: bytes) -> Iterator[str]:
        self._buffer += chunk
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line = bytes(self._buffer[:newline])
            del self._buffer[: newline + 1]
            yield line.decode("utf-8", errors="replace")
        if len(self._buffer) > self._max:
            # A runaway line without a newline: emit what we have rather than grow forever.
            line = bytes(self._buffer)
            self._buffer.clear()
            yield line.decode("utf-8", errors="replace")

    def flush(self) -> Iterator[str]:
        if self._buffer:
            line = bytes(self._buffer)
            self._buffer.clear()
            yield line.decode("utf-8", errors="replace")


def parse_stream(chunks: Iterable[bytes]) -> Iterator[CliEvent]:
    """Every event in a stream of stdout chunks."""
    splitter = LineSplitter()
    for chunk in chunks:
        for line in splitter.feed(chunk):
            if (event := parse_line(line)) is not None:
                yield event
    for line in splitter.flush():
        if (event := parse_line(line)) is not None:
            yield event


@dataclass
class RunOutcome:
    """What the CLI's final ``result`` message says about a run."""

    result_text: str | None = None
    subtype: str | None = None
    is_error: bool | None = None
    total_cost_usd: Decimal | None = None
    usage: dict[str, Any] | None = None
    num_turns: int | None = None
    duration_ms: int | None = None
    duration_api_ms: int | None = None
    cli_version: str | None = None
    model: str | None = None
    errors: list[Any] = field(default_factory=list)

    @property
    def has_result(self) -> bool:
        return self.subtype is not None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def apply_event(outcome: RunOutcome, event: CliEvent) -> None:
    """Fold one event into the run's outcome (init facts, then the final result).

    The outcome's strings go to the run's row: NUL and lone surrogates in them become
    U+FFFD (:mod:`orchestrator.storable`), as in the run's events.
    """
    if event.type not in ("system", "result"):
        return
    data = storable_json(event.data)
    if event.type == "system" and data.get("subtype") == "init":
        outcome.cli_version = data.get("claude_code_version")
        outcome.model = data.get("model")
    elif event.type == "result":
        result = data.get("result")
        outcome.result_text = result if isinstance(result, str) else None
        outcome.subtype = str(data.get("subtype") or "unknown")
        outcome.is_error = bool(data.get("is_error", False))
        cost = data.get("total_cost_usd")
        if isinstance(cost, int | float) and not isinstance(cost, bool):
            outcome.total_cost_usd = Decimal(str(cost))
        usage = data.get("usage")
        outcome.usage = usage if isinstance(usage, dict) else None
        outcome.num_turns = _int_or_none(data.get("num_turns"))
        outcome.duration_ms = _int_or_none(data.get("duration_ms"))
        outcome.duration_api_ms = _int_or_none(data.get("duration_api_ms"))
        errors = data.get("errors")
        outcome.errors = errors if isinstance(errors, list) else []
