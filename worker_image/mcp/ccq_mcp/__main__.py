"""``python -m ccq_mcp``: serve the ``ccq`` tools over stdio (stdout is the protocol)."""

from ccq_mcp.server import main

main()
