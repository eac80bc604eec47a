"""Who may call: owners' JWTs and sessions' run-scoped tokens."""
