"""What the API answers, as pydantic models: the OpenAPI document's response schemas.

The views build their JSON with the ``*_json`` helpers of :mod:`api.schemas`; these
models describe that JSON for clients, code generators and the fuzzer, which checks
every answer against them (tests/integration/test_api_fuzz.py). Extra keys are allowed
(``extra="allow"``) so a field can be added without breaking older clients.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorBody(Open):
    code: str
    message: str
    details: Any = None


class Error(Open):
    """Every error: its status names the class, ``code`` the case, ``details`` the fields."""

    error: ErrorBody


class RunOut(Open):
    id: uuid.UUID
    session_id: uuid.UUID
    seq: int
    status: str
    prompt_chars: int
    result: str | None
    subtype: str | None
    is_error: bool | None
    error: str | None
    error_code: str | None
    total_cost_usd: float | None
    metered_cost_usd: float
    usage: dict[str, Any] | None
    num_turns: int | None
    duration_ms: int | None
    duration_api_ms: int | None
    attempts: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class SessionOut(Open):
    id: uuid.UUID
    status: str
    parent_id: uuid.UUID | None
    root_id: uuid.UUID | None
    depth: int
    batch_id: uuid.UUID | None
    fanout_id: uuid.UUID | None
    model: str | None
    options: dict[str, Any]
    metadata: dict[str, Any]
    notify_url: str | None
    runs_count: int
    total_cost_usd: float
    tree_spent_usd: float
    tree_cost_usd: float
    children_count: int
    last_run: RunOut | None
    created_at: str | None
    last_active_at: str | None


class SessionCreated(Open):
    session: SessionOut
    run: RunOut | None


class SessionEnvelope(Open):
    session: SessionOut


class SessionPage(Open):
    sessions: list[SessionOut]
    next_cursor: str | None


class SessionStopped(Open):
    session: SessionOut
    stopped: list[uuid.UUID]


class SessionDeleted(Open):
    deleted: uuid.UUID
    descendants: list[uuid.UUID]


class RunEnvelope(Open):
    run: RunOut


class ChildCreated(Open):
    session: SessionOut
    run: RunOut


class ChildTree(Open):
    session: dict[str, Any]
    children: list[dict[str, Any]]


class FanoutOut(Open):
    id: uuid.UUID
    session_id: uuid.UUID
    status: str
    child_ids: list[uuid.UUID]
    followup_run_id: uuid.UUID | None


class FanoutStarted(Open):
    fanout: FanoutOut
    children: list[SessionOut]
    runs: list[RunOut]


class FanoutEnvelope(Open):
    fanout: FanoutOut
    children: list[SessionOut]


class EventOut(Open):
    id: str
    type: str


class EventPage(Open):
    events: list[EventOut]
    next_after: str | None


class BatchOut(Open):
    id: uuid.UUID
    status: str


class BatchEnvelope(Open):
    batch: BatchOut


class BatchPage(Open):
    batches: list[BatchOut]
    next_cursor: str | None


class Health(Open):
    status: str
