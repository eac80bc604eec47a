"""ccq's MCP tools (``ccq``), served by the gateway over Streamable HTTP at ``/mcp``.

Seven tools that let Claude in a session spawn and manage child sessions. The gateway's
authentication puts the caller's :class:`~gateway.credentials.RunCredential` in each
request's scope; every tool call reads it and calls ccq's API as that session.

Modules: ``ccq_api`` (HTTP calls to ccq's API, errors as text), ``render`` (the text the
model reads), ``server`` (the MCP tools and the ASGI endpoint the gateway routes to).
"""
