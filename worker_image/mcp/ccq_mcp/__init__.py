"""ccq's MCP server ``ccq``: tools that let Claude in a session spawn and manage children.

Runs inside the worker image as ``/opt/ccq/mcp/bin/python -m ccq_mcp`` (stdio), started by
the Claude Code CLI from the MCP config ccq writes for each session
(orchestrator/runtime/session_setup.py). Configuration arrives in the environment of each run:
``CCQ_API_URL``, ``CCQ_SESSION_ID``, ``CCQ_SESSION_TOKEN``. See docs/worker-image.md.

Modules: ``api_client`` (HTTP calls, errors as text), ``render`` (the text the model
reads), ``server`` (the MCP tools).
"""
