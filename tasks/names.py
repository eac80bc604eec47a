"""Every task's name, once: the tasks register under these and the enqueue module sends
to them, so neither side imports the other's internals."""

from __future__ import annotations

RUN_PROMPT = "ccq.run_prompt"
RESUME_PARENT = "ccq.resume_parent"
CLOSE_BATCH = "ccq.close_batch"
STOP_SESSION = "ccq.stop_session"
DELETE_SESSION = "ccq.delete_session"
NOTIFY_BATCH = "ccq.notify_batch"
NOTIFY_RUN = "ccq.notify_run"
# Beat's periodic tasks.
REAP_CONTAINERS = "ccq.reap_containers"
SWEEP = "ccq.sweep"
ENFORCE_RETENTION = "ccq.enforce_retention"
RECONCILE = "ccq.reconcile"
