"""The MCP wiring: the seven ``ccq`` tools, served over Streamable HTTP by the gateway.

Each tool reads the caller's credential from the HTTP request it arrived in, makes one
call through :mod:`gateway.tools.ccq_api` as that session, and words the answer with
:mod:`gateway.tools.render`. Every expected failure (no credential, API unreachable, an
HTTP error such as a 409 over a depth limit) becomes a ``ToolError``: the model gets an
``isError`` result with the reason, and the gateway keeps serving.

The credential. The gateway's authentication middleware verifies the session token and
puts a :class:`~gateway.credentials.RunCredential` in ``scope["state"]["credential"]``
before this endpoint sees the request. The SDK hands each tool the Starlette ``Request``
its JSON-RPC message came in (``ctx.request_context.request``, built on that same scope)
in both the handshake-era transport and the 2026-07-28 single-exchange one, so a tool
reads ``request.scope["state"]["credential"]`` of *its own* request. Nothing is kept
between calls and nothing comes from the process environment: one gateway serves every
session at once.

Why stateless Streamable HTTP with JSON responses (``stateless_http=True,
json_response=True``):

- The client is the Claude Code CLI, and each tool call is independent: every tool is one
  API call answered at once, none streams progress or asks the client anything back
  (sampling, elicitation), so an SSE stream or a server-to-client channel buys nothing.
- Stateful mode would serve the tools as well (each POST of a session still hands its
  tools its own request, so its own credential), but the gateway would keep an
  ``Mcp-Session-Id`` table (idle timeouts, a session cap, 404s after a gateway restart
  that the CLI must recover from) for state no tool uses. Stateless keeps the gateway
  free of per-session state: any gateway process, restarted or not, answers any call.
- JSON responses are one plain HTTP answer per call: nothing held open, nothing for a
  proxy to buffer or time out.

Transport security. The SDK's DNS-rebinding protection checks the ``Host`` (and
``Origin``) header against an allow-list, and turns itself on, allowing only loopback
names, when an app is built without settings. Session containers call the gateway as
``http://host.docker.internal:<port>/mcp`` (or whatever ``CCQ_CONTAINER_GATEWAY_URL``
names), which that default would refuse with 421. The check is off here on purpose: it
protects unauthenticated local servers from a browser tricked into calling them, and the
gateway authenticates every request with a session's bearer token, which such a page
cannot have. The SDK's ``Content-Type: application/json`` check on POSTs stays on.

Mounting it in the gateway's Starlette app: the endpoint is a plain ASGI app routed at
``/mcp``, and its session manager must run in the gateway app's lifespan (requests fail
until it does)::

    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    # The gateway runs beside the API, so it calls it on the host (settings.api_url).
    tools = tools_app(build_tools_server(settings.api_url))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with tools.session_manager.run():
            yield

    app = Starlette(
        routes=[tools.route(), ...],  # Route("/mcp", endpoint=tools.app)
        middleware=[Middleware(GatewayAuthentication, ...)],  # sets the credential
        lifespan=lifespan,
    )
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, NamedTuple, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.credentials import STATE_KEY, RunCredential
from gateway.tools import render
from gateway.tools.ccq_api import CcqApi, CcqApiError, Config, JsonObject

SERVER_NAME = "ccq"
# Where the gateway serves the tools; the MCP config ccq writes for a session points here.
MCP_PATH = "/mcp"
INSTRUCTIONS = (
    "Tools to run child Claude sessions through ccq. A child works in its own container; "
    f"its files appear under {render.CHILDREN_DIR}/<child_id>/ in this workspace. "
    "To split work into parallel pieces, call delegate once and end your turn: you are "
    "resumed with every child's result. Use spawn_child and friends to steer children "
    "one by one."
)
NO_CREDENTIAL = (
    "this call to ccq's tools carried no verified session credential, so it cannot act for "
    "any session. The gateway authenticates every call with the session's token; this "
    "one reached the tools without it."
)

_ToolFn = TypeVar("_ToolFn", bound=Callable[..., Awaitable[str]])

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


class ToolsApp(NamedTuple):
    """The tools' HTTP endpoint and the session manager its requests need running.

    ``app`` is an ASGI app answering MCP at whatever path it is routed to (every method:
    POST carries the calls; GET and DELETE get the SDK's answers for a stateless server).
    ``session_manager.run()`` must be entered (once) in the lifespan of the app serving it;
    until then a request fails with ``RuntimeError``.
    """

    app: ASGIApp
    session_manager: StreamableHTTPSessionManager

    def route(self, path: str = MCP_PATH) -> Route:
        """A Starlette route for the endpoint at ``path`` exactly (``Route``, not ``Mount``:
        a mount at ``/mcp`` would answer ``/mcp`` itself with a redirect to ``/mcp/``)."""
        return Route(path, endpoint=self.app)


def credential_of(ctx: Context) -> RunCredential:
    """The credential the gateway's authentication stored in this call's HTTP request.

    Raises:
        ToolError: there is none (not behind the gateway's authentication, or not over
            HTTP at all); the model reads the reason.
    """
    try:
        request = ctx.request_context.request
    except ValueError:  # no request context: the tool was called outside a request
        request = None
    state = request.scope.get("state") if isinstance(request, Request) else None
    credential = state.get(STATE_KEY) if isinstance(state, dict) else None
    if not isinstance(credential, RunCredential):
        raise ToolError(NO_CREDENTIAL)
    return credential


def build_tools_server(api_url: str) -> MCPServer:
    """The ``ccq`` MCP server: seven tools calling ccq's API at ``api_url`` as the caller.

    Raises:
        ValueError: ``api_url`` is empty.
    """
    base_url = api_url.strip().rstrip("/")
    if not base_url:
        raise ValueError("the ccq tools need the ccq API's URL")
    with _root_logging_unchanged():
        server: MCPServer = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")

    async def call(ctx: Context, request: Callable[[CcqApi], Awaitable[JsonObject]]) -> JsonObject:
        """One API call as the caller; every :class:`CcqApiError` becomes the tool's error."""
        api = CcqApi(Config.for_run(base_url, credential_of(ctx)))
        try:
            return await request(api)
        except CcqApiError as exc:
            raise ToolError(str(exc)) from None

    def tool(fn: _ToolFn) -> _ToolFn:
        """Register ``fn`` as a tool; its docstring, dedented, is the description."""
        return server.tool(description=inspect.getdoc(fn), structured_output=False)(fn)

    @tool
    async def spawn_child(
        ctx: Context,
        prompt: Prompt,
        model: Annotated[
            str | None,
            Field(description="Model for the child (e.g. 'sonnet', 'haiku'); default: ccq's."),
        ] = None,
        max_turns: Annotated[
            int | None,
            Field(ge=1, description="Most agentic turns the child's first run may take."),
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
        body = await call(
            ctx,
            lambda api: api.spawn_child(
                prompt, model=model, max_turns=max_turns, append_system_prompt=append_system_prompt
            ),
        )
        return render.spawned(body)

    @tool
    async def send_to_child(ctx: Context, child_id: ChildId, prompt: Prompt) -> str:
        """Queue another prompt for an existing child (it continues its own conversation).

        Returns at once with the new run's ID; the run starts after any run the child is
        already doing. A stopped child is resumed.
        """
        body = await call(ctx, lambda api: api.send_to_child(child_id, prompt))
        return render.sent(child_id, body)

    @tool
    async def get_child_result(ctx: Context, child_id: ChildId) -> str:
        """The outcome of a child's latest run: status, result text, cost, error, files.

        If that run is still queued or running it says so and gives no result.
        """
        return render.child_result(await call(ctx, lambda api: api.get_session(child_id)))

    @tool
    async def get_child_output(
        ctx: Context,
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
        body = await call(ctx, lambda api: api.get_events(child_id, after=after, limit=limit))
        return render.transcript(child_id, body, after=after, limit=limit)

    @tool
    async def list_children(ctx: Context) -> str:
        """This session's children: ID, status, last run's status and cost, one per line."""
        return render.children(await call(ctx, lambda api: api.list_children()))

    @tool
    async def stop_child(ctx: Context, child_id: ChildId) -> str:
        """Stop a child (and its descendants): its current run is cancelled, files are kept.

        Sending it a prompt later resumes it.
        """
        return render.stopped(await call(ctx, lambda api: api.stop_child(child_id)))

    @tool
    async def delegate(
        ctx: Context,
        prompts: Annotated[
            list[str],
            Field(
                min_length=1,
                description="One complete, self-contained task per child; the children run "
                "in parallel and do not see your conversation or each other.",
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
        body = await call(ctx, lambda api: api.fanout(prompts, then))
        return render.delegated(body, prompts)

    return server


def tools_app(server: MCPServer) -> ToolsApp:
    """``server`` as a stateless Streamable HTTP endpoint with JSON responses.

    Call it once per server: the SDK keeps one session manager per server, and a session
    manager runs once.
    """
    server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        # Host/Origin checks off: see the module docstring (bearer tokens, not host names,
        # keep other callers out; containers use host.docker.internal or a configured name).
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    manager = server.session_manager
    return ToolsApp(app=StreamableHTTPASGIApp(manager), session_manager=manager)


@contextmanager
def _root_logging_unchanged() -> Iterator[None]:
    """Undo what constructing an ``MCPServer`` does to the process's logging.

    The SDK's constructor calls ``logging.basicConfig`` (a rich handler on the root
    logger, at the server's level) whenever the root logger has no handler yet. In the
    gateway that would configure every logger of the process, and turn the gateway's own
    later ``basicConfig`` into a no-op; the gateway configures its logging itself.
    """
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
