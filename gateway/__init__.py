"""The session gateway: what session containers talk to (model proxy, ccq's MCP tools)."""
