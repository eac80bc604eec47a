"""What the tools say back to the model: the API's JSON turned into short, plain text.

Pure functions, dicts in and strings out, kept apart from the HTTP client and the MCP
wiring so the wording can be read (and tested) on its own. The model acts on this text,
so each answer states what happened, the IDs it needs next, and what to do next. The
input is the API's JSON, read defensively: a missing field shows as "-", never a crash.
"""

from __future__ import annotations

import json
from typing import Any

JsonObject = dict[str, Any]

CHILDREN_DIR = "/workspace/children"
# A tool result is read by the model: bounded, so one call cannot flood its context.
MAX_OUTPUT_CHARS = 20_000
MAX_RESULT_CHARS = 20_000
TOOL_INPUT_CHARS = 200
TOOL_RESULT_CHARS = 300
FINAL_RESULT_CHARS = 1_000
PROMPT_PREVIEW_CHARS = 80

FINAL_RUN_STATUSES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


def child_dir(child_id: str) -> str:
    return f"{CHILDREN_DIR}/{child_id}/"


def format_cost(usd: Any) -> str:
    if isinstance(usd, bool) or not isinstance(usd, int | float):
        return "-"
    return "$0" if usd == 0 else f"${usd:.4f}"


def _obj(value: Any) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _capped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[… {len(text) - limit} more characters not shown]"


def _run_label(run: JsonObject) -> str:
    seq = run.get("seq")
    return f"run {run.get('id', '-')}" + (f" (#{seq})" if seq is not None else "")


# --- spawn_child, send_to_child, stop_child -----------------------------------------------


def spawned(body: JsonObject) -> str:
    session, run = _obj(body.get("session")), _obj(body.get("run"))
    child_id = str(session.get("id", "-"))
    return (
        f"Spawned child session {child_id} (session status {session.get('status', '-')}); "
        f"its first {_run_label(run)} is {run.get('status', '-')}.\n"
        f"Its files appear under {child_dir(child_id)} (read them directly).\n"
        f'Next: get_child_result(child_id="{child_id}") tells whether it has finished and '
        f"what it answered. To run several children and be resumed when all are done, "
        f"use delegate instead of polling."
    )


def sent(child_id: str, body: JsonObject) -> str:
    run = _obj(body.get("run"))
    return (
        f"Queued {_run_label(run)} on child {child_id}; status {run.get('status', '-')}. "
        f"It runs after any run the child already has in progress.\n"
        f'get_child_result(child_id="{child_id}") shows its result once it has finished.'
    )


def stopped(body: JsonObject) -> str:
    session = _obj(body.get("session"))
    child_id = str(session.get("id", "-"))
    return (
        f"Stopping child {child_id} (and its own children); status now "
        f"{session.get('status', '-')}. Its files stay under {child_dir(child_id)}; "
        f"send_to_child resumes it later with its conversation intact."
    )


# --- get_child_result ----------------------------------------------------------------------


def child_result(body: JsonObject) -> str:
    """A child's latest run: its result if finished, else only that it is still going.

    Never shows the result of an earlier run while a later one is queued or running:
    the model would take stale output for the answer to its latest prompt.
    """
    session = _obj(body.get("session"))
    child_id = str(session.get("id", "-"))
    run = _obj(session.get("last_run"))
    status = str(run.get("status", "-"))
    head = f"Child {child_id} (session status {session.get('status', '-')})"
    if not run:
        return f"{head} has no runs yet."
    if status not in FINAL_RUN_STATUSES:
        return (
            f"{head} has NOT finished: its latest {_run_label(run)} is {status}. "
            f"No result yet. Check again later, or read its progress so far with "
            f"get_child_output."
        )
    lines = [f"{head}: latest {_run_label(run)} {status}."]
    subtype = run.get("subtype")
    if subtype and subtype != "success":
        lines.append(f"Ended with: {subtype}.")
    if run.get("error"):
        lines.append(f"Error: {run['error']}")
    if run.get("is_error") and not run.get("error"):
        lines.append("The run reported an error (see its result text).")
    lines.append(
        f"Cost: {format_cost(run.get('total_cost_usd'))} this run, "
        f"{format_cost(session.get('total_cost_usd'))} the child in all."
    )
    lines.append(f"Files: {child_dir(child_id)}")
    result = run.get("result")
    if isinstance(result, str) and result:
        lines += ["Result:", _capped(result, MAX_RESULT_CHARS)]
    else:
        lines.append("Result: (none)")
    return "\n".join(lines)


# --- list_children -------------------------------------------------------------------------


def children(body: JsonObject) -> str:
    items = [_obj(c) for c in body.get("children") or []]
    if not items:
        return "This session has no children."
    lines = [f"{len(items)} child session{'s' if len(items) != 1 else ''}:"]
    for child in items:
        run = _obj(child.get("last_run"))
        last = f"last run {run.get('status', '-')}" if run else "no runs"
        lines.append(
            f"- {child.get('id', '-')}  status {child.get('status', '-')}  {last}  "
            f"cost {format_cost(child.get('total_cost_usd'))}"
        )
    return "\n".join(lines)


# --- delegate ------------------------------------------------------------------------------


def delegated(body: JsonObject, prompts: list[str]) -> str:
    fanout = _obj(body.get("fanout"))
    child_ids = [str(c) for c in fanout.get("child_ids") or []]
    if not child_ids:
        child_ids = [str(_obj(c).get("id", "-")) for c in body.get("children") or []]
    lines = [
        f"Delegated {len(child_ids)} prompts to new child sessions "
        f"(fan-out {fanout.get('id', '-')}):"
    ]
    for index, child_id in enumerate(child_ids):
        preview = _one_line(prompts[index], PROMPT_PREVIEW_CHARS) if index < len(prompts) else ""
        lines.append(f"{index + 1}. {child_id}" + (f"  {preview}" if preview else ""))
    lines += [
        f"Their files appear under {CHILDREN_DIR}/<child_id>/.",
        "This session will be resumed automatically, with a new prompt carrying all their "
        "results, when every child has finished. End your turn now: do not poll, wait or "
        "call get_child_result for them.",
    ]
    return "\n".join(lines)


# --- get_child_output ----------------------------------------------------------------------


def _blocks(data: JsonObject) -> list[JsonObject]:
    content = _obj(data.get("message")).get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _tool_result_text(block: JsonObject) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(str(_obj(c).get("text", "")) for c in content)
    return "" if content is None else str(content)


def event_lines(event: JsonObject) -> list[str]:
    """The transcript lines of one event ([] for what a reader does not need)."""
    kind, data = str(event.get("type", "")), _obj(event.get("data"))
    if kind == "assistant":
        lines = []
        for block in _blocks(data):
            if block.get("type") == "text" and block.get("text"):
                lines.append(f"assistant: {block['text']}")
            elif block.get("type") == "tool_use":
                args = _one_line(json.dumps(block.get("input", {})), TOOL_INPUT_CHARS)
                lines.append(f"tool call: {block.get('name')} {args}")
        return lines
    if kind == "user":
        return [
            ("tool error: " if block.get("is_error") else "tool result: ")
            + _one_line(_tool_result_text(block), TOOL_RESULT_CHARS)
            for block in _blocks(data)
            if block.get("type") == "tool_result"
        ]
    if kind == "result":
        head = f"result ({data.get('subtype', '-')}"
        head += ", error" if data.get("is_error") else ""
        head += f", {data.get('num_turns', '-')} turns, {format_cost(data.get('total_cost_usd'))})"
        text = data.get("result")
        return [head + (f": {_capped(text, FINAL_RESULT_CHARS)}" if isinstance(text, str) else "")]
    if kind == "system" and data.get("subtype") == "init":
        return [
            f"[CLI started: Claude Code {data.get('claude_code_version')}, {data.get('model')}]"
        ]
    if kind == "system" and data.get("subtype") == "api_retry":
        return [f"[model API retry {data.get('attempt', '?')}/{data.get('max_retries', '?')}]"]
    if kind in ("ccq.stderr", "ccq.raw"):
        return [f"{kind.removeprefix('ccq.')}: {_one_line(str(data.get('line', '')), 300)}"]
    if kind == "ccq.run.finished":
        parts = [str(data.get("status", "-")), format_cost(data.get("total_cost_usd"))]
        if data.get("error"):
            parts.append(f"error: {_one_line(str(data['error']), 300)}")
        return [f"[run {event.get('run_id', '-')} finished: {', '.join(parts)}]"]
    if kind.startswith("ccq.run."):
        return [f"[run {event.get('run_id', '-')} {kind.removeprefix('ccq.run.')}]"]
    if kind == "ccq.session.status":
        return [f"[session status: {data.get('status', '-')}]"]
    if kind.startswith("ccq."):
        return [f"[{kind}]"]
    return []  # stream_event deltas (the assistant message repeats them), rate limits, …


def transcript(
    child_id: str,
    body: JsonObject,
    *,
    after: str | None,
    limit: int,
    max_chars: int = MAX_OUTPUT_CHARS,
) -> str:
    """A page of a child's events as a compact transcript, ending with the cursor.

    When the page does not fit in ``max_chars``, it stops after the last event shown and
    gives that event's ID as the cursor, so the next call continues where this one
    stopped and nothing is skipped.
    """
    events = [_obj(e) for e in body.get("events") or []]
    cursor = body.get("next_after") or after
    if not events:
        since = f" after {after}" if after else ""
        return f"Child {child_id}: no events{since} yet.\nnext_after: {cursor or '(none)'}"

    out: list[str] = []
    size, shown, capped = 0, 0, False
    for event in events:
        text = "".join(line + "\n" for line in event_lines(event))
        if size + len(text) > max_chars:
            if out:
                capped = True
                break
            text = _capped(text, max_chars)  # one huge event: show its start
        out.append(text)
        size += len(text)
        shown += 1
        cursor = event.get("id") or cursor
    head = f"Child {child_id}, {shown} events"
    head += f" (of {len(events)} fetched)" if shown < len(events) else ""
    footer = f"next_after: {cursor}"
    if capped:
        footer = (
            f"[output capped at {max_chars} characters; more events follow]\n{footer} "
            "(pass it as `after` to continue)"
        )
    elif len(events) >= limit:
        footer += " (the page was full: pass it as `after` to read more)"
    else:
        footer += " (the end so far: pass it as `after` later to read only newer events)"
    return "\n".join([head + ":", "".join(out).rstrip("\n") or "(nothing readable)", footer])
