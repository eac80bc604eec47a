"""The worker host: the run executor, session containers (the only docker-py user), the
CLI invocation, session files, the janitor and the heartbeat. Nothing outside the worker
process imports it, but the API reads the heartbeat records it publishes."""
