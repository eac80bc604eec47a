"""The ``ccq.*`` labels on what ccq makes in Docker: how it finds its own again after any
restart, and how an operator (or a test) tells them apart."""

LABEL_MANAGED = "ccq.managed"
LABEL_INSTANCE = "ccq.instance"
LABEL_SESSION = "ccq.session"
LABEL_OWNER = "ccq.owner"
LABEL_PARENT = "ccq.parent"
# A batch item's container: its batch's ID (counted by tests, found by operators).
LABEL_BATCH = "ccq.batch"
# A throw-away container checking that sessions reach the API (never a session's).
LABEL_PROBE = "ccq.probe"
