"""Events: their model and IDs, Redis streams, PostgreSQL history and the tail reader."""
