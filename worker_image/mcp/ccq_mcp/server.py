"""The MCP wiring: seven tools named and described for the model, nothing else.

Each tool reads the configuration, makes one call through :mod:`ccq_mcp.api_client` and
words the answer with :mod:`ccq_mcp.render`. Every expected failure (no configuration, API
unreachable, an HTTP error such as a 409 over a depth limit) becomes a ``ToolError``: the
model gets an ``isError`` result with the reason, and this process keeps serving. The
configuration is read on every call, not at start-up, so a server started without it
still starts, lists its tools and explains the problem when one is used.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ccq_mcp import render
from ccq_mcp.api_client import CcqApi, CcqApiError, Config, JsonObject

SERVER_NAME = "ccq"
INSTRUCTIONS = (
    "Tools to run child Claude sessions through ccq. A child works in its own container; "
    f"its files appear under {render.CHILDREN_DIR}/<child_id>/ in this workspace. "
    "To split work into parallel pieces, call delegate once and end your turn: you are "
    "resumed with every child's result. Use spawn_child and friends to steer children "
    "one by one."
)

mcp = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")

ChildId = Annotated[
    str,
    Field(description="The child session's ID, as spawn_child, delegate or list_children gave it."),
]
Prompt = Annotated[
    str,
    Field(
        min_length=1,
        description="The complete task for the child: it does not see your conversation, "
        "so say everything it needs, including which files to write.",
    ),
]


async def _call(request: Callable[[CcqApi], Awaitable[JsonObject]]) -> JsonObject:
    """Run one API call; every :class:`CcqApiError` becomes the tool's error result."""
    try:
        return await request(CcqApi(Config.from_env(os.environ)))
    except CcqApiError as exc:
        raise ToolError(str(exc)) from None


@mcp.tool(structured_output=False)
async def spawn_child(
    prompt: Prompt,
    model: Annotated[
        str | None,
        Field(description="Model for the child (e.g. 'sonnet', 'haiku'); default: ccq's."),
    ] = None,
    max_turns: Annotated[
        int | None, Field(ge=1, description="Most agentic turns the child's first run may take.")
    ] = None,
    append_system_prompt: Annotated[
        str | None, Field(description="Extra system-prompt text for the child.")
    ] = None,
) -> str:
    """Start one child session working on `prompt` in parallel with you; returns its ID at once.

    The child runs on its own; check it with get_child_result / get_child_output, steer it
    with send_to_child. For several independent tasks whose results you need together,
    prefer delegate.
    """
    body = await _call(
        lambda api: api.spawn_child(
            prompt, model=model, max_turns=max_turns, append_system_prompt=append_system_prompt
        )
    )
    return render.spawned(body)


@mcp.tool(structured_output=False)
async def send_to_child(child_id: ChildId, prompt: Prompt) -> str:
    """Queue another prompt for an existing child (it continues its own conversation).

    Returns at once with the new run's ID; the run starts after any run the child is
    already doing. A stopped child is resumed.
    """
    body = await _call(lambda api: api.send_to_child(child_id, prompt))
    return render.sent(child_id, body)


@mcp.tool(structured_output=False)
async def get_child_result(child_id: ChildId) -> str:
    """The outcome of a child's latest run: status, result text, cost, error, files.

    If that run is still queued or running it says so and gives no result.
    """
    return render.child_result(await _call(lambda api: api.get_session(child_id)))


@mcp.tool(structured_output=False)
async def get_child_output(
    child_id: ChildId,
    after: Annotated[
        str | None,
        Field(description="The next_after cursor a previous call returned; omit to start."),
    ] = None,
    limit: Annotated[
        int, Field(ge=1, le=5000, description="How many events to fetch (1-5000).")
    ] = 200,
) -> str:
    """What a child has been doing: its messages, tool calls and results as a transcript.

    Capped at about 20,000 characters; ends with a next_after cursor: pass it as `after`
    to continue, or later to read only what is new.
    """
    body = await _call(lambda api: api.get_events(child_id, after=after, limit=limit))
    return render.transcript(child_id, body, after=after, limit=limit)


@mcp.tool(structured_output=False)
async def list_children() -> str:
    """This session's children: ID, status, last run's status and cost, one per line."""
    return render.children(await _call(lambda api: api.list_children()))


@mcp.tool(structured_output=False)
async def stop_child(child_id: ChildId) -> str:
    """Stop a child (and its descendants): its current run is cancelled, files are kept.

    Sending it a prompt later resumes it.
    """
    return render.stopped(await _call(lambda api: api.stop_child(child_id)))


@mcp.tool(structured_output=False)
async def delegate(
    prompts: Annotated[
        list[str],
        Field(
            min_length=1,
            description="One complete, self-contained task per child; the children run in "
            "parallel and do not see your conversation or each other.",
        ),
    ],
    then: Annotated[
        str | None,
        Field(
            description="What to do with the results when you are resumed (it opens the "
            "prompt that carries them). Omit for the default."
        ),
    ] = None,
) -> str:
    """Fan out: one new child per prompt, all in parallel; you are resumed with all results.

    After calling it, END YOUR TURN: when every child has finished, this session gets a
    new prompt carrying each child's result. Do not poll while waiting.
    """
    body = await _call(lambda api: api.fanout(prompts, then))
    return render.delegated(body, prompts)


def main() -> None:
    """Serve over stdio until the client (the Claude Code CLI) closes the pipe."""
    mcp.run("stdio")
