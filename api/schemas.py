"""Request bodies (pydantic, unknown fields refused) and response shapes."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from flask import has_app_context
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from api.errors import InvalidInput, TooLarge
from api.extensions import get_services
from orchestrator.db.models import Fanout, Run, Session
from orchestrator.domain.children import DEFAULT_THEN
from orchestrator.domain.isolation import (
    IsolationError,
    IsolationPolicy,
    ResourceLimits,
    SessionIsolation,
)
from orchestrator.notify.urls import check_notify_url, redact_url, validate_notify_url
from orchestrator.outbound import OutboundPolicy

MAX_PROMPT_BYTES = 256 * 1024

# The size limit is checked after parsing (check_prompt_size) so it can answer 413.
Prompt = Annotated[str, StringConstraints(min_length=1)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _fit_notify_url(url: str) -> str:
    """In a request, the operator's outbound policy too (a name is resolved now)."""
    if not has_app_context():  # a model built outside the API: the URL's form only
        return validate_notify_url(url)
    return check_notify_url(url, OutboundPolicy.from_settings(get_services().settings))


# A webhook: http(s), a host, no credentials or fragment (see orchestrator.notify.urls),
# and a target the outbound policy allows (orchestrator.outbound).
NotifyUrl = Annotated[str, StringConstraints(min_length=1), AfterValidator(_fit_notify_url)]
ToolName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^,\s]+( ?\S+)*$")
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class NetworkBody(Strict):
    """Names the session may reach through the gateway's egress proxy."""

    allow: Annotated[list[Annotated[str, StringConstraints(max_length=260)]], Field(max_length=100)]


class LimitsBody(Strict):
    """The session container's limits (each within the operator's maximum)."""

    memory_mb: Annotated[int, Field(ge=64)] | None = None
    cpus: Annotated[float, Field(gt=0)] | None = None
    pids: Annotated[int, Field(ge=16)] | None = None


class IsolationBody(Strict):
    """What widens a session's box; checked against the operator's policy (and a child's
    parent) by :func:`admit_isolation`. Unset: nothing (a child: its parent's)."""

    network: NetworkBody | None = None
    secrets: (
        Annotated[list[Annotated[str, StringConstraints(max_length=64)]], Field(max_length=100)]
        | None
    ) = None
    limits: LimitsBody | None = None

    def granted(
        self, policy: IsolationPolicy, parent: SessionIsolation | None = None
    ) -> dict[str, Any]:
        """The stored options for what was asked (or inherited).

        Raises:
            IsolationError: naming the field that asks for too much.
        """
        return policy.admit(
            egress_allow=self.network.allow if self.network else None,
            secrets=self.secrets,
            limits=ResourceLimits(**self.limits.model_dump()) if self.limits else None,
            parent=parent,
        ).as_options()

    def isolation_options(
        self, policy: IsolationPolicy, parent: SessionIsolation | None = None
    ) -> dict[str, Any]:
        """:meth:`granted`, or a 400 naming the field."""
        try:
            return self.granted(policy, parent)
        except IsolationError as exc:
            raise InvalidInput(
                f"{exc.field}: {exc.message}", [{"field": exc.field, "reason": exc.message}]
            ) from None


class CliOptionsBody(IsolationBody):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    append_system_prompt: Annotated[str, StringConstraints(max_length=64 * 1024)] | None = None
    max_turns: Annotated[int, Field(ge=1, le=1000)] | None = None
    max_budget_usd: Annotated[float, Field(gt=0, le=10_000)] | None = None
    allowed_tools: Annotated[list[ToolName], Field(max_length=200)] = []
    disallowed_tools: Annotated[list[ToolName], Field(max_length=200)] = []
    # A run lost with its worker is queued again (up to 3 deliveries) instead of failing
    # ``worker_lost`` (orchestrator.runtime.lost_runs): for prompts safe to send twice.
    retry_on_worker_loss: bool = False

    def cli_options(self) -> dict[str, Any]:
        """Only the CLI knobs (not the prompt, metadata or key of a subclass), set ones only."""
        fields = set(CliOptionsBody.model_fields) - {"model"} - set(IsolationBody.model_fields)
        return self.model_dump(include=fields, exclude_none=True, exclude_defaults=True)


class CreateSession(CliOptionsBody):
    prompt: Prompt | None = None
    metadata: Annotated[dict[str, Any], Field(max_length=100)] = {}
    idempotency_key: Key | None = None
    notify_url: NotifyUrl | None = None


class CreateChild(CliOptionsBody):
    prompt: Prompt
    metadata: Annotated[dict[str, Any], Field(max_length=100)] = {}
    idempotency_key: Key | None = None


class CreateFanout(CliOptionsBody):
    """N prompts, one child each, and the parent's follow-up prompt (``then``)."""

    prompts: Annotated[list[Prompt], Field(min_length=1, max_length=1000)]
    then: Prompt = DEFAULT_THEN
    metadata: Annotated[dict[str, Any], Field(max_length=100)] = {}
    idempotency_key: Key | None = None


class ChildrenQuery(Strict):
    recursive: bool = False


class BatchItemBody(CliOptionsBody):
    prompt: Prompt
    metadata: Annotated[dict[str, Any], Field(max_length=100)] = {}


class BatchOptions(Strict):
    """A batch's own options (the JSON body's, or an NDJSON upload's query string)."""

    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] | None = None
    notify_url: NotifyUrl | None = None
    idempotency_key: Key | None = None


class CreateBatch(BatchOptions):
    # Items are checked one by one afterwards, so errors can name each item's index.
    items: list[Any]
    defaults: CliOptionsBody = CliOptionsBody()
    metadata: Annotated[dict[str, Any], Field(max_length=100)] = {}


class ListBatchesQuery(Strict):
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


class CreateRun(Strict):
    prompt: Prompt
    idempotency_key: Key | None = None


class ListSessionsQuery(Strict):
    status: Literal["starting", "idle", "running", "stopped", "failed"] | None = None
    parent_id: uuid.UUID | None = None
    batch_id: uuid.UUID | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None


def check_prompt_size(prompt: str | None, field: str = "prompt") -> None:
    """Raises TooLarge (413) naming ``field`` past MAX_PROMPT_BYTES of UTF-8."""
    if prompt is not None and len(prompt.encode("utf-8")) > MAX_PROMPT_BYTES:
        reason = f"at most {MAX_PROMPT_BYTES} bytes of UTF-8"
        raise TooLarge(f"{field}: {reason}", [{"field": field, "reason": reason}])


def encode_cursor(created_at: datetime, session_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{session_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises InvalidInput naming ``cursor`` for anything not made by encode_cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, session_id = raw.split("|")
        return datetime.fromisoformat(created_at), uuid.UUID(session_id)
    except ValueError:
        reason = "not a cursor returned by this endpoint"
        raise InvalidInput(f"cursor: {reason}", [{"field": "cursor", "reason": reason}]) from None


def run_json(run: Run) -> dict[str, Any]:
    return {
        "id": str(run.id),
        "session_id": str(run.session_id),
        "seq": run.seq,
        "status": run.status,
        "prompt_chars": len(run.prompt),
        "result": run.result_text,
        "subtype": run.result_subtype,
        "is_error": run.is_error,
        "error": run.error,
        "error_code": run.error_code,
        "total_cost_usd": float(run.total_cost_usd) if run.total_cost_usd is not None else None,
        "metered_cost_usd": float(run.metered_cost_usd or 0),
        "usage": run.usage,
        "num_turns": run.num_turns,
        "duration_ms": run.duration_ms,
        "duration_api_ms": run.duration_api_ms,
        "attempts": run.attempts,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def session_json(
    session: Session,
    last_run: Run | None = None,
    *,
    tree_cost_usd: Decimal | None = None,
    children_count: int = 0,
) -> dict[str, Any]:
    """A session; ``tree_cost_usd`` is its own cost plus its descendants' (own by default)."""
    return {
        "id": str(session.id),
        "status": session.status,
        "parent_id": str(session.parent_id) if session.parent_id else None,
        "root_id": str(session.root_id) if session.root_id else None,
        "depth": session.depth,
        "batch_id": str(session.batch_id) if session.batch_id else None,
        "fanout_id": str(session.fanout_id) if session.fanout_id else None,
        "model": session.model,
        "options": session.options,
        "metadata": session.meta,
        "notify_url": redact_url(session.notify_url) if session.notify_url else None,
        "runs_count": session.runs_count,
        "total_cost_usd": float(session.total_cost_usd),
        # Metered by the gateway for the session and its descendants (its budget's gauge).
        "tree_spent_usd": float(session.tree_spent_usd or 0),
        "tree_cost_usd": float(
            tree_cost_usd if tree_cost_usd is not None else session.total_cost_usd
        ),
        "children_count": children_count,
        "last_run": run_json(last_run) if last_run else None,
        "created_at": session.created_at.isoformat() if session.created_at else None,
        "last_active_at": session.last_active_at.isoformat() if session.last_active_at else None,
        # As beat's retention pass last measured it (None: not yet); see docs/decisions.md.
        "workspace_bytes": session.workspace_bytes,
        "workspace_measured_at": _iso(session.workspace_measured_at),
        # Set once retention deleted the tree's files: the session takes no more prompts.
        "files_deleted_at": _iso(session.files_deleted_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def fanout_json(fanout: Fanout, child_ids: list[str]) -> dict[str, Any]:
    return {
        "id": str(fanout.id),
        "session_id": str(fanout.session_id),
        "status": fanout.status,
        "child_ids": child_ids,
        "followup_run_id": str(fanout.followup_run_id) if fanout.followup_run_id else None,
        "then_chars": len(fanout.then_prompt),
        "created_at": fanout.created_at.isoformat() if fanout.created_at else None,
        "finished_at": fanout.finished_at.isoformat() if fanout.finished_at else None,
    }
