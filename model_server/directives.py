"""Directive parsing: how a prompt tells the scripted model server what to answer.

A directive is ``[[name args]]`` written anywhere in the text blocks of the latest turn (the
last message that is not a ``system`` turn) of a Messages API request. Everything here is
pure logic (no I/O, no clock) so it can be unit tested on its own; the server turns a
:class:`Plan` into SSE frames or a JSON message.

Text inside ``<system-reminder>…</system-reminder>`` is ignored because the Claude Code CLI
injects such blocks (CLAUDE.md contents, date, todo reminders) into the user's message, and
they must neither trigger directives nor show up in echoed text. An unknown ``[[word]]`` is
left alone as plain text, so prose that happens to contain double brackets still works and a
misspelt directive shows up verbatim in the echo.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DIRECTIVE_NAMES = frozenset({"echo", "stream", "sleep", "tool", "error", "hang"})

#: Upper bounds that keep one prompt from tying up the server by accident.
MAX_STREAM_CHUNKS = 100_000
MAX_SECONDS = 24 * 3600.0

_SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.DOTALL)
_OPEN = re.compile(r"\[\[([a-z_]+)(?=[\s\]])")
_TOOL_NAME = re.compile(r"[^\s\]\[{}]+")

#: The Anthropic error ``type`` for each HTTP status the API documents.
ERROR_TYPES: Mapping[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

Kind = Literal["echo", "stream", "tool", "tool_result", "error", "hang"]


class DirectiveError(ValueError):
    """The request or one of its directives is malformed; the server answers 400."""


def error_type_for(status: int) -> str:
    """The Anthropic error type for an HTTP status (unknown 5xx are ``api_error``)."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


@dataclass(frozen=True)
class Directive:
    """One ``[[name args]]`` found in the prompt; ``tool_input`` is set only for ``tool``."""

    name: str
    args: tuple[str, ...] = ()
    tool_name: str = ""
    tool_input: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCall:
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What to answer: the reply's content, pacing, or an error / hang instead of a reply.

    ``chunks`` are the text deltas of the (optional) text block, sent ``chunk_delay``
    seconds apart; ``tools`` become ``tool_use`` blocks after it. ``sleep`` is waited
    before anything is sent, whatever the kind. ``error_times`` > 0 means the error is
    retryable and only the first that many attempts of the same request fail; the server
    counts attempts and then asks :func:`plan_reply` again with ``skip_errors``.
    """

    kind: Kind
    chunks: tuple[str, ...] = ()
    chunk_delay: float = 0.0
    tools: tuple[ToolCall, ...] = ()
    sleep: float = 0.0
    error_status: int = 0
    error_message: str = ""
    error_times: int = 0

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def stop_reason(self) -> str:
        return "tool_use" if self.tools else "end_turn"

    @property
    def label(self) -> str:
        """Which directive answered, as recorded (``sleep+echo`` when a sleep came first)."""
        return f"sleep+{self.kind}" if self.sleep > 0 else self.kind


def strip_system_reminders(text: str) -> str:
    """Remove the ``<system-reminder>`` blocks the CLI injects into user content."""
    return _SYSTEM_REMINDER.sub("", text)


def scan(text: str) -> tuple[list[Directive], str]:
    """Find every directive in ``text``.

    Returns:
        The directives in order, and the text with them removed (not stripped).

    Raises:
        DirectiveError: a known directive is unterminated or has bad arguments.
    """
    directives: list[Directive] = []
    kept: list[str] = []
    pos = 0
    while (match := _OPEN.search(text, pos)) is not None:
        name = match.group(1)
        if name not in DIRECTIVE_NAMES:
            kept.append(text[pos : match.end()])
            pos = match.end()
            continue
        kept.append(text[pos : match.start()])
        if name == "tool":
            directive, pos = _scan_tool(text, match.end())
        else:
            close = text.find("]]", match.end())
            if close < 0:
                raise DirectiveError(f"[[{name} …: missing closing ]]")
            directive = Directive(name, tuple(text[match.end() : close].split()))
            pos = close + 2
        directives.append(directive)
    kept.append(text[pos:])
    return directives, "".join(kept)


def _scan_tool(text: str, pos: int) -> tuple[Directive, int]:
    """Parse ``NAME {json}]]`` after ``[[tool``; the JSON may nest braces and brackets."""
    pos = _skip_space(text, pos)
    name_match = _TOOL_NAME.match(text, pos)
    if name_match is None:
        raise DirectiveError("[[tool NAME {input}]]: missing tool name")
    pos = _skip_space(text, name_match.end())
    tool_input: dict[str, Any] = {}
    if text.startswith("{", pos):
        try:
            value, pos = json.JSONDecoder().raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DirectiveError(
                f"[[tool {name_match.group()} …]]: input is not valid JSON: {exc.msg} "
                f"at {text[exc.pos : exc.pos + 20]!r}"
            ) from None
        except RecursionError:
            raise DirectiveError(
                f"[[tool {name_match.group()} …]]: input is not valid JSON: nested too deeply"
            ) from None
        tool_input = value
        pos = _skip_space(text, pos)
    if not text.startswith("]]", pos):
        raise DirectiveError(
            f"[[tool {name_match.group()} …]]: expected a JSON object then ]], "
            f"found {text[pos : pos + 20]!r}"
        )
    return Directive("tool", (), name_match.group(), tool_input), pos + 2


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def prompt_text(content: Any) -> str:
    """The text blocks of a message's content (a string or a list of blocks), joined,
    each without its system reminders (per block, so an unterminated one in a block the
    CLI wrote cannot swallow the user's own text in the next)."""
    if isinstance(content, str):
        return strip_system_reminders(content)
    if isinstance(content, list):
        return "\n".join(
            strip_system_reminders(block["text"])
            for block in content
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
    return ""


def _tool_results(content: Any) -> Iterator[str]:
    """Each ``tool_result`` block of a user message as one line of reply text."""
    if not isinstance(content, list):
        return
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "tool_result":
            continue
        inner = block.get("content", "")
        if isinstance(inner, list):
            inner = "\n".join(
                b["text"]
                if b.get("type") == "text" and isinstance(b.get("text"), str)
                else f"[{b.get('type')}]"
                for b in inner
                if isinstance(b, dict)
            )
        result = strip_system_reminders(str(inner)).strip()
        yield f"tool error: {result}" if block.get("is_error") else result


def latest_turn(messages: Any) -> dict[str, Any]:
    """The last message that is not a ``system`` turn.

    Claude Code 2.1.x appends ``{"role": "system", ...}`` messages (environment, available
    skills and agents) after the user's prompt, so the prompt is not always ``messages[-1]``.

    Raises:
        DirectiveError: ``messages`` is not a non-empty list of objects.
    """
    if not isinstance(messages, list) or not messages:
        raise DirectiveError("messages: must be a non-empty list")
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, dict):
            raise DirectiveError(f"messages[{index}]: must be an object with role and content")
        if message.get("role") != "system":
            return message
    raise DirectiveError("messages: no user or assistant message")


def plan_reply(messages: Any, *, skip_errors: bool = False) -> Plan:
    """Decide the answer to a request from the directives in its latest turn.

    Precedence: ``error``, then ``hang``, then tool results being returned (the CLI sending
    tool output back), then ``tool`` (after an optional echo/stream text block), ``stream``,
    and ``echo`` (also the default). ``sleep`` adds up and applies to all of them.
    ``skip_errors`` ignores ``error`` directives (once their ``times=K`` is used up).

    Raises:
        DirectiveError: ``messages`` is unusable or a directive is malformed.
    """
    last = latest_turn(messages)
    content = last.get("content")
    directives, rest = scan(prompt_text(content))

    echo = (f"echo (messages={len(messages)}): {rest.strip()}",)
    sleep = 0.0
    text: tuple[Kind, tuple[str, ...], float] | None = None
    tools: list[ToolCall] = []
    for directive in directives:
        args = directive.args
        match directive.name:
            case "error":
                status, message, times = _error_args(args)
                if not skip_errors:
                    return Plan(
                        "error",
                        sleep=sleep,
                        error_status=status,
                        error_message=message,
                        error_times=times,
                    )
            case "hang":
                _no_args(directive)
                return Plan("hang", sleep=sleep)
            case "sleep":
                if len(args) != 1:
                    raise DirectiveError("[[sleep SECONDS]]: takes exactly one number")
                sleep += _seconds(args[0], "sleep")
            case "stream":
                text = ("stream", *_stream_args(args))
            case "echo":
                _no_args(directive)
                text = ("echo", echo, 0.0)
            case "tool":
                tools.append(ToolCall(directive.tool_name, directive.tool_input))
            case _:  # pragma: no cover - scan() only returns known names
                raise DirectiveError(f"unknown directive {directive.name}")

    results = list(_tool_results(content)) if last.get("role") == "user" else []
    if results:
        return Plan("tool_result", ("tool result: " + "\n".join(results),), sleep=sleep)
    if tools:
        _, chunks, delay = text or ("echo", (), 0.0)
        return Plan("tool", chunks, delay, tuple(tools), sleep)
    kind, chunks, delay = text or ("echo", echo, 0.0)
    return Plan(kind, chunks, delay, sleep=sleep)


def _no_args(directive: Directive) -> None:
    if directive.args:
        raise DirectiveError(f"[[{directive.name}]]: takes no arguments")


def _seconds(raw: str, what: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DirectiveError(f"[[{what} …]]: {raw!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_SECONDS:  # also rejects nan
        raise DirectiveError(f"[[{what} …]]: seconds must be between 0 and {MAX_SECONDS:g}")
    return value


def _stream_args(args: tuple[str, ...]) -> tuple[tuple[str, ...], float]:
    if not 1 <= len(args) <= 2:
        raise DirectiveError("[[stream N DELAY]]: takes a chunk count and optional delay")
    try:
        count = int(args[0])
    except ValueError:
        raise DirectiveError(f"[[stream N …]]: {args[0]!r} is not an integer") from None
    if not 1 <= count <= MAX_STREAM_CHUNKS:
        raise DirectiveError(f"[[stream N …]]: N must be between 1 and {MAX_STREAM_CHUNKS}")
    delay = _seconds(args[1], "stream") if len(args) == 2 else 0.0
    return tuple(f"chunk {i}/{count} " for i in range(1, count + 1)), delay


def _error_args(args: tuple[str, ...]) -> tuple[int, str, int]:
    """``STATUS [times=K] [MESSAGE…]`` → status, message, times (0: every attempt fails)."""
    if not args:
        raise DirectiveError("[[error STATUS]]: missing the HTTP status")
    times = 0
    if len(args) > 1 and args[1].startswith("times="):
        try:
            times = int(args[1].removeprefix("times="))
        except ValueError:
            times = -1
        if not 1 <= times <= 1000:
            raise DirectiveError("[[error STATUS times=K]]: K must be an integer from 1 to 1000")
        args = (args[0], *args[2:])
    try:
        status = int(args[0])
    except ValueError:
        raise DirectiveError(f"[[error STATUS]]: {args[0]!r} is not an integer") from None
    if not 400 <= status <= 599:
        raise DirectiveError("[[error STATUS]]: STATUS must be between 400 and 599")
    message = " ".join(args[1:]) or f"scripted error {status} ({error_type_for(status)})"
    return status, message, times
